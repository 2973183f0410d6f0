"""Blending runs into one submission, scored honestly, with reports that answer the research questions.

Modules (each one job):
- `methods`   the blend-method registry: learn weights on OOF, apply the same weights to test.
- `nested`    in-sample vs nested-CV scoring of a method and its headline (nested CV when it learns).
- `calibrate` Platt / isotonic calibration fitted on OOF, with Brier scores.
- `inputs`    aligning runs into matrices, with the input checks (one line naming run and problem).
- `recipe`    ``ensembles/<name>.toml`` recipes.
- `analysis`  leaderboard with the baseline floor, the answers (best backbone / scratch architecture,
              paired patient bootstrap), subgroups with intervals.
- `plots`     the PNG plots; `report` console tables, Markdown and HTML.
- `saved`     blend.json: its fields, reading it, and `apply_saved` for `kit predict`.
- `build`     `kit blend` end to end: recipe -> submission.csv, blend.json, report (atomic).
"""

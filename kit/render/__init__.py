"""Rendering an experiment into a self-contained Kaggle kernel.

Modules, bottom up: `source` (which `kernels/` modules are inlined, in which order, and how), `kernel`
(the script form and kernel-metadata.json; `render_experiment`, `default_owner`), `notebook` (the
notebook form: one stage per cell group). Nothing is imported here.
"""

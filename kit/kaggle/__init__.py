"""Kaggle for real: client layer, ledger, push / status / pull / submit, sweeps, retries, emulator.

Modules, bottom up: `retry` (back-off, rate-limit budget), `timeouts` (connect/read timeouts the
client lacks), `client` (the kaggle package, lazily, plus credentials), `ledger` (.kit/ledger.json),
`reconcile` (did a push land? fingerprints, polling), `status`, `push`, `pull`, `submit`, `plan`
(accelerator hours of an ensemble against Kaggle's quotas, before a push); `emulator/` (the HTTP
stand-in for Kaggle, kaggle.com's behaviours by default, and the faults it can inject).
"""

"""Kaggle for real: client layer, ledger, push / status / pull / submit, sweeps, retries, emulator.

Modules: `client` (the kaggle package, lazily, plus credentials), `retry` (back-off), `ledger`
(.kit/ledger.json), `push`, `status`, `pull`, `submit`, `emulator` (the HTTP stand-in for Kaggle).
"""

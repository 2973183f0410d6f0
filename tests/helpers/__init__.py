"""Builders and helpers shared by the tests (no tests here): emulator worlds, run folders, datasets."""

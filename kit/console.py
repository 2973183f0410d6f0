"""One rich console for the toolkit's human output (tables, progress), writing to stderr-free stdout."""

from __future__ import annotations

from rich.console import Console

console = Console(highlight=False)

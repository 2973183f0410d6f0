"""One rich console for the toolkit's human output (tables, progress), on stdout.

Text lines are never wrapped (`soft_wrap`): a long path stays whole, so it can be copied from a
terminal of any width and grepped in a log. Tables still fit the width (80 columns in a pipe or log,
rich's default; ``COLUMNS`` overrides it) by folding their cells. Colour and spinners appear only in a
terminal; in a pipe or log the output is plain text.
"""

from __future__ import annotations

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)

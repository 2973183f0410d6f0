"""Legibility at a width: what makes console output illegible (a cut cell, a line wider than the width, a table
header split inside a word). Used by tests/test_widths.py and the tests that build their own fixtures
(test_predict, test_demo)."""

from __future__ import annotations

from rich.cells import cell_len

WIDTHS = (60, 80, 100, 120, 200)
PIPE_WIDTH = 80  # rich's width in a pipe when COLUMNS is unset
RULE = "─"
HEADER_LINES_MAX = 4


def problems(text: str, width: int, headers: set[str]) -> list[str]:
    """What makes `text` illegible at `width`: a cut cell, a line wider than the width (unless it is one word
    longer than the width), a table header split inside a word (a piece of a header word, above a rule)."""
    found = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "…" in line:
            found.append(f"line {i + 1} has a cut cell: {line!r}")
        if cell_len(line) > width and len(line.split()) > 1:
            found.append(f"line {i + 1} is {cell_len(line)} columns wide at {width}: {line!r}")
        if line.strip() and set(line.strip()) == {RULE} and i > 0:
            for above in _header_block(lines[:i], headers):
                found += [f"header piece {t!r} above line {i + 1}: {above!r}" for t in above.split() if t not in headers]
    return found


def _is_piece(token: str, headers: set[str]) -> bool:
    return any(h != token and (h.startswith(token) or h.endswith(token)) for h in headers if len(h) > 1)


def _header_block(above: list[str], headers: set[str]) -> list[str]:
    """The lines right above a table's rule made only of header words and pieces of them: its header."""
    block = []
    for line in reversed(above[-HEADER_LINES_MAX:]):
        tokens = line.split()
        if not tokens or not all(t in headers or _is_piece(t, headers) for t in tokens):
            break
        block.append(line)
    return block

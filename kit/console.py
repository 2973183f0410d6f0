"""The one place for the toolkit's human output: a rich console and width-aware tables, on stdout.

In:  text (rich markup) and `Grid`s (a title, `Col`umns with a short header, a legend and a priority,
     rows of plain strings); the console's width (the terminal's, ``COLUMNS`` when set, 80 in a pipe).
Out: lines no wider than that width, with nothing cut:

- Text is wrapped at spaces, never inside a word: a path or identifier longer than the whole width
  stays whole on a line of its own (so it can still be copied and grepped), and a wrapped line keeps
  its indent.
- A table shows short headers and one legend line saying what they stand for. Every cell line of a
  fixed column (identifiers, numbers, an interval on its own line) is kept whole; text columns wrap
  at spaces. When the columns do not fit, the lowest-priority ones are left out and a line names
  them and where the full table is (``report.md``) or how wide a terminal shows it; when even the
  columns a table must keep do not fit, each row is printed as a record of ``key: value`` lines.
- Rules (section headings) wrap their title instead of cutting it.

Colour and spinners appear only in a terminal; in a pipe or log the output is plain text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

CELL_PAD = 1  # spaces either side of a cell (none at the table's outer edges)
RECORD_INDENT = 2  # record layout: the fields' indent under the row's first value
LEGEND_SEP = "; "
_WORD = re.compile(r"\S+")


def wrap_text(text: Text, width: int) -> list[Text]:
    """`text` (one line) split at spaces into lines of at most `width` cells; a word longer than the
    width is never cut (it gets a line of its own); continuation lines keep the first line's indent."""
    plain = text.plain
    if text.cell_len <= width or not plain.strip():
        return [text]
    indent = len(plain) - len(plain.lstrip(" "))
    words = [(m.start(), m.end()) for m in _WORD.finditer(plain, indent)]
    spans: list[tuple[int, int]] = []
    start, end = words[0]
    for w_start, w_end in words[1:]:
        if indent + w_end - start > width:
            spans.append((start, end))
            start = w_start
        end = w_end
    spans.append((start, end))
    return [text[:indent] + text[a:b] for a, b in spans]


class KitConsole(Console):
    """A rich Console whose `print` wraps text at spaces (never inside a word) and whose `rule` never
    cuts its title. Renderables other than text (tables, progress) print as rich prints them."""

    def print(self, *objects: object, sep: str = " ", end: str = "\n", style: str | None = None,  # type: ignore[override]
              markup: bool | None = None, highlight: bool | None = None, **kwargs: object) -> None:
        if not objects or not all(isinstance(o, (str, Text)) for o in objects) or kwargs.get("no_wrap"):
            super().print(*objects, sep=sep, end=end, style=style, markup=markup, highlight=highlight, **kwargs)
            return
        parts = [o if isinstance(o, Text) else self.render_str(o, markup=markup, highlight=highlight)
                 for o in objects]
        text = Text(sep).join(parts)
        width = self.width
        lines = [piece for line in text.split("\n", allow_blank=True) for piece in wrap_text(line, width)]
        super().print(Text("\n").join(lines), end=end, style=style, soft_wrap=True, crop=False)

    def rule(self, title: str | Text = "", *, characters: str = "─", style: str = "rule.line",  # type: ignore[override]
             align: str = "center") -> None:
        shown = self.render_str(title) if isinstance(title, str) else title
        if shown.cell_len + 6 <= self.width:
            super().rule(title, characters=characters, style=style, align=align)  # type: ignore[arg-type]
            return
        self.print(shown)
        super().rule(characters=characters, style=style)


console = KitConsole(highlight=False, soft_wrap=True)


# -- tables -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Col:
    """A console column. `header`: one or two short words (a header wraps only at its spaces);
    `legend`: what the header stands for, printed once under the table (empty: the header says it);
    `keep`: priority, higher kept longer when the width is short; `keep >= MUST` columns are never
    left out (below them the table becomes records); `wrap`: text that may wrap at spaces (otherwise
    each line of a cell is kept whole); `right`: right-justified (numbers)."""

    header: str
    legend: str = ""
    keep: int = 0
    wrap: bool = False
    right: bool = False


MUST = 10  # Col.keep at or above this: the column is shown or the table turns into records


@dataclass(frozen=True)
class Grid:
    """A table for the console: `rows` of plain strings ("\\n" starts a new line inside a cell);
    `full_in`: where the full table is (a file name), named when columns are left out."""

    title: str
    cols: tuple[Col, ...]
    rows: tuple[tuple[str, ...], ...]
    full_in: str = ""
    styles: tuple[str, ...] = ()  # optional rich style per row
    heading: int = 1  # record layout: how many leading columns make a record's heading line (e.g. "#", "run")


def _units(cell: str, wrap: bool) -> list[str]:
    """The pieces of a cell that must stay whole: its words (text) or its lines (fixed)."""
    return cell.split() if wrap else cell.split("\n")


def _cell_len(s: str) -> int:
    return Text(s).cell_len


def _min_width(col: Col, cells: Sequence[str]) -> int:
    pieces = [u for c in cells for u in _units(c, col.wrap)] + col.header.split()
    return max((_cell_len(p) for p in pieces), default=1)


def _max_width(col: Col, cells: Sequence[str]) -> int:
    lines = [line for c in cells for line in c.split("\n")] + [col.header]
    return max((_cell_len(line) for line in lines), default=1)


def _overhead(n: int) -> int:
    """Cells of a table of `n` columns that are not content: padding between columns and one divider."""
    return max(0, n - 1) * (2 * CELL_PAD + 1)


def _widths(mins: Sequence[int], maxs: Sequence[int], room: int) -> list[int] | None:
    """Column widths within `room` content cells: every column at least its minimum, the spare given
    first to the columns that need least to reach their maximum. None when the minimums do not fit."""
    if sum(mins) > room:
        return None
    widths = list(mins)
    spare = room - sum(widths)
    for i in sorted(range(len(widths)), key=lambda k: maxs[k] - mins[k]):
        give = min(spare, maxs[i] - widths[i])
        widths[i] += give
        spare -= give
    return widths


def grid_width(grid: Grid) -> int:
    """The width at which every column of `grid` shows with its header on one line."""
    columns = list(zip(*grid.rows, strict=True)) if grid.rows else [()] * len(grid.cols)
    return sum(_max_width(c, cells) for c, cells in zip(grid.cols, columns, strict=True)) + _overhead(len(grid.cols))


def layout(grid: Grid, width: int) -> tuple[list[int], list[int]] | None:
    """(shown column indices, their widths) for `width`, or None when the must-keep columns do not fit
    (the caller prints records)."""
    columns = list(zip(*grid.rows, strict=True)) if grid.rows else [()] * len(grid.cols)
    mins = [_min_width(c, cells) for c, cells in zip(grid.cols, columns, strict=True)]
    maxs = [max(m, _max_width(c, cells)) for m, c, cells in zip(mins, grid.cols, columns, strict=True)]
    shown = list(range(len(grid.cols)))
    drop_order = sorted((i for i in shown if grid.cols[i].keep < MUST), key=lambda i: (grid.cols[i].keep, -i))
    while True:
        widths = _widths([mins[i] for i in shown], [maxs[i] for i in shown], width - _overhead(len(shown)))
        if widths is not None:
            return shown, widths
        if not drop_order:
            return None
        shown.remove(drop_order.pop(0))


def _legend(cols: Sequence[Col]) -> str:
    return LEGEND_SEP.join(f"{c.header}: {c.legend}" for c in cols if c.legend)


def _render_columns(grid: Grid, shown: Sequence[int], widths: Sequence[int], out: Console) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, CELL_PAD),
                  title=None, header_style="bold", collapse_padding=False)
    for i, w in zip(shown, widths, strict=True):
        col = grid.cols[i]
        header = Text(col.header, no_wrap=False, overflow="ellipsis")  # wraps at its spaces even over fixed cells
        table.add_column(header, width=w, no_wrap=not col.wrap, overflow="ellipsis",
                         justify="right" if col.right else "left")
    for r, row in enumerate(grid.rows):
        style = grid.styles[r] if r < len(grid.styles) else ""
        table.add_row(*(Text(row[i]) for i in shown), style=style or None)
    Console.print(out, table, crop=False)


def _render_records(grid: Grid, out: Console) -> None:
    width = out.width
    for r, row in enumerate(grid.rows):
        style = grid.styles[r] if r < len(grid.styles) else ""
        out.print(Text(" ".join(" ".join(c.split("\n")) for c in row[:grid.heading]), style=style or "bold"))
        for col, cell in zip(grid.cols[grid.heading:], row[grid.heading:], strict=True):
            key = col.legend or col.header
            lines = cell.split("\n") if not col.wrap else [" ".join(cell.split())]
            first = f"{' ' * RECORD_INDENT}{key}: {lines[0]}"
            if _cell_len(first) <= width or col.wrap:
                out.print(Text(first))
                hang = RECORD_INDENT + _cell_len(key) + 2
                rest = lines[1:]
                if rest and any(hang + _cell_len(line) > width for line in rest):
                    hang = 2 * RECORD_INDENT
                for line in rest:
                    out.print(Text(" " * hang + line))
            else:
                out.print(Text(f"{' ' * RECORD_INDENT}{key}:"))
                for line in lines:
                    out.print(Text(" " * (2 * RECORD_INDENT) + line))


def print_grid(grid: Grid, out: Console | None = None) -> None:
    """`grid` on `out` (the toolkit's console by default) at its width: columns, fewer columns and a line
    naming the rest, or records. The title, legend and notes wrap at spaces."""
    out = out or console
    width = out.width
    if grid.title:
        out.print(Text(grid.title, style="bold"))
    if not grid.rows:
        out.print("(none)")
        return
    fit = layout(grid, width)
    if fit is None:
        _render_records(grid, out)
        return
    shown, widths = fit
    _render_columns(grid, shown, widths, out)
    legend = _legend([grid.cols[i] for i in shown])
    if legend:
        out.print(Text(legend, style="dim"))
    hidden = [grid.cols[i] for i in range(len(grid.cols)) if i not in shown]
    if hidden:
        names = "; ".join(c.legend or c.header for c in hidden)
        where = (f"The full table is in {grid.full_in}" if grid.full_in else
                 f"A terminal {grid_width(grid)} columns wide (COLUMNS={grid_width(grid)}) shows them")
        out.print(Text(f"Not shown at {width} columns: {names}. {where}.", style="dim"))

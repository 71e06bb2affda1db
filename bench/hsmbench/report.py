"""The report: repeated figures, their medians and paired ratios, fixed-width tables."""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field


@dataclass
class Figure:
    """Repeated measurements of one quantity."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(v)

    @property
    def ok(self) -> bool:
        return bool(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)


def ratio_figure(num: Figure, den: Figure) -> Figure:
    """Per-round (paired) ratios."""
    return Figure([a / b for a, b in zip(num.values, den.values) if b])


def fmt_k(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    if v >= 1_000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}"


def fmt_rate(f: Figure | None) -> str:
    if f is None or not f.ok:
        return "n/a"
    return f"{f.median:,.0f} ({fmt_k(f.lo)}-{fmt_k(f.hi)})"


def fmt_ratio(f: Figure | None) -> str:
    if f is None or not f.ok:
        return "n/a"
    return f"{f.median:.2f}x ({f.lo:.2f}-{f.hi:.2f})"


def table(title: str, header: list[str], rows: list[list[str]], out: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out += ["", title, "", line(header), rule]
    out += [line(r) for r in rows]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)

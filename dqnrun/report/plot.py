"""curves.png: per env one panel, per group its mean eval return vs env steps with a shaded 95% bootstrap CI.

matplotlib is imported when a figure is made, through its object API (no pyplot: no global state, no backend).
The PNG carries a ``Software: dqnrun report`` text chunk, so a later report knows the file is its own.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from dqnrun.report.render import common_overrides, fmt, fmt_steps, strip_common
from dqnrun.report.runs import UNFINISHED
from dqnrun.report.stats import DEFAULT_REPS, DEFAULT_SEED, EnvReport, group_curve, shared_solved_score

SOFTWARE = "dqnrun report"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The figure: inches. The title and subtitle sit in a band above the panels, so they never overlap them.
SINGLE_SIZE = (12.0, 7.0)
PANEL_SIZE = (9.0, 5.5)
HEADER_IN = 0.9
TITLE_TOP_IN, SUBTITLE_TOP_IN = 0.15, 0.52
SUBTITLE = "mean over runs, shaded: 95% stratified-bootstrap CI of the mean (rliable)"


def _short(label: str, n: int = 48) -> str:
    # Keep both ends: sweeps often differ in the last override as much as in the first.
    if len(label) <= n:
        return label
    head = (n - 1) // 2
    return label[:head] + "…" + label[len(label) - (n - 1 - head):]


def _colors(n: int) -> list[Any]:
    import matplotlib

    if n <= 10:
        return list(matplotlib.colormaps["tab10"].colors)
    # tab20 comes in dark/light pairs of one hue: dark ones first, so neighbouring ranks differ in hue.
    tab20 = list(matplotlib.colormaps["tab20"].colors)
    return tab20[0::2] + tab20[1::2]


def _panel(ax: Any, rep: EnvReport, curves: dict[str, dict[str, Any]], title: str | None) -> None:
    """One env's curves on ``ax``; ``title`` names the panel (None: the figure's title names the env)."""
    import matplotlib.ticker

    rank = {label: i for i, label in enumerate(rep.order, 1)}
    # Overrides every group shares say nothing in a legend: they are said once, as the table does.
    common = common_overrides([rep.groups[label][0].tokens for label in rep.order])
    many = len(curves) > 8
    colors = _colors(len(curves))
    # Markers help read a few eval points; on dense or many curves they are clutter.
    markers = not many and max(c["steps"].size for c in curves.values()) <= 30
    for label, c in curves.items():
        i = rank[label] - 1
        color = colors[i % len(colors)]
        runs = c["runs"]
        incomplete = sum(r.state == UNFINISHED for r in runs)
        shown = strip_common(rep.groups[label][0].tokens, common, label)
        # The table's row number, so a line can be found in the table (order is the table's order).
        legend = f"#{i + 1} {_short(shown, 48 if many else 72)} (n={len(runs)}"
        legend += f", {incomplete} incomplete)" if incomplete else ")"
        ax.plot(c["steps"], c["mean"], color=color, lw=1.5 if many else 2, marker="o" if markers else None, ms=4,
                label=legend)
        ax.fill_between(c["steps"], c["low"], c["high"], color=color, alpha=0.08 if many else 0.18, lw=0)
    solved = shared_solved_score([r for label in curves for r in rep.groups[label]])
    if solved is not None:
        ax.axhline(solved, color="0.35", ls="--", lw=1.2, label=f"solved score ({fmt(solved)})")
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval return")
    if title is not None:
        ax.set_title(title + (f"\nall groups: {_short(' '.join(common), 90)}" if common else ""), fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.01)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: fmt_steps(x)))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend(loc="best", fontsize=9, framealpha=0.9)


def make_figure(title: str, reports: Sequence[EnvReport], reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED,
                ) -> Any | None:
    """The curves figure (a matplotlib Figure): one panel per env that has eval points, groups in table order.
    None if no run has eval points. The title's and subtitle's texts have gid ``title`` and ``subtitle``."""
    panels = []
    for rep in reports:
        curves = {label: group_curve(rep.groups[label], reps, seed) for label in rep.order}
        curves = {k: v for k, v in curves.items() if v is not None}
        if curves:
            panels.append((rep, curves))
    if not panels:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / cols)
    w, h = SINGLE_SIZE if len(panels) == 1 else (PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows + HEADER_IN)
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)  # the PNG renderer, also for the layout's text sizes
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    single = len(reports) == 1
    for ax, (rep, curves) in zip(axes, panels, strict=False):
        _panel(ax, rep, curves, None if single else rep.env)
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    sub = SUBTITLE
    if single:
        [(rep, _)] = panels
        title = f"{title} ({rep.env})"
        common = common_overrides([rep.groups[label][0].tokens for label in rep.order])
        if common:
            sub += "; all groups: " + _short(" ".join(common), 110)
    else:
        sub += "; one panel per env: runs of different envs are never compared"
    fig.text(0.5, 1 - TITLE_TOP_IN / h, title, ha="center", va="top", fontsize=14, gid="title")
    fig.text(0.5, 1 - SUBTITLE_TOP_IN / h, sub, ha="center", va="top", fontsize=9, color="0.3", gid="subtitle")
    fig.tight_layout(rect=(0, 0, 1, 1 - HEADER_IN / h))
    return fig


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes, marked as the report's own (a ``Software`` text chunk)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": SOFTWARE})
    return buf.getvalue()


def png_info(data: bytes) -> tuple[int, int, dict[str, str]] | None:
    """(width, height, text chunks) of PNG bytes, or None if they are not a PNG."""
    if not data.startswith(PNG_MAGIC):
        return None
    pos, size, texts = len(PNG_MAGIC), (0, 0), {}
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR" and length >= 8:
            size = struct.unpack(">II", body[:8])
        elif kind in (b"tEXt", b"zTXt"):
            key, _, value = body.partition(b"\0")
            if kind == b"zTXt":
                try:
                    value = zlib.decompress(value[1:])
                except zlib.error:
                    value = b""
            texts[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"IEND":
            break
        pos += 12 + length
    return size[0], size[1], texts

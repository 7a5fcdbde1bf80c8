"""How the report's figures are laid out and saved.

Matplotlib's ``tight_layout`` finds the margins by drawing the whole figure once to measure
its text, and ``savefig`` draws it again: half of a report's drawing time went to a layout
whose answer is known in advance. caviar's figures have a fixed structure (a title, axis
labels, tick labels of a known kind), so :func:`set_margins` sets the margins in inches from
that structure and the longest label, and the figure is drawn once, when saved.

The invariant the margins protect: every label, title and tick label lies inside the figure
(``tests/orchestrator/test_report_figures.py`` draws each plot and checks every text's box).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 110
# Inches per character of a 10-point label in matplotlib's default font (DejaVu Sans): its
# widest common glyphs ("m", "w") are ~0.09 in, lowercase text averages ~0.065 in.
CHAR_IN = 0.085
MAX_LOG_TICKS = 8  # labels such as "0.005" side by side on a 4-inch axis


def set_margins(
    fig: Any,
    *,
    left: float = 0.9,
    right: float = 0.25,
    bottom: float = 0.65,
    top: float = 0.45,
    col_gap: float = 0.0,
    row_gap: float = 0.0,
) -> None:
    """Margins and gaps between subplots, in inches (the figure's size is fixed)."""
    width, height = fig.get_size_inches()
    axes = fig.get_axes()
    rows, cols = (axes[0].get_subplotspec().get_gridspec().get_geometry()) if axes else (1, 1)
    plot_w = (width - left - right - col_gap * (cols - 1)) / cols
    plot_h = (height - bottom - top - row_gap * (rows - 1)) / rows
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=col_gap / max(plot_w, 0.1),
        hspace=row_gap / max(plot_h, 0.1),
    )


def text_width(labels: list[str]) -> float:
    """Inches the longest of ``labels`` needs at 10 points (an upper estimate)."""
    return CHAR_IN * max((len(label) for label in labels), default=0)


def wrap(text: str, width_in: float, points: float = 10) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``points`` points."""
    import textwrap

    per_line = max(20, int(width_in / (CHAR_IN * points / 10)))
    return textwrap.fill(text, per_line, break_long_words=False)


def save(fig: Any, path: Path) -> Path:
    """The figure as a PNG, drawn once; fast compression (the report's PNGs are small)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 1})
    plt.close(fig)
    return path


def log_ticks(axis: Any, low: float, high: float) -> None:
    """Ticks of a log axis from ``low`` to ``high`` as plain numbers (0.001, 20, 500): 1, 2
    and 5 per decade, or 1 and 3, or 1, whichever gives at most :data:`MAX_LOG_TICKS` labels;
    no minor ticks.

    Matplotlib's default labels a short log range with minor labels that run into each other
    ("3x10^1" beside "4x10^1"), and draws each label with its TeX-like parser."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    decades = math.log10(max(high, low) / max(min(high, low), 1e-300))
    # Within a decade where none of 1, 2, 5 falls, matplotlib's locator picks linear ticks.
    choices = ((1.0, 2.0, 5.0), (1.0, 3.0))
    subs = next((s for s in choices if decades * len(s) <= MAX_LOG_TICKS), (1.0,))
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))

"""`--plot FILE.png`: density per layer in network order, as a bar chart.

matplotlib is an optional extra (`pip install "onnxflow[plot]"`); it is imported only here,
and its absence is reported before any pruning starts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

from onnxflow.errors import OnnxflowError, Opt
from onnxflow.rows import LayerRow, Totals
from onnxflow.save import Writer

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def require_matplotlib() -> None:
    """Fail with one line if matplotlib is missing (checked before any work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OnnxflowError(
            "{opt} needs matplotlib: pip install 'onnxflow[plot]' (or matplotlib)",
            opt=Opt("plot"),
        ) from None


def density_figure(rows: Sequence[LayerRow], title: str) -> Figure:
    """Bars of each layer's density (log scale), the overall density of the rows as a line,
    and layers pruned to nothing marked in red at the bottom."""
    require_matplotlib()
    names = [r.name for r in rows]
    densities = [r.density for r in rows]
    overall = Totals.of(rows).density
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    n = len(names)
    fig = Figure(figsize=(max(6.0, 0.28 * n + 2), 4.5), dpi=100)
    ax = fig.add_subplot()
    positive = [d for d in densities if d > 0]
    floor = min([*positive, overall if overall > 0 else 1.0]) / 3
    heights = [d if d > 0 else floor for d in densities]
    colors = ["tab:blue" if d > 0 else "tab:red" for d in densities]
    ax.bar(range(n), heights, color=colors, width=0.8)
    ax.axhline(overall, color="black", linestyle="--", linewidth=1, label=f"overall {overall:.3g}")
    ax.set_yscale("log")
    ax.set_ylim(floor / 1.5, 1.5)
    ax.set_ylabel("density (kept / params)")
    ax.set_xticks(range(n), names, rotation=90, fontsize=6 if n > 30 else 8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_title(title, fontsize=10)
    if any(d == 0 for d in densities):
        ax.bar([], [], color="tab:red", label="pruned to nothing")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def png_writer(fig: Figure) -> Writer:
    """A save.py writer, so the PNG is written atomically with the other outputs."""

    def write(f: BinaryIO) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        f.write(buf.getvalue())

    return write

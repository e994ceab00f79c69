"""PNG plots shared by sweep reports and the store report (matplotlib, no display needed)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    return buf.getvalue()


def heatmap_png(
    values: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    *,
    lower_is_better: bool = False,
    split_after: int = 0,
) -> bytes:
    """A heatmap with each finite cell's value written in it (NaN cells left blank); a white
    line after the first `split_after` rows."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(columns) + 3.5), 0.42 * len(rows) + 1.6))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r" if lower_is_better else "viridis", aspect="auto")
    middle = np.nanmean(values) if np.isfinite(values).any() else 0.0
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            dark = (v > middle) if lower_is_better else (v < middle)
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(columns)), list(columns), fontsize=8, rotation=45 if len(columns) > 8 else 0)
    ax.set_yticks(range(len(rows)), [t[:60] for t in rows], fontsize=7)
    if split_after:
        ax.axhline(split_after - 0.5, color="white", linewidth=2)
    ax.set_title(textwrap.fill(title, 70), fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return png(fig)

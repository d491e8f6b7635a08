"""Figures drawn straight onto matplotlib's object API: no pyplot, so nothing global (the backend,
the list of open figures) changes when equiprune is imported or a plot is written."""

from __future__ import annotations

from matplotlib.figure import Figure

from equiprune import io


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6, 4), **kwargs):
    """A new figure and its axes, as ``pyplot.subplots`` returns them."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_png(fig: Figure, path) -> None:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a PNG)."""
    io.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"), binary=True)

"""Plots of lottery tickets: the learned mask values per layer after each round, and ticket accuracy
against the weights remaining (log axis), the lottery-ticket literature's picture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from equiprune.experiments.figures import save_png, subplots


def plot_mask_histograms(
    path, histograms: Sequence[Mapping[str, Sequence[int]]], threshold: float | None = None
) -> None:
    """One row per round, one panel per layer: the surviving masks' values in [0, 1] at the round's end."""
    layers = list(histograms[0])
    fig, axes = subplots(len(histograms), len(layers), figsize=(2.4 * len(layers) + 0.8, 1.8 * len(histograms) + 0.6),
                         sharex=True, squeeze=False)  # fmt: skip
    for r, round_counts in enumerate(histograms):
        for c, layer in enumerate(layers):
            counts = round_counts[layer]
            bins = len(counts)
            ax = axes[r][c]
            ax.bar([i / bins for i in range(bins)], counts, width=1 / bins, align="edge", color="#3b6ea8",
                   edgecolor="white")  # fmt: skip
            ax.set_yscale("symlog", linthresh=1)
            ax.set_xlim(0, 1)
            if threshold is not None:
                ax.axvline(threshold, color="#c0392b", linestyle="--", linewidth=1)
            if r == 0:
                ax.set_title(layer, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"round {r + 1}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("mask value m")
    save_png(fig, path)


def plot_tickets(path, series: Mapping[str, Sequence[tuple[float, float, float]]], dense: float | None = None) -> None:
    """Test accuracy (%) against the percentage of weights remaining, log x axis. ``series``: label ->
    points (weights remaining as a fraction, mean accuracy, its spread); ``dense``: a reference line."""
    fig, ax = subplots(figsize=(6.2, 4))
    for label, points in series.items():
        points = sorted(points, reverse=True)
        xs = [100 * p[0] for p in points]
        ys = [100 * p[1] for p in points]
        ax.errorbar(xs, ys, yerr=[100 * p[2] for p in points], marker="o", markersize=4, capsize=2, label=label)
    if dense is not None:
        ax.axhline(100 * dense, color="grey", linestyle=":", linewidth=1, label="dense")
    ax.set_xscale("log")
    ax.invert_xaxis()  # sparser to the right, as the lottery-ticket papers draw it
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    save_png(fig, path)

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


#: How each variant of a ticket is drawn (the method's colour is shared by its variants).
VARIANT_STYLE = {"ticket": "-", "reinit": "--", "random": ":"}


def plot_tickets(path, summary: Sequence[Mapping]) -> None:
    """Test accuracy (%) against the percentage of weights remaining, log x axis, sparser to the right:
    one colour per method, one line style per variant. ``summary``: rows with ``label``, ``variant``,
    ``kept_fraction``, ``accuracy_mean`` and ``accuracy_std``."""
    fig, ax = subplots(figsize=(6.8, 4.4))
    labels = sorted({r["label"] for r in summary})
    colours = {label: f"C{i}" for i, label in enumerate(labels)}
    for label in labels:
        for variant, style in VARIANT_STYLE.items():
            rows = sorted((r for r in summary if r["label"] == label and r["variant"] == variant),
                          key=lambda r: -r["kept_fraction"])  # fmt: skip
            if rows:
                ax.errorbar([100 * r["kept_fraction"] for r in rows], [100 * r["accuracy_mean"] for r in rows],
                            yerr=[100 * r["accuracy_std"] for r in rows], color=colours[label], linestyle=style,
                            marker="o", markersize=3.5, capsize=2, label=f"{label} {variant}")  # fmt: skip
    fractions = sorted({100 * r["kept_fraction"] for r in summary})
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:.3g}" for f in fractions])
    ax.minorticks_off()
    ax.invert_xaxis()  # sparser to the right, as the lottery-ticket papers draw it
    ax.set_xlabel("weights remaining (%, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, frameon=False, ncol=len(labels))
    save_png(fig, path)

"""Plots of a run: the participation histograms over the pruning epochs, and the pruning dynamics."""

from __future__ import annotations

from typing import Any

from matplotlib.ticker import MaxNLocator

from equiprune.experiments.figures import save_png, subplots

#: At most this many pruning epochs get a panel in the participation histogram.
HISTOGRAM_PANELS = 4


def histogram_epochs(pruning: list[dict[str, Any]], panels: int = HISTOGRAM_PANELS) -> list[dict[str, Any]]:
    """Up to ``panels`` rows of ``pruning``, evenly spread, always the first and the last: how the
    participations move, not only where they end."""
    if len(pruning) <= panels:
        return pruning
    picks = sorted({round(i * (len(pruning) - 1) / (panels - 1)) for i in range(panels)})
    return [pruning[i] for i in picks]


def plot_participation_histogram(path, rows: list[dict[str, Any]], epsilon: float | None, title: str) -> None:
    """One panel per row (an epoch's metrics with ``participation_histogram``), sharing the axes."""
    fig, axes = subplots(1, len(rows), figsize=(2.6 * len(rows) + 0.8, 3.2), sharey=True, squeeze=False)
    for ax, row in zip(axes[0], rows):
        counts = row["participation_histogram"]
        bins = len(counts)
        edges = [i / bins for i in range(bins + 1)]
        ax.bar(edges[:-1], counts, width=1 / bins, align="edge", color="#3b6ea8", edgecolor="white")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("participation $s_i$")
        ax.set_title(f"epoch {row['epoch']}: {row['players_alive']}/{row['players']} alive", fontsize=9)
        if epsilon is not None:
            ax.axvline(epsilon, color="#c0392b", linestyle="--", linewidth=1, label=f"ε = {epsilon:g}")
    axes[0][0].set_ylabel("players (symlog)")
    if epsilon is not None:
        axes[0][-1].legend(loc="upper center", frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_png(fig, path)


def plot_dynamics(path, metrics: list[dict[str, Any]]) -> None:
    """Test accuracy and players alive per epoch; a budgeted game adds a panel with its price and
    its size against the target, a continuous sparsifier one with its emergent sparsity and (x =
    m ⊙ w) where its implicit regularizer sits between L2 and L1."""
    budgeted = [r for r in metrics if "price" in r]
    continuous = [r for r in metrics if "emergent_sparsity" in r]
    extra = budgeted or continuous
    fig, axes = subplots(2 if extra else 1, 1, figsize=(6.5, 6.4 if extra else 3.8), squeeze=False, sharex=True)
    ax = axes[0][0]
    _accuracy_and_alive(ax, metrics)
    if budgeted:
        _budget_path(axes[1][0], budgeted)
    elif continuous:
        _implicit_bias(axes[1][0], continuous)
    axes[-1][0].set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_png(fig, path)


def _accuracy_and_alive(ax, metrics: list[dict[str, Any]]) -> None:
    epochs = [r["epoch"] for r in metrics]
    lines = ax.plot(epochs, [100 * r["test_accuracy"] for r in metrics], "o-", color="#2c7a3f", label="test accuracy")
    ax.set_ylabel("test accuracy (%)", color="#2c7a3f")
    if all("players_alive" in r for r in metrics):
        ax2 = ax.twinx()
        alive = [r["players_alive"] for r in metrics]
        lines += ax2.plot(epochs, alive, "s-", color="#3b6ea8", label="players alive")
        ax2.set_yscale("log" if min(alive) > 0 else "symlog")
        ax2.set_ylabel("players alive (log)", color="#3b6ea8")
    finetune = [r["epoch"] for r in metrics if r.get("phase") == "finetune"]
    if finetune:
        ax.axvspan(finetune[0] - 0.5, finetune[-1] + 0.5, color="0.92", zorder=0)
        ax.text(finetune[0] - 0.4, ax.get_ylim()[0], " compacted,\n fine-tuning", va="bottom", fontsize=8, color="0.35")
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right", frameon=False)
    ax.set_title("Pruning dynamics")


def _budget_path(ax, rows: list[dict[str, Any]]) -> None:
    epochs = [r["epoch"] for r in rows]
    lines = ax.plot(epochs, [100 * r["size"] for r in rows], "s-", color="#3b6ea8", label="size (end of epoch)")
    lines += ax.plot(epochs, [100 * r["budget_target"] for r in rows], "--", color="0.4", label="target")
    ax.set_yscale("log")
    ax.set_ylabel("% of the model kept (log)")
    ax2 = ax.twinx()
    prices = [r["price"] for r in rows]
    lines += ax2.plot(epochs, prices, "^-", color="#c0392b", label="price γ (below 0: a subsidy)")
    if min(prices) > 0:
        ax2.set_yscale("log")
    else:  # a subsidy: log-like on both sides of zero
        ax2.set_yscale("symlog", linthresh=min((abs(p) for p in prices if p), default=1e-6))
    ax2.set_ylabel("price γ (log)", color="#c0392b")
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right", frameon=False, fontsize=8)
    ax.set_title("The budget's path", fontsize=10)


def _implicit_bias(ax, rows: list[dict[str, Any]]) -> None:
    epochs = [r["epoch"] for r in rows]
    lines = ax.plot(epochs, [100 * r["emergent_sparsity"] for r in rows], "s-", color="#3b6ea8",
                    label="weights at zero (%)")  # fmt: skip
    ax.set_ylim(0, 100)
    ax.set_ylabel("weights at zero (%)", color="#3b6ea8")
    if all("l1_position" in r for r in rows):
        ax2 = ax.twinx()
        lines += ax2.plot(epochs, [r["l1_position"] for r in rows], "o-", color="#c0392b",
                          label="implicit regularizer: 0 = L2, 1 = L1")  # fmt: skip
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("L2 → L1 position", color="#c0392b")
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper left", frameon=False, fontsize=8)
    ax.set_title("Continuous sparsification: what training zeroes, and the implicit bias", fontsize=10)


def plot_run(run_dir, metrics: list[dict[str, Any]], epsilon: float | None) -> None:
    """Write the run's plots into its directory (those its metrics support)."""
    plot_dynamics(run_dir.path / "dynamics.png", metrics)
    pruning = [r for r in metrics if "participation_histogram" in r]
    if pruning:
        rule = "below the dashed line: removed" if epsilon is not None else "the decision is not by participation"
        plot_participation_histogram(
            run_dir.path / "participation_histogram.png",
            histogram_epochs(pruning),
            epsilon,
            f"Participations during pruning ({rule})",
        )

"""Plots of a run: the participation histogram at the end of pruning, and the pruning dynamics."""

from __future__ import annotations

from typing import Any

from matplotlib.ticker import MaxNLocator

from equiprune.experiments.figures import save_png, subplots


def plot_participation_histogram(path, counts: list[int], epsilon: float | None, title: str) -> None:
    bins = len(counts)
    edges = [i / bins for i in range(bins + 1)]
    fig, ax = subplots(figsize=(6, 3.6))
    ax.bar(edges[:-1], [max(c, 0) for c in counts], width=1 / bins, align="edge", color="#3b6ea8", edgecolor="white")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("participation $s_i$")
    ax.set_ylabel("players (symlog)")
    if epsilon is not None:
        ax.axvline(epsilon, color="#c0392b", linestyle="--", linewidth=1, label=f"ε = {epsilon:g} (removal threshold)")
        ax.legend(loc="upper center", frameon=False)
    ax.set_title(title)
    save_png(fig, path)


def plot_dynamics(path, metrics: list[dict[str, Any]]) -> None:
    epochs = [r["epoch"] for r in metrics]
    fig, ax = subplots(figsize=(6.5, 3.8))
    acc = ax.plot(epochs, [100 * r["test_accuracy"] for r in metrics], "o-", color="#2c7a3f", label="test accuracy")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)", color="#2c7a3f")
    lines = acc
    if all("players_alive" in r for r in metrics):
        ax2 = ax.twinx()
        lines += ax2.plot(epochs, [r["players_alive"] for r in metrics], "s-", color="#3b6ea8", label="players alive")
        ax2.set_yscale("log")
        ax2.set_ylabel("players alive (log)", color="#3b6ea8")
    finetune = [r["epoch"] for r in metrics if r.get("phase") == "finetune"]
    if finetune:
        ax.axvspan(finetune[0] - 0.5, finetune[-1] + 0.5, color="0.92", zorder=0)
        ax.text(finetune[0] - 0.4, ax.get_ylim()[0], " compacted,\n fine-tuning", va="bottom", fontsize=8, color="0.35")
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right", frameon=False)
    ax.set_title("Pruning dynamics")
    save_png(fig, path)


def plot_run(run_dir, metrics: list[dict[str, Any]], epsilon: float | None) -> None:
    """Write the run's plots into its directory (those its metrics support)."""
    plot_dynamics(run_dir.path / "dynamics.png", metrics)
    pruning = [r for r in metrics if "participation_histogram" in r]
    if pruning:
        last = pruning[-1]
        plot_participation_histogram(
            run_dir.path / "participation_histogram.png",
            last["participation_histogram"],
            epsilon,
            f"Participations after epoch {last['epoch']} ({last['players_alive']}/{last['players']} alive)",
        )

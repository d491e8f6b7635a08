"""The game's per-epoch equilibrium figures, against a plain count."""

import torch

from equiprune.methods import build_method
from equiprune.models import create_model


def test_undecided_is_counted_over_all_players_and_among_the_survivors():
    model = create_model("mlp", input_shape=(1, 28, 28), num_classes=10, hidden=[6, 4])
    method = build_method("game", settings={"epsilon": 0.01})
    gated = method.prepare(model)
    values = [[0.0, 0.005, 0.5, 1.0, 0.9, 0.96], [0.02, 1.0, 0.0, 0.3]]
    with torch.no_grad():
        for gate, v in zip(gated.gates, values):
            gate.copy_(torch.tensor(v))
    metrics = method.epoch_metrics(gated)
    flat = [s for v in values for s in v]
    survivors = [s for s in flat if s >= 0.01]  # 0.5, 1.0, 0.9, 0.96, 0.02, 1.0, 0.3
    undecided = lambda xs: sum(0.05 < s < 0.95 for s in xs) / len(xs)  # noqa: E731
    assert metrics["players_alive"] == len(survivors) == 7
    assert abs(metrics["undecided_fraction"] - undecided(flat)) < 1e-7 and undecided(flat) == 3 / 10
    assert abs(metrics["undecided_among_survivors"] - undecided(survivors)) < 1e-7  # 3 of 7


def test_the_histogram_shows_the_first_the_last_and_evenly_spread_pruning_epochs(tmp_path):
    from PIL import Image

    from equiprune.experiments.run_plots import histogram_epochs, plot_participation_histogram

    rows = [{"epoch": e, "players": 8, "players_alive": 8 - e // 2, "participation_histogram": [e, 8 - e]}
            for e in range(10)]  # fmt: skip
    assert [r["epoch"] for r in histogram_epochs(rows)] == [0, 3, 6, 9]
    assert [r["epoch"] for r in histogram_epochs(rows[:3])] == [0, 1, 2]
    assert [r["epoch"] for r in histogram_epochs(rows, panels=2)] == [0, 9]
    path = tmp_path / "h.png"
    plot_participation_histogram(path, histogram_epochs(rows), 0.01, "t")
    width, height = Image.open(path).size
    assert width > 2 * height  # four panels side by side

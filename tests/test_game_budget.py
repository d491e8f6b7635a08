"""The game at a requested size: the price it sets itself, the fit of its decision to the budget,
and the settings a budget refuses."""

import json
import math

import pytest
import torch

from equiprune.config import parse_config
from equiprune.core.compact import compact, contributions
from equiprune.core.measure import count_macs, count_params
from equiprune.core.players import attach
from equiprune.core.selection import cubic_fraction, top_k_global
from equiprune.errors import ConfigError
from equiprune.experiments.hooks import RunHook
from equiprune.experiments.loop import run
from equiprune.methods import build_method
from equiprune.methods import game_budget as budgeting
from equiprune.models import create_model

from .helpers import small_config


def _gated(hidden=(8, 6)):
    torch.manual_seed(0)
    gated = attach(create_model("mlp", input_shape=(1, 8, 8), num_classes=5, hidden=list(hidden)))
    with torch.no_grad():
        for s in gated.gates:
            s.copy_(torch.rand_like(s))
    return gated


def test_the_price_rises_above_the_target_falls_below_and_moves_alike_for_any_number_of_steps():
    for steps in (100, 10_000):
        price = budgeting.Price(budget=0.1, rate=50.0, value=1e-3, scale=1e-3, start=0, end=steps)
        assert price.target(0) == 1.0 and price.target(steps) == pytest.approx(0.1)
        assert price.target(steps / 2) == pytest.approx(cubic_fraction(0.1, steps / 2, 0, steps))
        for step in range(steps):  # always twice the target: the gap is clipped at 1
            price.update(step, 2 * price.target(step))
        assert math.asinh(price.value / 1e-3) - math.asinh(1.0) == pytest.approx(50.0)
        assert math.log(price.value / 1e-3) == pytest.approx(50.0 + math.asinh(1.0) - math.log(2), rel=1e-6)
    # below the target the price falls, through zero into a subsidy where the L2 cost alone prices
    # out more players than the target allows
    price = budgeting.Price(budget=0.5, rate=50.0, value=1e-3, scale=1e-3, start=0, end=100)
    values = [price.update(100, 0.25) for _ in range(20)]
    assert values == sorted(values, reverse=True) and values[0] < 1e-3 and values[-1] < 0


def test_ranks_order_by_the_first_key_then_the_second_as_a_naive_sort_does():
    primary = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0])]
    secondary = [torch.tensor([0.2, 0.9, 0.5]), torch.tensor([0.7, 0.1])]
    flat = [(p, q) for ps, qs in zip(primary, secondary) for p, q in zip(ps.tolist(), qs.tolist())]
    naive = sorted(range(len(flat)), key=lambda i: flat[i])  # ascending: rank 0 is the worst
    got = torch.cat(budgeting.ranks(primary, secondary))
    assert [int(got[i]) for i in naive] == list(range(len(flat)))


def test_the_fit_keeps_exactly_the_budget_and_counts_what_it_changed():
    gated = _gated()
    decided = {g.name: s >= 0.5 for g, s in zip(gated.groups, gated.gates)}
    rank = budgeting.ranks([decided[g.name].float() for g in gated.groups], contributions(gated))
    n_decided = sum(int(m.sum()) for m in decided.values())
    for budget in (0.15, 0.5, 0.9):
        masks, fitted = budgeting.fit(gated, decided, rank, budget, "players", None)
        k = round(budget * 14)
        assert sum(int(m.sum()) for m in masks.values()) == k == fitted["kept"]
        assert all(m.any() for m in masks.values())  # one player per layer at least
        assert fitted["decided"] == n_decided
        assert fitted["removed_by_fit"] - fitted["restored_by_fit"] == n_decided - k
        # every survivor the fit keeps of the game's outranks every one it removes
        if fitted["removed_by_fit"]:
            kept = torch.cat([torch.cat(rank)[torch.cat([masks[g.name] & decided[g.name] for g in gated.groups])]])
            gone = torch.cat(rank)[torch.cat([~masks[g.name] & decided[g.name] for g in gated.groups])]
            assert kept.min() > gone.max()


@pytest.mark.parametrize("unit, measure", [("params", count_params), ("macs", lambda m: count_macs(m, (1, 8, 8)))])
def test_the_fit_in_params_or_macs_keeps_the_most_players_that_fit(unit, measure):
    gated = _gated()
    decided = {g.name: torch.ones(g.size, dtype=torch.bool) for g in gated.groups}
    rank = budgeting.ranks([decided[g.name].float() for g in gated.groups], contributions(gated))
    scores = {g.name: r for g, r in zip(gated.groups, rank)}
    full = measure(gated.model)
    masks, fitted = budgeting.fit(gated, decided, rank, 0.4, unit, (1, 8, 8))
    size = lambda k: measure(compact(gated, top_k_global(scores, k)).model)  # noqa: E731
    # the naive answer: the largest k whose compacted model fits, counting up from one per layer
    naive = max(k for k in range(2, 15) if size(k) <= 0.4 * full)
    assert fitted["kept"] == naive and measure(compact(gated, masks).model) <= 0.4 * full < size(naive + 1)


def test_a_budget_below_one_player_per_layer_names_the_smallest_feasible_one():
    gated = _gated()
    with pytest.raises(ConfigError, match=r"method.budget: 0.05 of the players.*smallest feasible budget is 0.1429"):
        budgeting.check_feasible(gated, 0.05, "players", None)
    budgeting.check_feasible(gated, 0.15, "players", None)
    with pytest.raises(ConfigError, match=r"budget_unit = 'macs' reads the input shape.*Calibration.from_loader"):
        budgeting.unit_weights(gated, "macs", None)
    low = budgeting.smallest_feasible(gated, "params", None)
    with pytest.raises(ConfigError, match=f"smallest feasible budget is {low:.4g}"):
        budgeting.check_feasible(gated, low * 0.9, "params", None)


def test_bad_budget_settings_are_refused_by_name():
    for bad, message in (
        ("budget = 0.1\ngamma = 0.2", "method.gamma: with method.budget the game sets"),
        ("budget = 0", "method.budget: a fraction"),
        ("budget = 1.5", "method.budget: a fraction"),
        ('budget = 0.1\nbudget_unit = "flops"', "method.budget_unit"),
        ("budget = 0.1\nprice_rate = 0", "method.price_rate"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config(f'[method]\nname = "game"\n{bad}\n')
    assert parse_config('[method]\nname = "game"\npreset = "extreme-beta"\nbudget = 0.1\n')  # a preset's γ is fine
    game = build_method("game", settings={"budget": 0.1}, players="weight")
    with pytest.raises(ConfigError, match="budget needs structured players"):
        game.prepare(create_model("mlp", input_shape=(1, 8, 8), num_classes=5, hidden=[4]))


def _budget_config(data_root, budget, epochs=4):
    text = small_config(data_root, epochs=epochs, finetune=1, train_subset=3000)
    return text.replace("gamma = 0.3\n", "").replace(
        "lr_s = 0.02", f'lr_s = 0.01\nupdate = "newton"\nanchored = true\nstart = 0.25\nbudget = {budget}'
    )


class _StopAfter(RunHook):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, st, row):
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt


def test_a_budgeted_run_lands_on_the_budget_shows_its_path_and_resumes_to_the_same_result(tmp_path, data_root):
    cfg = parse_config(_budget_config(data_root, 0.2))
    whole = run(cfg, tmp_path / "whole", quiet=True)
    assert sum(whole["kept"].values()) == round(0.2 * 96) and whole["budget"] == 0.2
    fit = whole["budget_fit"]
    assert fit["kept"] == 19 and fit["decided"] - fit["removed_by_fit"] + fit["restored_by_fit"] == 19
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    pruning = [r for r in rows if r["phase"] == "prune"]
    assert all({"price", "budget_target", "size"} <= set(r) for r in pruning)
    assert pruning[0]["budget_target"] > pruning[-1]["budget_target"] == pytest.approx(0.2)
    assert pruning[-1]["size"] == pytest.approx(pruning[-1]["players_alive"] / 96)

    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "cut", quiet=True, hooks=[_StopAfter(2)])
    resumed = run(cfg, tmp_path / "cut", resume=True, quiet=True)
    whole.pop("seconds"), resumed.pop("seconds")
    assert resumed == whole


def test_every_shipped_neuron_sweep_runs_the_budgeted_game_at_each_of_its_budgets():
    from equiprune.config import shipped_config
    from equiprune.experiments.sweep import load_sweep

    for name in ("mnist_mlp_neurons", "fashion_mlp_neurons", "lenet300_mnist_neurons", "lenet5_fashion_structured"):
        sweep = load_sweep(shipped_config("sweeps", f"{name}.toml"))
        runs = [r for r in sweep.runs if r.label == "game-budget"]
        assert sorted({r.budget for r in runs}) == sorted(sweep.budgets) and len(runs) == 3 * len(sweep.budgets)
        assert all(r.config.method.settings.budget == r.budget for r in runs)
        # the cost-swept games keep their points
        assert all(r.point.startswith("gamma=") for r in sweep.runs if r.method == "game" and r.label != "game-budget")


def test_the_hold_keeps_the_fewest_best_players_that_make_up_the_target():
    strategies = [torch.tensor([0.5, 0.001, 0.002]), torch.tensor([0.0005, 0.9])]
    ones = torch.tensor([1.0, 1.0], dtype=torch.float64)
    assert budgeting.hold(strategies, ones, 0.4, 0.01) is None  # 2 of 5 alive already
    keep = budgeting.hold(strategies, ones, 0.6, 0.01)  # 3 of 5: the best leaving one joins
    assert [k.tolist() for k in keep] == [[True, False, True], [False, True]]
    assert budgeting.hold(strategies, ones, 0.5, 0.01) is None  # 2.5 players: 2 is the nearest count
    heavy = torch.tensor([1.0, 10.0], dtype=torch.float64)  # the second group's players weigh 10
    assert budgeting.hold(strategies, heavy, 0.45, 0.01) is None  # 11 of 23 alive: enough for 10.35
    assert budgeting.hold(strategies, heavy, 0.5, 0.01) is None  # 11.5: within half a player of 11
    keep = budgeting.hold(strategies, heavy, 0.55, 0.01)  # 12.65 of 23: the two best leaving ones join
    assert [k.tolist() for k in keep] == [[True, True, True], [False, True]]


def test_a_budgeted_game_that_empties_a_layer_advises_the_budget_not_setting_one():
    torch.manual_seed(0)
    model = create_model("mlp", input_shape=(1, 4, 4), hidden=(8, 6))
    method = build_method("game", settings={"budget": 0.5})
    gated = method.prepare(model)
    method.before_run(gated, steps_per_epoch=1, epochs=1)
    with torch.no_grad():
        gated.gates[1].zero_()  # every player of the second layer has left
    result = method.finish(gated)
    (note,) = result.notes
    assert "every player would leave layer" in note and note.endswith("raise method.budget, or exclude this layer")
    unbudgeted = build_method("game", settings={"gamma": 0.1})
    gated = unbudgeted.prepare(create_model("mlp", input_shape=(1, 4, 4), hidden=(8, 6)))
    unbudgeted.before_run(gated, steps_per_epoch=1, epochs=1)
    with torch.no_grad():
        gated.gates[1].zero_()
    assert unbudgeted.finish(gated).notes[0].endswith("set a budget, or exclude this layer")

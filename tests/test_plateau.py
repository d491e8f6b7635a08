"""The selection plateau: scorers, the exact mechanism (rank-monotone scorers select the same
players), the overlaps, the study end to end, and the errors bad input gets."""

import json
import tomllib

import pytest
import tomli_w
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from equiprune.cli import main
from equiprune.config import ConfigError, PlateauConfig, parse_config, shipped_config
from equiprune.core.scorers import MAPS, SCORERS, Features, Scorer, jaccard, scorer_from_settings
from equiprune.core.selection import top_k_masks
from equiprune.errors import PruningError
from equiprune.experiments.plateau import _Players, chosen_scorers

MONOTONE = [name for name in SCORERS.names() if SCORERS.get(name).kappa == 0]


def _features(seed: int, sizes=(30, 50, 7), ties: bool = False) -> Features:
    g = torch.Generator().manual_seed(seed)
    mags = {f"layer{i}": torch.randn(n, generator=g) for i, n in enumerate(sizes)}
    if ties:  # repeated magnitudes, and exact zeros, where only the tie-break decides
        mags = {k: (v * 4).round() / 4 for k, v in mags.items()}
    return Features.of({k: v.abs() for k, v in mags.items()}, {k: v.abs() * 3 for k, v in mags.items()})


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), sparsity=st.floats(0.05, 0.95), ties=st.booleans(),
       allocation=st.sampled_from(["global", "layerwise"]))  # fmt: skip
def test_any_two_rank_monotone_scorers_select_exactly_the_same_players(seed, sparsity, ties, allocation):
    features = _features(seed, ties=ties)
    cubed = scorer_from_settings("cubed", {"feature": "magnitude", "map": "power", "power": 3.0})
    ranked = Scorer("quantile")  # the rank itself: monotone in |w|, ties shared
    if allocation == "layerwise":
        features = Features.of(features.magnitude, per_layer=True)
    masks = [top_k_masks(SCORERS.get(n)(features), 1 - sparsity, allocation) for n in MONOTONE]
    masks += [top_k_masks(scorer(features), 1 - sparsity, allocation) for scorer in (cubed, ranked)]
    for other in masks[1:]:
        assert all(torch.equal(masks[0][k], other[k]) for k in masks[0])
        assert jaccard(masks[0], other) == 1.0


def test_quantiles_are_mean_ranks_by_a_naive_count():
    features = _features(3, sizes=(12, 9), ties=True)
    pooled = torch.cat(list(features.magnitude.values())).tolist()
    n = len(pooled)
    # rank = (#smaller) + (#equal − 1)/2, over n − 1
    naive = [(sum(v < x for v in pooled) + (sum(v == x for v in pooled) - 1) / 2) / (n - 1) for x in pooled]
    got = torch.cat(list(features.quantile.values())).tolist()
    assert got == pytest.approx(naive)
    per_layer = Features.of(features.magnitude, per_layer=True).quantile["layer1"].tolist()
    layer = features.magnitude["layer1"].tolist()
    expect = [(sum(v < x for v in layer) + (sum(v == x for v in layer) - 1) / 2) / (len(layer) - 1) for x in layer]
    assert per_layer == pytest.approx(expect)


def test_non_monotone_scorers_reorder_players_and_the_control_ignores_magnitude():
    features = _features(0, sizes=(400,))
    order = features.magnitude["layer0"].argsort()
    for name in ("bump", "quadratic", "wiggle", "chaos", "fake-control"):
        s = SCORERS.get(name)(features)["layer0"][order]
        assert (s[1:] < s[:-1]).any(), f"{name} should not be monotone in |w|"
    # the control's perturbation is a function of position alone: the same factor at any magnitudes
    control = SCORERS.get("fake-control")
    first, second = (
        Features.of({"l": torch.rand(50, generator=torch.Generator().manual_seed(k)) + 0.1}) for k in (1, 2)
    )
    both = (first.quantile["l"] > 0) & (second.quantile["l"] > 0)  # the smallest scores 0 whatever the factor
    factor = [control(f)["l"][both] / f.quantile["l"][both] for f in (first, second)]
    torch.testing.assert_close(factor[0], factor[1])
    assert float(factor[0].max() - factor[0].min()) > 0.25


def test_jaccard_matches_a_set_computation():
    g = torch.Generator().manual_seed(1)
    a = {"x": torch.rand(40, generator=g) < 0.5, "y": torch.rand(9, generator=g) < 0.3}
    b = {"x": torch.rand(40, generator=g) < 0.5, "y": torch.rand(9, generator=g) < 0.3}
    sa = {(k, i) for k, m in a.items() for i in torch.nonzero(m).flatten().tolist()}
    sb = {(k, i) for k, m in b.items() for i in torch.nonzero(m).flatten().tolist()}
    assert jaccard(a, b) == pytest.approx(len(sa & sb) / len(sa | sb))


def test_bad_scorers_and_settings_are_named():
    with pytest.raises(ConfigError, match="did you mean 'magnitude'"):
        chosen_scorers(PlateauConfig(scorers=["magnitud"]))
    with pytest.raises(ConfigError, match=r"plateau.sparsities: each must lie in \(0, 1\)"):
        PlateauConfig(sparsities=[0.5, 1.0])
    with pytest.raises(ConfigError, match="already name built-in scorers"):
        chosen_scorers(PlateauConfig(custom={"magnitude": {"feature": "unit"}}))
    with pytest.raises(ConfigError, match="plateau.custom.odd: scorer map: got 'nope'"):
        scorer_from_settings("odd", {"feature": "unit", "map": "nope"})
    features = Features.of({"l": torch.tensor([0.0, 1.0, 2.0])})
    with pytest.raises(ConfigError, match="non-finite score"):
        scorer_from_settings("inverse", {"feature": "magnitude", "map": "power", "power": -1.0})(features, "inverse")
    MAPS["_flat_for_test"] = lambda x: x[:1]
    try:
        with pytest.raises(ConfigError, match=r"gave shape \(1,\) for layer l of 3 players"):
            Scorer("unit", "_flat_for_test")(features, "flat")
    finally:
        del MAPS["_flat_for_test"]
    with pytest.raises(ConfigError, match="needs the taylor feature"):
        SCORERS.get("taylor")(features)
    with pytest.raises(PruningError):
        _Players(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.ReLU()), "weight")


PLATEAU_CONFIG = """
seed = 0
device = "cpu"
threads = 1
[data]
dataset = "mnist"
root = "{root}"
train_subset = 1024
test_subset = 500
batch_size = 64
[model]
hidden = [24, 16]
[train]
epochs = 1
[method]
name = "dense"
[plateau]
sparsities = [0.5, 0.8]
seeds = [0]
finetune_steps = 3
calibration_batches = 2
scorers = ["magnitude", "squared", "chaos", "fake-control", "taylor", "cubed"]
[plateau.custom.cubed]
feature = "magnitude"
map = "power"
power = 3.0
"""


def test_plateau_command_end_to_end_and_resumes(tmp_path, data_root, capsys):
    config = tmp_path / "plateau.toml"
    config.write_text(PLATEAU_CONFIG.format(root=data_root))
    out = tmp_path / "study"
    assert main(["plateau", str(config), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "rank_monotone_min_overlap=1.0000" in printed and "escape:" in printed
    result = json.loads((out / "plateau.json").read_text())
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 6  # players x sparsities x scorers, one seed
    for kind in ("weight", "structured"):
        for s in (0.5, 0.8):
            cell = {r["scorer"]: r for r in rows if r["players"] == kind and r["sparsity"] == s}
            # the same players, the same fine-tuning batches: the very same accuracies
            assert cell["magnitude"]["test_accuracy_finetuned"] == cell["squared"]["test_accuracy_finetuned"]
            assert cell["magnitude"]["test_accuracy_cut"] == cell["cubed"]["test_accuracy_cut"]
            assert len({r["kept"] for r in cell.values()}) == 1  # every scorer keeps the same count
    weights = 784 * 24 + 24 * 16 + 16 * 10
    assert {r["kept"] for r in rows if r["players"] == "weight" and r["sparsity"] == 0.5} == {round(0.5 * weights)}
    table = (out / "plateau.md").read_text()
    assert "## weight players" in table and "## structured players" in table and "| chaos | 2 |" in table
    assert (out / "plateau_accuracy.png").stat().st_size > 0 and (out / "overlap.png").stat().st_size > 0
    # a second call reuses the finished seed: nothing is trained or cut again
    stamp = (out / "seed0" / "plateau.json").stat().st_mtime_ns
    assert main(["plateau", str(config), "--out", str(out), "--quiet"]) == 0
    assert (out / "seed0" / "plateau.json").stat().st_mtime_ns == stamp


def test_every_shipped_plateau_configuration_is_valid():
    from equiprune.config import load_config

    names = sorted(p.stem for p in shipped_config("plateau").glob("*.toml"))
    assert names == ["lenet5_fashion", "vit_fashion", "vit_mnist", "vit_small_cifar10"]
    for name in names:
        cfg = load_config(shipped_config("plateau", f"{name}.toml"))
        assert cfg.plateau is not None and cfg.method.name == "dense"
        chosen = chosen_scorers(cfg.plateau)
        assert any(s.kappa == 0 for s in chosen.values()) and any(s.kappa != 0 for s in chosen.values())


def test_vit_small_cifar_configuration_runs_on_cifar_format_files(cifar10_files, tmp_path):
    root = cifar10_files
    shipped = tomllib.loads(shipped_config("plateau", "vit_small_cifar10.toml").read_text())
    assert shipped["model"] | {} == {"name": "vit", "dim": 384, "depth": 12, "heads": 6, "mlp": 1536, "patch": 4,
                                     "activation": "gelu"}  # fmt: skip
    small = {**shipped, "device": "cpu", "threads": 1}
    small["data"] = {**shipped["data"], "root": str(root), "batch_size": 4}
    small["model"] = {**shipped["model"], "dim": 12, "depth": 1, "heads": 6, "mlp": 8, "patch": 8}
    small["train"] = {**shipped["train"], "epochs": 1}
    small["plateau"] = {**shipped["plateau"], "seeds": [0], "sparsities": [0.5], "finetune_steps": 1,
                        "calibration_batches": 1, "scorers": ["magnitude", "taylor"]}  # fmt: skip
    config = tmp_path / "vit_small.toml"
    config.write_text(tomli_w.dumps(small))
    parse_config(config.read_text())  # the shipped keys stay valid
    assert main(["plateau", str(config), "--out", str(tmp_path / "study"), "--quiet"]) == 0
    rows = json.loads((tmp_path / "study" / "plateau.json").read_text())["rows"]
    assert {r["players"] for r in rows} == {"weight", "structured"}


def test_the_docs_example_registers_a_scorer_from_python():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "plateau.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    try:
        exec(example, {})
        saw = SCORERS.get("saw")
        assert saw.kappa == 2
        scores = saw(Features.of({"l": torch.linspace(0.01, 1, 200)}))["l"]
        assert (scores[1:] < scores[:-1]).any()  # a sawtooth: not monotone
    finally:
        SCORERS._items.pop("saw", None)
        MAPS.pop("saw", None)

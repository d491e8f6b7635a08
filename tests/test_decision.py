"""The prune decision: the paper's rule (s_i < ε) against the effective contribution, which sees
through the scale a player's weights can take over from a small participation."""

import pytest
import torch

from equiprune.config import parse_config
from equiprune.core.compact import compact, contributions, keep_masks
from equiprune.core.players import attach
from equiprune.errors import ConfigError
from equiprune.experiments.loop import run
from equiprune.methods import build_method
from equiprune.models import create_model

from .helpers import small_config


def _gated_with_scaled_players():
    """An MLP whose first layer's players 0-3 play s = 0.005 with incoming weights 200x: under ReLU
    s·relu(200z) = relu(z), so the network computes what it did with s = 1."""
    torch.manual_seed(0)
    model = create_model("mlp", input_shape=(1, 8, 8), num_classes=5, hidden=[8, 6])
    gated = attach(model)
    x = torch.randn(16, 1, 8, 8)
    before = gated(x).detach()
    first = gated.groups[0].producers[0][1]
    with torch.no_grad():
        first.weight[:4] *= 200
        first.bias[:4] *= 200
        gated.gates[0][:4] = 0.005
    return gated, x, before


def test_moving_scale_between_participation_and_weights_leaves_the_function_and_the_contribution():
    gated, x, before = _gated_with_scaled_players()
    assert torch.allclose(gated(x), before, atol=1e-4)  # the same network
    first = gated.groups[0].producers[0][1]
    scaled = contributions(gated)
    with torch.no_grad():  # undo the move: contributions must not see it
        first.weight[:4] /= 200
        first.bias[:4] /= 200
        gated.gates[0][:4] = 1.0
    assert all(torch.allclose(a, b, rtol=1e-5) for a, b in zip(scaled, contributions(gated)))


def test_the_contribution_keeps_the_players_the_function_needs_and_the_paper_rule_does_not():
    gated, x, before = _gated_with_scaled_players()
    by_participation = keep_masks(gated, 0.01)
    assert by_participation[gated.groups[0].name][:4].tolist() == [False] * 4  # cut: s < ε
    wrecked = compact(gated, by_participation).model
    assert not torch.allclose(wrecked(x), before, atol=1e-3)

    by_contribution = keep_masks(gated, 0.01, contributions(gated), rule="contribution_threshold")
    assert by_contribution[gated.groups[0].name].all()
    kept = compact(gated, by_contribution).model
    assert torch.allclose(kept(x), before, atol=1e-4)


def test_a_player_nothing_reads_contributes_nothing():
    gated, _, _ = _gated_with_scaled_players()
    consumer = gated.groups[0].consumers[0].module
    with torch.no_grad():
        consumer.weight[:, 5] = 0.0  # player 5's output column
    c = contributions(gated)[0]
    assert c[5] == 0.0 and c.max() == 1.0


def test_the_decision_is_a_setting_the_presets_name_and_bad_values_are_refused(tmp_path, data_root):
    assert build_method("game", preset="very-high-beta").settings.decision == "participation"
    cfg = parse_config(small_config(data_root, epochs=2, finetune=1, train_subset=2000,
                                    extra='decision = "contribution"\ncontribution_threshold = 0.05'))  # fmt: skip
    results = run(cfg, tmp_path / "r", quiet=True)
    assert not results["compaction_flagged"] and 0 < results["kept_fraction"] <= 1
    # the paper's rule, not played, is reported beside it from the same trained model
    other = results["other_decisions"]["participation"]
    assert set(other) == {"kept_fraction", "kept", "test_accuracy_after_compaction"}
    assert sum(other["kept"].values()) / 96 == pytest.approx(other["kept_fraction"])
    for bad, message in (('contribution_threshold = 0', "method.contribution_threshold"),
                         ('contribution_threshold = 1.5', "method.contribution_threshold"),
                         ('decision = "size"', "method.decision")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            parse_config(f'[method]\nname = "game"\n{bad}\n')
    weight_game = build_method("game", settings={"decision": "contribution"}, players="weight")
    with pytest.raises(ConfigError, match="needs structured players"):
        weight_game.prepare(create_model("mlp", input_shape=(1, 8, 8), num_classes=5, hidden=[4]))


def test_the_game_reports_the_decision_it_did_not_play_from_the_same_trained_model():
    gated, x, before = _gated_with_scaled_players()
    game = build_method("game", preset="very-high-beta")  # the paper's rule: participation
    played = game.finish(gated)
    other = game.other_decisions(gated)
    assert list(other) == ["contribution"]
    assert played.kept[gated.groups[0].name] == 4 and other["contribution"].kept[gated.groups[0].name] == 8
    assert torch.allclose(other["contribution"].model(x), before, atol=1e-4)
    assert torch.allclose(gated(x), before, atol=1e-4)  # the trained model is left as it was
    rewinding = build_method("game", settings={"rewind": True})
    assert rewinding.other_decisions(gated) == {}  # a rewound network is not the one trained

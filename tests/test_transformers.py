"""Hugging Face transformers models (tiny random BERT, ViT and Llama, built offline): their heads
and MLP neurons found without torch.fx, gated, and compacted to the same classes exactly."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
    ViTConfig,
    ViTModel,
)

from equiprune.core.compact import compact
from equiprune.core.players import attach
from equiprune.errors import PruningError
from equiprune.methods import build_method

HIDDEN, HEADS, MLP = 32, 4, 37


def bert():
    config = BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                        intermediate_size=MLP)  # fmt: skip
    return BertModel(config).eval(), {"input_ids": torch.randint(0, 100, (2, 7))}


def vit():
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=HIDDEN, num_hidden_layers=2,
                       num_attention_heads=HEADS, intermediate_size=MLP)  # fmt: skip
    return ViTModel(config).eval(), {"pixel_values": torch.randn(2, 1, 8, 8)}


def llama():
    """Grouped-query attention: 4 query heads share 2 key/value heads."""
    config = LlamaConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                         num_key_value_heads=2, intermediate_size=MLP)  # fmt: skip
    return LlamaForCausalLM(config).eval(), {"input_ids": torch.randint(0, 100, (2, 7))}


FAMILIES = {"bert": bert, "vit": vit, "llama": llama}
EXPECTED = {  # per block: (group name suffix, kind, players)
    "bert": [("intermediate.dense", "neuron", MLP), ("attention.self", "head", HEADS)],
    "vit": [("attention", "head", HEADS), ("mlp.fc1", "neuron", MLP)],
    "llama": [("self_attn", "head", 2), ("mlp.gate_proj", "neuron", MLP)],
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_and_neurons_of_every_block_are_players(family):
    model, inputs = FAMILIES[family]()
    gated = attach(model)
    found = [(g.name, g.kind, g.size) for g in gated.groups]
    assert len(found) == 2 * len(EXPECTED[family])
    for (name, kind, size), (suffix, want_kind, want_size) in zip(found, EXPECTED[family] * 2):
        assert name.endswith(suffix) and (kind, size) == (want_kind, want_size), (name, kind, size)
    with torch.no_grad():  # every participation 1: the dense model's outputs exactly
        assert torch.equal(gated(**inputs)[0], model(**inputs)[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_compacted_model_computes_what_the_gated_one_does(family):
    model, inputs = FAMILIES[family]()
    gated = attach(model)
    masks = {}
    with torch.no_grad():
        for group, s in zip(gated.groups, gated.gates):
            keep = torch.rand(group.size) > 0.4
            keep[0] = True
            s.uniform_(0.2, 1.0)
            s[~keep] = 0.0
            masks[group.name] = keep
        expected = gated(**inputs)[0]
        result = compact(gated, masks)
        got = result.model(**inputs)[0]
    assert type(result.model) is type(model)
    assert torch.allclose(got, expected, atol=1e-5)
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
    assert result.kept == {name: int(keep.sum()) for name, keep in masks.items()}


def test_grouped_query_attention_loses_whole_key_value_groups_and_still_generates():
    model, inputs = llama()
    gated = attach(model)
    masks = {g.name: torch.ones(g.size, dtype=torch.bool) for g in gated.groups}
    masks["model.layers.0.self_attn"] = torch.tensor([False, True])  # the second key/value head stays
    assert gated.groups[0].name == "model.layers.0.self_attn"
    with torch.no_grad():
        gated.gates[0][0] = 0.0  # what the gated model plays when the first one has left
    small = compact(gated, masks).model
    attention = small.model.layers[0].self_attn
    head_dim = HIDDEN // HEADS
    assert attention.k_proj.out_features == attention.v_proj.out_features == head_dim
    assert attention.q_proj.out_features == attention.o_proj.in_features == 2 * head_dim  # its 2 query heads
    assert attention.num_key_value_groups == 2 and attention.num_key_value_heads == 1
    with torch.no_grad():
        assert torch.allclose(small(**inputs).logits, gated(**inputs).logits, atol=1e-5)
    out = small.generate(inputs["input_ids"], attention_mask=torch.ones_like(inputs["input_ids"]), max_new_tokens=3,
                         do_sample=False, pad_token_id=0)  # fmt: skip
    assert out.shape == (2, 10)


def test_a_method_prunes_a_transformer_through_the_python_api():
    model, inputs = bert()
    method = build_method("magnitude-l1", settings={"budget": 0.5})
    gated = method.prepare(model)
    result = method.finish(gated)
    assert result.kept_fraction == pytest.approx(0.5, abs=0.05)
    assert {result.kinds[name] for name in result.kept} == {"head", "neuron"}
    with torch.no_grad():
        assert result.model(**inputs)[0].shape == model(**inputs)[0].shape


def test_exclude_leaves_a_block_whole_and_an_unknown_family_is_named():
    model, _ = bert()
    names = [g.name for g in attach(model, exclude=["encoder.layer.0"]).groups]
    assert names == ["encoder.layer.1.intermediate.dense", "encoder.layer.1.attention.self"]
    gpt2 = GPT2Model(GPT2Config(vocab_size=100, n_embd=HIDDEN, n_layer=1, n_head=HEADS))
    with pytest.raises(PruningError, match=r"GPT2Model: no attention or MLP block equiprune knows.*GPT2Attention"):
        attach(gpt2)


def test_the_core_does_not_import_transformers():
    code = "import sys, equiprune.core.players, equiprune.methods; print('transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_game_plays_on_a_transformer_in_a_users_own_loop():
    """Distillation towards fixed targets: the game reads the heads' and neurons' gradients."""
    model, inputs = llama()
    method = build_method("game", settings={"beta": 0.05, "gamma": 0.3, "lr_s": 0.2})
    gated = method.prepare(model)
    method.before_run(gated, steps_per_epoch=10, epochs=1)
    opt = torch.optim.Adam(method.weight_parameters(gated), lr=1e-3)
    target = torch.randn(2, 7, 100)
    for _ in range(10):
        gated.zero_grad()
        torch.nn.functional.mse_loss(gated(**inputs).logits, target).backward()
        opt.step()
        method.after_step(gated)
    moved = [bool((s != 1).any()) for s in gated.gates]
    assert all(moved)  # every head group and MLP played
    result = method.finish(gated)
    assert type(result.model) is LlamaForCausalLM


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pruned_model_saves_in_its_own_format_and_loads_back_exactly(family, tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM

    from equiprune.experiments.hf_export import PRUNED_LAYERS_KEY, load_pruned, save_pruned

    model, inputs = FAMILIES[family]()
    gated = attach(model)
    masks = {g.name: (torch.rand(g.size) > 0.4) | (torch.arange(g.size) == 0) for g in gated.groups}
    small = compact(gated, masks).model.eval()
    save_pruned(small, tmp_path / "pruned")
    assert PRUNED_LAYERS_KEY in json.loads((tmp_path / "pruned" / "config.json").read_text())
    back = load_pruned(tmp_path / "pruned")
    assert type(back) is type(model)
    with torch.no_grad():
        assert torch.equal(back(**inputs)[0], small(**inputs)[0])
    save_pruned(model, tmp_path / "dense")  # unpruned: transformers alone loads it
    auto = (AutoModelForCausalLM if family == "llama" else AutoModel).from_pretrained(tmp_path / "dense").eval()
    with torch.no_grad():
        assert torch.equal(auto(**inputs)[0], model(**inputs)[0])


def test_loading_a_directory_without_weights_or_config_says_what_is_missing(tmp_path):
    from equiprune.errors import DataError
    from equiprune.experiments.hf_export import load_pruned, save_pruned

    with pytest.raises(DataError, match="has no config.json"):
        load_pruned(tmp_path)
    model, _ = bert()
    save_pruned(model, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(DataError, match="holds no model weights"):
        load_pruned(tmp_path / "m")


def test_a_head_budget_keeps_whole_key_value_groups_or_is_refused_with_the_nearest_counts():
    from equiprune.core.hf_players import head_budget

    model, _ = llama()  # 2 layers x 4 query heads, in key/value groups of 2
    assert head_budget(model, 6) == pytest.approx(0.75)
    method = build_method("magnitude-l1", settings={"budget": head_budget(model, 4)}, players="head")
    result = method.finish(method.prepare(model))
    heads = sum(layer.self_attn.q_proj.out_features // (HIDDEN // HEADS) for layer in result.model.model.layers)
    assert heads == 4
    with pytest.raises(PruningError, match=r"head budget 5 breaks grouped-query attention.*groups of 2.*4 or 6"):
        head_budget(model, 5)
    with pytest.raises(PruningError, match=r"has 8 query heads; keep 1 to 8"):
        head_budget(model, 9)
    assert head_budget(bert()[0], 5) == pytest.approx(5 / 8)  # multi-head attention: any count

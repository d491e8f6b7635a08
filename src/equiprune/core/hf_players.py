"""Channel spaces of Hugging Face transformers models, found by module pattern instead of ``torch.fx``.

transformers 5 models cannot be traced with ``torch.fx``; their blocks are recognised by the
layers they hold instead, which every family of a kind names alike:

- attention with ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (ViT, Llama, Mistral, Qwen, ...): one
  player per key/value head, which owns its query heads too (grouped-query attention: pruning a
  key/value group with all its queries keeps the model loadable with ``num_key_value_groups``
  unchanged); multi-head attention is the case of groups of one;
- BERT-style attention (``query``/``key``/``value`` with ``attention_head_size``, the output
  projection in the parent's ``output.dense``): one player per head;
- gated MLPs (``gate_proj``/``up_proj``/``down_proj``), MLPs with ``fc1``/``fc2``, and BERT's
  ``intermediate.dense``/``output.dense``: one player per intermediate neuron.

A head's rows in the projections and its columns in the output projection go with it; the gate
multiplies its output where the output projection reads it, as for equiprune's own attention.
Attention computes the head count from the projections' width (``view(..., -1, head_dim)``), so a
compacted layer needs no attribute changed besides the counts it keeps for reference
(``num_attention_heads``, ``num_key_value_heads``: set to what it kept).

:func:`equiprune.core.tracing.channel_spaces` calls :func:`transformers_spaces` for these models,
so every method finds their players through ``find_players`` as for any other model.
"""

from __future__ import annotations

import torch.nn as nn

from equiprune.core.channel_spaces import ChannelSpace, Consumer
from equiprune.errors import PruningError


def is_transformers_model(model: nn.Module) -> bool:
    """A model of the transformers library, or a subclass of one (found by the modules its class
    comes from, without importing transformers)."""
    return any(cls.__module__.startswith("transformers.") for cls in type(model).__mro__)


def _linear(module: nn.Module, *names: str) -> list[nn.Linear] | None:
    found = [getattr(module, n, None) for n in names]
    return found if all(isinstance(m, nn.Linear) for m in found) else None


def _head_dim(module: nn.Module, o_in: int) -> int:
    for attribute in ("head_dim", "attention_head_size"):
        value = getattr(module, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    config = getattr(module, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    if heads:
        return o_in // heads
    raise PruningError(
        f"{type(module).__name__}: cannot tell its head size (no head_dim, no config.num_attention_heads)"
    )


def _projection_heads(name: str, module: nn.Module) -> ChannelSpace | None:
    """q/k/v/o_proj attention: one player per key/value head, with its group of query heads."""
    layers = _linear(module, "q_proj", "k_proj", "v_proj", "o_proj")
    if layers is None:
        return None
    q, k, v, o = layers
    head_dim = _head_dim(module, o.in_features)
    kv_heads, q_heads = k.out_features // head_dim, q.out_features // head_dim
    if kv_heads * head_dim != k.out_features or q_heads % kv_heads or v.out_features != k.out_features:
        raise PruningError(f"{name}: projections of {q.out_features}/{k.out_features}/{v.out_features} rows do "
                           f"not split into heads of {head_dim}")  # fmt: skip
    group = q_heads // kv_heads  # query heads per key/value head
    producers = [(f"{name}.{p}", m) for p, m in zip(("q_proj", "k_proj", "v_proj"), (q, k, v))]
    consumers = [Consumer(f"{name}.o_proj", o, 0, group * head_dim)]
    return ChannelSpace(kv_heads, producers, consumers=consumers, row_pattern=(head_dim, 1),
                        resize=[(name, "num_key_value_heads")], kind="head", bypassed=True)  # fmt: skip


def _bert_heads(name: str, module: nn.Module, parent: nn.Module | None, parent_name: str) -> ChannelSpace | None:
    """BERT-style attention: query/key/value here, the output projection in the parent's output."""
    layers = _linear(module, "query", "key", "value")
    output = getattr(getattr(parent, "output", None), "dense", None)
    if layers is None or not isinstance(output, nn.Linear) or not hasattr(module, "attention_head_size"):
        return None
    head_dim = module.attention_head_size
    heads = layers[0].out_features // head_dim
    producers = [(f"{name}.{p}", m) for p, m in zip(("query", "key", "value"), layers)]
    consumers = [Consumer(f"{parent_name}.output.dense", output, 0, head_dim)]
    return ChannelSpace(heads, producers, consumers=consumers, row_pattern=(head_dim, 1),
                        resize=[(name, "num_attention_heads")], kind="head", bypassed=True)  # fmt: skip


def _mlp_neurons(name: str, module: nn.Module) -> ChannelSpace | None:
    """An MLP's intermediate neurons: gate/up -> down, fc1 -> fc2, or intermediate.dense -> output.dense."""
    gated = _linear(module, "gate_proj", "up_proj", "down_proj")
    if gated is not None:
        gate, up, down = gated
        producers, consumer = [(f"{name}.gate_proj", gate), (f"{name}.up_proj", up)], (f"{name}.down_proj", down)
    elif (plain := _linear(module, "fc1", "fc2")) is not None:
        producers, consumer = [(f"{name}.fc1", plain[0])], (f"{name}.fc2", plain[1])
    else:
        inner = getattr(getattr(module, "intermediate", None), "dense", None)
        outer = getattr(getattr(module, "output", None), "dense", None)
        if not (
            isinstance(inner, nn.Linear) and isinstance(outer, nn.Linear) and inner.out_features == outer.in_features
        ):
            return None
        producers, consumer = [(f"{name}.intermediate.dense", inner)], (f"{name}.output.dense", outer)
    size = producers[0][1].out_features
    return ChannelSpace(
        size, producers, consumers=[Consumer(consumer[0], consumer[1], 0, 1)], kind="neuron", bypassed=True
    )


def transformers_spaces(model: nn.Module) -> list[ChannelSpace]:
    """The heads and intermediate neurons of every block of a transformers model (see the module
    doc), in module order; an error naming the blocks it has when none is of a known kind."""
    modules = dict(model.named_modules())
    spaces = []
    for name, module in modules.items():
        parent_name = name.rpartition(".")[0]
        space = (_projection_heads(name, module) or _bert_heads(name, module, modules.get(parent_name), parent_name)
                 or _mlp_neurons(name, module))  # fmt: skip
        if space is not None:
            spaces.append(space)
    if not spaces:
        kinds = ("Attention", "MLP", "Layer", "Block")
        blocks = sorted({type(m).__name__ for m in modules.values() if any(k in type(m).__name__ for k in kinds)})
        raise PruningError(
            f"{type(model).__name__}: no attention or MLP block equiprune knows (q/k/v/o_proj, query/key/value with "
            f"output.dense, gate/up/down_proj, fc1/fc2, intermediate/output.dense); it has {blocks or 'none of them'}"
        )
    return spaces


def query_heads_per_player(space: ChannelSpace) -> int:
    """How many query heads one player of a head space holds: its output-projection columns over a
    head's rows (1 for multi-head attention, the group size for grouped-query attention)."""
    return space.consumers[0].repeat // space.row_pattern[0]


def head_budget(model: nn.Module, heads: int) -> float:
    """The budget (the fraction of head players to keep) that keeps ``heads`` query heads in all.

    A head player of grouped-query attention is a whole key/value group with its query heads, so
    only whole groups can be kept: a count that splits one is refused with the nearest counts that
    do not, instead of being rounded silently to another count."""
    spaces = [s for s in transformers_spaces(model) if s.kind == "head"]
    if not spaces:
        raise PruningError(f"{type(model).__name__}: no attention heads found to budget")
    groups = [(query_heads_per_player(s), s.size) for s in spaces]
    total = sum(per * n for per, n in groups)
    sizes = {per for per, _ in groups}
    if len(sizes) != 1:
        raise PruningError(f"{type(model).__name__}: layers group their query heads differently ({sorted(sizes)}); "
                           "give the budget as a fraction of key/value groups instead")  # fmt: skip
    per = sizes.pop()
    if not 0 < heads <= total:
        raise PruningError(f"head budget {heads}: {type(model).__name__} has {total} query heads; keep 1 to {total}")
    if heads % per:
        low, high = heads - heads % per, heads - heads % per + per
        nearest = " or ".join(str(c) for c in (low, high) if 0 < c <= total)
        raise PruningError(
            f"head budget {heads} breaks grouped-query attention in {type(model).__name__}: its query heads share "
            f"key/value heads in groups of {per}, so only whole groups can go; the nearest valid counts are {nearest}"
        )
    return heads / total

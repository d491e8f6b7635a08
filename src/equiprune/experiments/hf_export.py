"""Pruned transformers models saved in their own format (``save_pretrained``) and loaded back.

A compacted model's layers no longer have the sizes its config describes (heads and intermediate
neurons differ from layer to layer, which transformers' configs cannot say). :func:`save_pruned`
writes the model with ``save_pretrained`` and records in config.json, under
``equiprune_pruned_layers``, every Linear layer whose shape differs from what the config builds
and the head counts each attention kept. :func:`load_pruned` builds the class the config names,
narrows those layers and loads the weights. A model saved unpruned loads with transformers alone
(``AutoModel.from_pretrained(dir)``); a pruned one needs ``load_pruned``, since transformers builds
every layer at the config's size.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import torch.nn as nn

from equiprune.errors import DataError
from equiprune.extras import require_extra

#: the key of config.json that holds what differs from the config's own sizes
PRUNED_LAYERS_KEY = "equiprune_pruned_layers"
#: attributes the compaction sets on an attention module to the heads it kept
HEAD_COUNTS = ("num_attention_heads", "num_key_value_heads")


def transformers_module():
    """The transformers package, or an error saying how to install it (it is an optional extra)."""
    return require_extra("hf", "a Hugging Face model", "transformers")


def _fresh(model_class, config) -> nn.Module:
    """The model as its config builds it (random weights; only the shapes are read)."""
    config = config.__class__.from_dict({k: v for k, v in config.to_dict().items() if k != PRUNED_LAYERS_KEY})
    return model_class(config)


def pruned_layers(model: nn.Module) -> dict:
    """What differs in ``model`` from the model its config builds: Linear shapes and head counts."""
    fresh = dict(_fresh(type(model), model.config).named_modules())
    linear, heads = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and tuple(module.weight.shape) != tuple(fresh[name].weight.shape):
            linear[name] = {"out": module.out_features, "in": module.in_features, "bias": module.bias is not None}
        counts = {a: getattr(module, a) for a in HEAD_COUNTS if isinstance(getattr(module, a, None), int)}
        if any(getattr(fresh[name], a, None) != v for a, v in counts.items()):
            heads[name] = counts
    return {"linear": linear, "heads": heads}


def save_pruned(model: nn.Module, directory: str | Path) -> Path:
    """``model.save_pretrained(directory)`` with the layer sizes :func:`load_pruned` needs."""
    layers = pruned_layers(model)
    pruned = bool(layers["linear"] or layers["heads"])
    if pruned:  # an unpruned model's config.json stays transformers' own
        setattr(model.config, PRUNED_LAYERS_KEY, layers)
    # weights under the modules' own names (transformers 5 would otherwise rename some families'
    # keys to their older layout, which only its own loader maps back)
    own_names = "save_original_format" in inspect.signature(model.save_pretrained).parameters
    try:
        model.save_pretrained(directory, **({"save_original_format": False} if own_names else {}))
    finally:
        if pruned:
            delattr(model.config, PRUNED_LAYERS_KEY)
    return Path(directory)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if index.is_file():  # sharded
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise DataError(f"{directory} holds no model weights (model.safetensors or its index); save the model "
                        "with equiprune.experiments.hf_export.save_pruned or save_pretrained")  # fmt: skip
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(directory / name))
    return state


def load_pruned(directory: str | Path) -> nn.Module:
    """The model :func:`save_pruned` wrote into ``directory``, its layers at their pruned sizes."""
    transformers = transformers_module()
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise DataError(f"{directory} has no config.json: not a directory save_pretrained wrote")
    config = transformers.AutoConfig.from_pretrained(directory)
    state = _weights(directory)
    architecture = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, architecture or "", None)
    if model_class is None:
        raise DataError(f"{directory}/config.json names no transformers class equiprune can build ({architecture!r})")
    layers = getattr(config, PRUNED_LAYERS_KEY, None) or {"linear": {}, "heads": {}}
    model = _fresh(model_class, config)
    for name, shape in layers["linear"].items():
        parent, _, child = name.rpartition(".")
        narrow = nn.Linear(shape["in"], shape["out"], bias=shape["bias"])
        setattr(model.get_submodule(parent) if parent else model, child, narrow)
    for name, counts in layers["heads"].items():
        for attribute, value in counts.items():
            setattr(model.get_submodule(name), attribute, value)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    untied = [k for k in missing if k not in tied and not any(k.endswith(t) for t in tied)]
    if untied or unexpected:
        raise DataError(f"{directory}: the weights do not fit {architecture} (missing {untied[:5]}, unexpected "
                        f"{unexpected[:5]})")  # fmt: skip
    if missing:
        model.tie_weights()
    return model.eval()

"""Models by name. Each builder returns a plain ``nn.Module``; ``@MODELS.register`` adds one."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn as nn

from .errors import ConfigError
from .registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
}


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.activation: unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _classifier(width: int, hidden: Sequence[int], act: type[nn.Module], num_classes: int) -> list[nn.Module]:
    """Linear + activation per hidden width from ``width`` inputs, then a Linear to the classes."""
    if any(int(h) < 1 for h in hidden):
        raise ConfigError(f"model.hidden: every width must be >= 1, got {list(hidden)}")
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, int(h)), act()]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return layers


@MODELS.register("mlp")
def mlp(
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    hidden: Sequence[int] = (512, 256),
    activation: str = "relu",
) -> nn.Sequential:
    """Flatten, then Linear + activation per hidden width, then a Linear classifier.

    The paper's MNIST network is ``mlp(hidden=(512, 256))``: 784-512-256-10.
    """
    width = 1
    for d in input_shape:
        width *= int(d)
    return nn.Sequential(nn.Flatten(), *_classifier(width, hidden, _activation(activation), num_classes))


@MODELS.register("lenet5")
def lenet5(
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    hidden: Sequence[int] = (120, 84),
    activation: str = "relu",
) -> nn.Sequential:
    """LeNet-5: conv 6@5×5 (padded for 28×28 inputs) → max-pool → conv 16@5×5 → max-pool → two
    fully connected layers (``hidden``, 120 and 84 by default) → classifier. For 32×32 inputs the
    first convolution is unpadded, as in the original."""
    act = _activation(activation)
    channels, size = int(input_shape[0]), int(input_shape[-1])
    if size not in (28, 32) or int(input_shape[-2]) != size:
        raise ConfigError(f"model lenet5 takes 28×28 or 32×32 images, got input shape {tuple(input_shape)}")
    features: list[nn.Module] = [
        nn.Conv2d(channels, 6, 5, padding=2 if size == 28 else 0), act(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), act(), nn.MaxPool2d(2), nn.Flatten(),
    ]  # fmt: skip
    return nn.Sequential(*features, *_classifier(16 * 5 * 5, hidden, act, num_classes))


def create_model(name: str, **kwargs) -> nn.Module:
    return MODELS.get(name, "model.name")(**kwargs)

"""Models by name. Each builder returns a plain ``nn.Module``; ``@MODELS.register`` adds one."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from equiprune.errors import ConfigError
from equiprune.layers import MultiHeadSelfAttention
from equiprune.registry import Registry

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


def _scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, at least 1."""
    if not width > 0:
        raise ConfigError(f"model.width: must be > 0, got {width!r}")
    return max(1, round(channels * width))


def _conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and a residual sum; a 1×1 convolution (with BatchNorm)
    on the shortcut where the shape changes (the "option B" shortcut, which keeps the sum's
    channels prunable as one coupled group)."""

    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, stride)
        self.act1 = act()
        self.conv2, self.bn2 = _conv_bn(cout, cout)
        self.shortcut = (
            nn.Sequential(*_conv_bn(cin, cout, stride, kernel=1)) if stride != 1 or cin != cout else nn.Identity()
        )
        self.act2 = act()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet (He et al., 2016, section 4.2): a 3×3 stem, three stages of
    ``blocks`` basic blocks at 16, 32 and 64 channels (times ``width``), global average pooling
    and a linear classifier."""

    def __init__(self, blocks: int, in_channels: int, num_classes: int, width: float, act: type[nn.Module]):
        super().__init__()
        widths = [_scaled(c, width) for c in (16, 32, 64)]
        self.conv1, self.bn1 = _conv_bn(in_channels, widths[0])
        self.act1 = act()
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and b == 0) else 1, act))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


@MODELS.register("resnet20")
def resnet20(
    input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, width: float = 1.0, activation: str = "relu"
) -> ResNet:
    """ResNet-20 for 32×32 (or 28×28) images: 3 blocks per stage, 0.27 M parameters at width 1."""
    return ResNet(3, int(input_shape[0]), num_classes, width, _activation(activation))


@MODELS.register("resnet56")
def resnet56(
    input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, width: float = 1.0, activation: str = "relu"
) -> ResNet:
    """ResNet-56: 9 blocks per stage."""
    return ResNet(9, int(input_shape[0]), num_classes, width, _activation(activation))


VGG_LAYOUTS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _vgg(layout: str, input_shape: Sequence[int], num_classes: int, width: float, activation: str) -> nn.Sequential:
    """The CIFAR variant of VGG: 3×3 convolutions with BatchNorm, five max-pools (ceil mode, so
    28×28 inputs work too) down to 1×1, and one linear classifier."""
    act = _activation(activation)
    layers: list[nn.Module] = []
    cin = int(input_shape[0])
    for item in VGG_LAYOUTS[layout]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            cout = _scaled(int(item), width)
            layers += [*_conv_bn(cin, cout), act()]
            cin = cout
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin, num_classes))


@MODELS.register("vgg11")
def vgg11(
    input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, width: float = 1.0, activation: str = "relu"
) -> nn.Sequential:
    """VGG-11 (CIFAR variant, with BatchNorm)."""
    return _vgg("vgg11", input_shape, num_classes, width, activation)


@MODELS.register("vgg16")
def vgg16(
    input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, width: float = 1.0, activation: str = "relu"
) -> nn.Sequential:
    """VGG-16 (CIFAR variant, with BatchNorm)."""
    return _vgg("vgg16", input_shape, num_classes, width, activation)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp: int, act: type[nn.Module]):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), MultiHeadSelfAttention(dim, heads)
        self.norm2, self.fc1, self.act, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, mlp), act(), nn.Linear(mlp, dim)

    def forward(self, x):
        # Each residual sum adds into its branch's fresh output in place (nothing saved for backward
        # reads it): one activation-sized allocation less per sum, which on a CPU is a large part of
        # what these memory-bound sums cost, and more so once pruning has shrunk the branches.
        x = self.attn(self.norm1(x)).add_(x)
        return self.fc2(self.act(self.fc1(self.norm2(x)))).add_(x)


class ViT(nn.Module):
    """A small vision transformer: non-overlapping ``patch``×``patch`` patches embedded by a Linear
    layer, learned position embeddings, ``depth`` pre-norm blocks, mean pooling over tokens and a
    linear classifier. Players: each block's attention heads and MLP hidden units."""

    def __init__(self, input_shape, num_classes, patch, dim, depth, heads, mlp, act):
        super().__init__()
        c, h, w = (int(v) for v in input_shape)
        if h % patch or w % patch:
            raise ConfigError(f"model vit: patch size {patch} does not divide the {h}×{w} input")
        self.patch, self.tokens = patch, (h // patch) * (w // patch)
        self.embed = nn.Linear(c * patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, self.tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp, act) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.patch
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, self.tokens, c * p * p)
        x = self.blocks(self.embed(patches).add_(self.pos))
        return self.head(self.norm(x).mean(dim=1))


@MODELS.register("vit")
def vit(
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    patch: int = 4,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp: int = 128,
    activation: str = "gelu",
) -> ViT:
    """A small ViT for 28×28 (49 patches of 4×4) and 32×32 (64 patches) images: 0.2 M parameters."""
    return ViT(input_shape, num_classes, patch, dim, depth, heads, mlp, _activation(activation))


def create_model(name: str, **kwargs) -> nn.Module:
    """The model called ``name``; a setting it does not take is a ConfigError naming the ones it does."""
    builder = MODELS.get(name, "model.name")
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"model {name!r} has no setting {', '.join(map(repr, unknown))}; it takes {sorted(accepted)}")
    return builder(**kwargs)

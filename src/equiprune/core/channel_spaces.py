"""What the channel-dependency analysis (:mod:`equiprune.core.tracing`) finds: spaces of channels
that must be removed together, and the layers that produce, follow and consume them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn


def input_width(module: nn.Linear | nn.Conv2d) -> int:
    """How many input features (Linear) or channels (Conv2d) a layer reads."""
    return module.in_channels if isinstance(module, nn.Conv2d) else module.in_features


@dataclass
class Consumer:
    """A layer reading ``size`` channels of a space at input feature ``offset``, each ``repeat`` times."""

    name: str
    module: nn.Module
    offset: int
    repeat: int

    @property
    def width(self) -> int:
        """All the input features the layer reads (this space's and any other's)."""
        return input_width(self.module)


@dataclass
class Follower:
    """A channel-wise layer (BatchNorm) holding one statistic per channel, from ``offset`` on."""

    name: str
    module: nn.Module
    offset: int


@dataclass
class ChannelSpace:
    """Channels that must be removed together, with every layer removing them touches."""

    size: int
    producers: list[tuple[str, nn.Module]] = field(default_factory=list)
    followers: list[Follower] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    between: list[nn.Module] = field(default_factory=list)  # element-wise modules on the way
    fixed: bool = False
    blocked: list[str] = field(default_factory=list)  # why it cannot be pruned
    # Attention heads: a player owns ``repeat`` consecutive rows of each of ``tile`` blocks of its
    # producer's rows (query, key, value), and ``resize`` names module attributes counting players.
    row_pattern: tuple[int, int] = (1, 1)
    resize: list[tuple[str, str]] = field(default_factory=list)
    kind: str | None = None
    #: every consumer writes into a sum with another path (a residual branch): the signal survives
    #: the loss of every channel of this space
    bypassed: bool = False
    summed: bool = False  # added to another tensor (a residual sum)

    @property
    def producer_names(self) -> list[str]:
        return [n for n, _ in self.producers]

"""Pruning methods behind one interface (:class:`Method`), found by name in :data:`METHODS`."""

from __future__ import annotations

from typing import Any

from equiprune.methods import (  # noqa: F401  (register the methods)
    concave_mask,
    continuous,
    equilibrium,
    lomp,
    scratch,
    soft_sparsifiers,
    structured,
    tickets,
    unstructured,
)
from equiprune.methods.base import METHODS, Dense, Method


def build_method(
    name: str,
    preset: str | None = None,
    settings: dict[str, Any] | None = None,
    exclude: tuple[str, ...] = (),
    players: str | None = None,
) -> Method:
    """The method called ``name``, its preset applied and its settings validated field by field;
    ``players`` restricts it to one player kind (see ``equiprune.core.players.PLAYER_KINDS``)."""
    return METHODS.get(name, "method.name").from_config(preset, settings or {}, exclude, players)


__all__ = ["METHODS", "Method", "Dense", "build_method"]

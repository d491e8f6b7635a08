"""What tools/claims.py and its per-paper builders share: a claim row and its formatting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from equiprune.experiments.comparison import CPU_SHIFT

#: How a claim's tie rule ends when it passes ``judge`` the floor :data:`CPU_SHIFT`.
CPU_FLOOR = f"or {100 * CPU_SHIFT:g} points, what another CPU moves them"


@dataclass
class Claim:
    paper: str  # a key of PAPERS
    claim: str  # the paper's claim, in its words or close to them
    figure: str  # what we measured
    command: str  # what measured it
    verdict: str  # "holds", "does not hold", "not measured yet", "not a measurable claim"
    why: str = ""  # what decides the verdict, or why there is none


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _mean_pm(d: dict[str, Any], key: str) -> str:
    return f"{_pct(d[f'{key}_mean'])} ± {_pct(d[f'{key}_std'])}"


def _holds(ok: bool) -> str:
    return "holds" if ok else "does not hold"

"""One way to summarise seeds and one rule to judge two methods, shared by sweep reports and
paper reproductions, so that a 'tie' means the same thing wherever equiprune says it."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Literal

#: The tie rule in words, for reports to print beside their verdicts.
TIE_RULE = "a tie means the means differ by at most one standard deviation (the larger of the two)"

Verdict = Literal["win", "tie", "loss"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


#: How far a mean test accuracy may move on another CPU, with the same code and seeds (its kernels sum
#: in another order): 0.3 points. Re-run on a second machine, the MNIST lottery study's cells moved by
#: up to 0.19 points and two of its claims' verdicts flipped on margins of 0.01 to 0.06 points
#: (docs/research/2026-12-04-lottery-on-another-cpu.md). A published verdict passes it as ``floor``.
CPU_SHIFT = 0.003


def judge(mean: float, std: float, other_mean: float, other_std: float, floor: float = 0.0) -> Verdict:
    """Whether (mean ± std) wins, ties or loses against (other_mean ± other_std): see :data:`TIE_RULE`;
    with ``floor`` (such as :data:`CPU_SHIFT`), a difference of at most ``floor`` is a tie too."""
    diff = mean - other_mean
    if abs(diff) <= max(std, other_std, floor):
        return "tie"
    return "win" if diff > 0 else "loss"


#: When a measured row reproduces a paper's (single-run) row, in words.
REPRODUCTION_RULE = (
    "a row holds when our mean test accuracy is at least the paper's minus 1 point and our mean kept "
    "fraction at most the paper's × 1.25 plus 0.5 points"
)


def reproduces(accuracy: float, kept: float, paper_accuracy: float, paper_kept: float) -> bool:
    """Whether a measured (accuracy, kept fraction) reproduces a paper's: see :data:`REPRODUCTION_RULE`."""
    return accuracy >= paper_accuracy - 0.01 and kept <= 1.25 * paper_kept + 0.005

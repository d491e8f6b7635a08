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


def judge(mean: float, std: float, other_mean: float, other_std: float) -> Verdict:
    """Whether (mean ± std) wins, ties or loses against (other_mean ± other_std): see :data:`TIE_RULE`."""
    diff = mean - other_mean
    if abs(diff) <= max(std, other_std):
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

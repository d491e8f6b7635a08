"""tools/limit_factors.py: the rank correlation against a naive reference, and the per-case
configuration it writes."""

import itertools
import runpy
from pathlib import Path

import pytest
import torch

from equiprune.config import load_config
from equiprune.core.scorers import mean_ranks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lf():
    return runpy.run_path(str(ROOT / "tools" / "limit_factors.py"))


def naive_spearman(a, b):
    """Spearman's ρ without ties: 1 − 6Σd²/(n(n²−1)), the ranks from a double argsort."""
    n = len(a)
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return 1 - 6 * float(((ra - rb) ** 2).sum()) / (n * (n * n - 1))


def test_spearman_matches_the_textbook_formula_without_ties(lf):
    torch.manual_seed(0)
    for n in (3, 4, 7):
        a, b = torch.randn(n).tolist(), torch.randn(n).tolist()
        assert lf["spearman"](a, b) == pytest.approx(naive_spearman(a, b))
    assert lf["spearman"]([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert lf["spearman"]([1, 2, 3], [5, 5, 5]) is None


def test_tied_values_share_their_mean_rank(lf):
    def ranks(values):
        return mean_ranks(torch.tensor(values, dtype=torch.float64)).tolist()

    assert ranks([0.3, 0.1, 0.3, 0.2]) == [2.5, 0.0, 2.5, 1.0]
    # with ties, ρ is Pearson's correlation of those ranks
    a, b = [0.3, 0.1, 0.3, 0.2], [1.0, 2.0, 3.0, 4.0]
    ra, rb = torch.tensor(ranks(a)), torch.tensor(ranks(b))
    assert lf["spearman"](a, b) == pytest.approx(float(torch.corrcoef(torch.stack([ra, rb]))[0, 1]))
    for perm in itertools.permutations([1.0, 2.0, 2.0]):
        assert sorted(ranks(list(perm))) == [0.0, 1.5, 1.5]


def test_each_case_is_the_base_configuration_with_its_own_l1(lf, tmp_path):
    base = ROOT / "configs" / "limit" / "fc_mnist_factors.toml"
    path = lf["case_config"](base, 2e-05, tmp_path / "case")
    cfg, original = load_config(path), load_config(base)
    assert cfg.method.settings.l1 == 2e-05
    assert cfg.model == original.model and cfg.train == original.train and cfg.limit == original.limit
    bad = tmp_path / "bad.toml"
    bad.write_text("[method]\nname = 'lomp'\n")
    with pytest.raises(SystemExit, match="exactly one `l1 = ...` line"):
        lf["case_config"](bad, 1e-5, tmp_path / "x")

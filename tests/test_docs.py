"""The docs stay true to the code: the configuration reference is what the code generates, and every
relative link in the README and docs/ leads to a file that exists."""

import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_configuration_reference_is_what_the_code_generates():
    tool = runpy.run_path(str(ROOT / "tools" / "config_reference.py"))
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == tool["page"](), (
        "docs/configuration.md is out of date: run python tools/config_reference.py"
    )


def test_the_reference_names_every_method_and_setting():
    from equiprune.methods import METHODS

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in METHODS.names():
        assert f"### `{name}`" in text
    assert "| `anchored` | bool | `False` |" in text and "| `train.finetune_epochs` | int | `0` |" in text


def test_every_relative_link_in_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_quickstarts_python_example_runs_on_a_users_own_model_and_loader():
    import torch
    import torch.nn as nn

    page = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    example = page.split("## From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 12), torch.randint(0, 3, (64,)))
    model = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 3))
    names = {"model": model, "loader": torch.utils.data.DataLoader(data, batch_size=16, shuffle=True), "epochs": 1}
    exec(compile(example, "docs/quickstart.md", "exec"), names)
    small = names["small"]
    assert isinstance(small, nn.Sequential) and small[0].out_features == 2  # 5% of 40 neurons
    assert small(torch.randn(2, 12)).shape == (2, 3)

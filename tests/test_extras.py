"""Optional dependencies: one error for every missing extra, naming what needs it and how to install it."""

from __future__ import annotations

import json
import sys

import pytest
import torch.nn as nn

from equiprune.errors import ConfigError, EquipruneError
from equiprune.experiments.export import save_onnx
from equiprune.extras import require_extra


def test_an_installed_module_is_returned_the_last_named():
    assert require_extra("dev", "a test", "math", "json") is json


def test_a_missing_module_names_itself_what_needs_it_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "not_a_package_here", None)
    with pytest.raises(ConfigError) as raised:
        require_extra("thing", "log.thing", "json", "not_a_package_here", error=ConfigError)
    assert str(raised.value) == (
        "log.thing needs the thing extra (not_a_package_here is not installed): pip install 'equiprune[thing]'"
    )
    with pytest.raises(ValueError, match="at least one module"):
        require_extra("thing", "log.thing")


def test_onnx_export_without_onnxscript_says_what_to_install_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    target = tmp_path / "model.onnx"
    with pytest.raises(EquipruneError, match=r"ONNX export needs the onnx extra \(onnxscript is not installed\)"):
        save_onnx(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (1, 2, 2), target)
    assert list(tmp_path.iterdir()) == []

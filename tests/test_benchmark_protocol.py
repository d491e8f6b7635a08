"""The benchmark protocol: sides timed in alternation with the order reversed every other round,
ratios taken round by round, and results appended as whole JSON lines."""

import json
import sys
from pathlib import Path

import pytest

from equiprune.experiments.timing import interleave, paired_ratios

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import protocol  # noqa: E402  (the benchmarks' shared module, not a package)


def test_sides_alternate_and_the_order_flips_every_round():
    calls = []
    times = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert {name: len(t) for name, t in times.items()} == {"a": 4, "b": 4}
    assert all(t >= 0 for ts in times.values() for t in ts)
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        interleave({"a": lambda: None}, repeats=0)


def test_ratios_are_taken_round_by_round():
    summary = paired_ratios([1.0, 3.0, 2.0], [2.0, 2.0, 1.0])
    assert summary == {"median": 1.5, "min": 0.5, "max": 2.0, "rounds": 3}
    with pytest.raises(ValueError):
        paired_ratios([1.0, 2.0], [1.0])


def test_records_are_appended_as_one_json_line_each(tmp_path, capsys):
    path = tmp_path / "bench" / "results.jsonl"
    machine = protocol.print_machine()
    assert "torch threads" in capsys.readouterr().out
    protocol.record(path, "first", machine, {"ratio": 0.5})
    protocol.record(path, "second", machine, {"ratio": 0.7})
    protocol.record(None, "not written", machine, {})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["benchmark"] for line in lines] == ["first", "second"]
    entry = json.loads(lines[1])
    assert entry["figures"] == {"ratio": 0.7}
    assert entry["machine"]["cores"] == machine["cores"]


def test_models_are_timed_in_alternating_order_round_by_round():
    from torch import nn

    from equiprune.experiments.timing import interleaved_timings

    order = []

    class Probe(nn.Linear):
        def forward(self, x):
            order.append(self.tag)
            return super().forward(x)

    a, b = Probe(3, 2), Probe(3, 2)
    a.tag, b.tag = "a", "b"
    times = interleaved_timings({"a": a, "b": b}, (3,), batch_size=2, repeats=1, rounds=3)
    # each latency_ms call runs 3 warm-up passes and 1 timed one
    assert order == ["a"] * 4 + ["b"] * 4 + ["b"] * 4 + ["a"] * 4 + ["a"] * 4 + ["b"] * 4
    assert [len(t) for t in times.values()] == [3, 3]


def test_a_device_this_machine_lacks_is_a_usage_error_naming_what_it_has(monkeypatch, capsys):
    import argparse

    import torch

    parser = argparse.ArgumentParser(prog="bench")
    protocol.add_device_argument(parser)
    assert protocol.checked_device(parser, parser.parse_args([]).device) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        protocol.checked_device(parser, parser.parse_args(["--device", "cuda"]).device)
    assert "--device cuda: torch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        protocol.checked_device(parser, parser.parse_args(["--device", "meta"]).device)
    assert "run on cpu or cuda" in capsys.readouterr().err


def test_gpu_work_is_waited_for_on_both_sides_of_every_timed_call(monkeypatch):
    """CUDA returns before the work is done: a clock read without a synchronisation times the
    launch. Every timed call is bracketed by one (recorded here in place of the real one)."""
    import torch

    from equiprune.experiments.timing import call_ms

    events = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append("sync"))
    interleave({"a": lambda: events.append("a"), "b": lambda: events.append("b")}, repeats=2)
    assert events == [e for side in "abba" for e in ("sync", side, "sync")]
    events.clear()
    call_ms(lambda: events.append("call"), repeats=2, warmup=1)
    assert events == ["call"] + ["sync", "call", "sync"] * 2


def test_step_benchmarks_share_one_timing_of_warmed_interleaved_blocks(monkeypatch):
    import reparam_step  # the helpers lottery_cost.py uses too

    steps = []
    monkeypatch.setattr(reparam_step, "make_step", lambda name, x, y: lambda: steps.append(name))
    times = reparam_step.time_steps((None, "imp"), rounds=3, steps=2)
    assert set(times) == {"plain", "imp"} and all(len(t) == 3 for t in times.values())
    assert len(steps) == 2 * (1 + 3) * 2  # two sides, a warm-up block and three rounds, two steps a block
    assert reparam_step.median_step_ms([0.004, 0.002, 0.006], steps=2) == 2.0
    monkeypatch.setattr(sys, "argv", ["reparam_step.py", "--rounds", "0"])
    with pytest.raises(SystemExit):
        reparam_step.step_arguments("Time steps.\n")

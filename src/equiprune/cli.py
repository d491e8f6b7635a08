"""The ``equiprune`` command: thin over the library, it parses, calls and prints."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import EquipruneError


def _cmd_run(args) -> int:
    from .config import load_config
    from .train import run

    cfg = load_config(args.config)
    results = run(cfg, args.out, resume=args.resume, quiet=args.quiet)
    print(json.dumps(results, indent=2))
    return 0


def _cmd_reproduce(args) -> int:
    from .reproduce import SUITES, reproduce

    if args.suite not in SUITES:
        raise EquipruneError(f"unknown suite {args.suite!r}; expected one of {sorted(SUITES)}")
    summary = reproduce(args.suite, args.out, seeds=args.seeds, quiet=args.quiet)
    print(summary.markdown)
    print(f"wrote {summary.json_path} and {summary.md_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="equiprune", description="Equilibrium-driven pruning of PyTorch networks.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train, prune and compact one configuration into a run directory")
    r.add_argument("config", help="a TOML run configuration")
    r.add_argument("--out", required=True, help="the run directory to write")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    r.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    r.set_defaults(func=_cmd_run)

    rp = sub.add_parser("reproduce", help="run a paper's experiments and summarise them beside its figures")
    rp.add_argument("suite", help="which experiments, e.g. game-mnist")
    rp.add_argument("--out", required=True, help="directory for the runs and summary.json / summary.md")
    rp.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    rp.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    rp.set_defaults(func=_cmd_reproduce)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EquipruneError as exc:
        print(f"equiprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("equiprune: interrupted; continue with the same command and --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

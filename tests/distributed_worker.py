"""Started by torchrun from tests/test_distributed.py: runs each configuration of a JSON list
({"config": TOML text, "out": directory}) in one process group, and records on every rank the
trained model's state (weights, gates, masks) after every epoch in OUT/states-rank<r>.pt.

``--die-rank R --die-after N``: rank R leaves with status 3 once every rank has finished epoch N
of the first run (after rank 0 wrote that epoch's checkpoint), as a killed process would."""

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

from equiprune.config import parse_config
from equiprune.experiments.distributed import process_group
from equiprune.experiments.hooks import RunHook
from equiprune.experiments.loop import run


class RecordStates(RunHook):
    def __init__(self, die_rank: int | None, die_after: int | None):
        self.states, self.die_rank, self.die_after = [], die_rank, die_after

    def on_epoch_end(self, trainer, st, row):
        model = trainer.trained if st.phase == "prune" else st.result.model
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if self.die_after is not None and st.epoch == self.die_after:
            dist.barrier()  # rank 0 has written this epoch's checkpoint
            if trainer.rank == self.die_rank:
                sys.stdout.flush()
                os._exit(3)

    def on_finish(self, trainer, st, results):
        torch.save(self.states, os.path.join(trainer.run_dir.path, f"states-rank{trainer.rank}.pt"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--die-rank", type=int)
    parser.add_argument("--die-after", type=int)
    args = parser.parse_args()
    with open(args.runs) as f:
        runs = json.load(f)
    with process_group("cpu"):
        for i, spec in enumerate(runs):
            die = (args.die_rank, args.die_after) if i == 0 else (None, None)
            run(parse_config(spec["config"]), spec["out"], resume=args.resume, quiet=True, hooks=[RecordStates(*die)])


if __name__ == "__main__":
    main()

"""Run arms of the protocol from the command line (the notebooks call the same functions):

    python -m kl_utils.run --profile cpu --arms baseline sam --seeds 0 1 2 [--threads 1]

Arms are defined under `arms:` in the profile (overrides of its `cpt` / `it` settings). Each
(arm, seed) writes results/<profile>/runs/<arm>-s<seed>-<config hash>.json; a run whose record
already exists is skipped. Two processes with one thread each use 2 cores better than one
process with two threads (PROBE.md), e.g. `--seeds 0 2` and `--seeds 1` side by side.
"""
from __future__ import annotations

import argparse
import sys

import torch

from kl_utils import experiment, records
from kl_utils.config import load_config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run arms of the knowledge-learning protocol.")
    ap.add_argument("--profile", default=None, help="profile name (default: KL_PROFILE or cpu)")
    ap.add_argument("--arms", nargs="+", default=["baseline"])
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the profile's seeds")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    profile, cfg = load_config(args.profile)
    for arm in args.arms:
        try:
            experiment.arm_spec(cfg, arm, 0)
        except ValueError as err:
            ap.error(str(err))
    if args.threads:
        cfg["threads"] = args.threads
        torch.set_num_threads(args.threads)
    ds, tok, _ = experiment.prepare_data(profile, cfg)
    done = {r["run_id"] for r in records.load_run_records(profile, kind="arm")}
    for arm in args.arms:
        for seed in args.seeds if args.seeds is not None else cfg["seeds"]:
            if experiment.arm_spec(cfg, arm, seed)[2] in done:
                print(f"{arm} seed {seed}: record exists, skipped")
                continue
            experiment.run_arm(profile, cfg, ds, tok, arm=arm, seed=seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

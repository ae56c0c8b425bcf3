"""`make bench`: speed figures measured side by side in one run, printed as a table and written
to results/bench.json (one key per figure). Ratios, not absolute times, are the targets: they
are what survives a change of machine.

    python -m kl_utils.bench [--steps N] [--threads T]
"""
from __future__ import annotations

import argparse
import time

from kl_utils import bench_sam
from kl_utils.paths import ROOT
from kl_utils.records import atomic_write_json, environment

TARGETS = {"sam_over_adamw": 2.05, "efficient_sam_over_adamw": 1.3}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=48, help="timed updates per method")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    t0 = time.time()
    sam = bench_sam.run(n_steps=args.steps, threads=args.threads)
    figures = {key: sam[key] for key in ("sam_over_adamw", "efficient_sam_over_adamw", "adamw_s_per_update",
                                         "sam_s_per_update")}
    figures["efficient_sam_mode"] = sam["efficient_mode"]
    print(f"\n{'figure':<28}{'value':>10}{'target':>10}  verdict")
    for key, value in figures.items():
        if isinstance(value, float):
            target = TARGETS.get(key)
            verdict = "" if target is None else ("ok" if value <= target else "MISSED")
            print(f"{key:<28}{value:>10.3f}{'' if target is None else f'<= {target}':>10}  {verdict}")
    out = {**figures, "targets": TARGETS, "sam_bench_config": sam["config"], "env": environment(),
           "wall_time_s": round(time.time() - t0, 1)}
    atomic_write_json(ROOT / "results" / "bench.json", out)
    print(f"\nwritten to results/bench.json ({out['wall_time_s']} s)")
    return out


if __name__ == "__main__":
    main()

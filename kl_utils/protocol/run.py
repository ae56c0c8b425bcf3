"""The experiment runner: a grid of (arm, seed) runs, each identified by the hash of its config.

    python -m kl_utils run --profile cpu --grid main [--workers 2]
    python -m kl_utils run --profile cpu --arms baseline sam --seeds 0 1 2

A grid is a list of blocks `{arms: [...], seeds: [...]}` under `grids:` in the profile; arms are
overrides of its cpt / it settings under `arms:` (see arms.arm_spec). Finished runs (their
record exists) are skipped; an interrupted run resumes from its last checkpoint. Runs go to
`workers` processes of one thread each, largest first: two 1-thread processes get more out of two
cores than one 2-thread process (PROBE.md). One overall progress bar, weighted by each run's
estimated cost, shows the ETA.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from tqdm.auto import tqdm

from kl_utils.core import records
from kl_utils.config.arms import CONTROL_GRIDS, arm_spec, control_cells, current_arm_records, grid_cells, run_key, runs_by_key  # noqa: F401
from kl_utils.config.profiles import load_config
from kl_utils.core.command import non_negative_int, positive_int
from kl_utils.core.paths import environ
from kl_utils.core.parent_watch import die_with_parent
from kl_utils.config.schema import default


def estimated_cost(cfg: dict, ds, arm: str) -> float:
    """Relative cost of a run: example-passes of each stage (kl_utils.protocol.plan: its optimizer steps x
    batch size), doubled for SAM (two gradients per step, or 1 + 1/k in the efficient mode); QA
    pairs (IT, PIT) count a third of a document."""
    from kl_utils.protocol import experiment
    from kl_utils.protocol.plan import example_counts, stage_grads, stage_steps
    arm_cfg, _, _ = arm_spec(cfg, arm, 0)
    grads = stage_grads(arm_cfg, stage_steps(arm_cfg, example_counts(ds), experiment.baseline_steps(cfg, ds)))
    return sum(n * arm_cfg["it" if s == "pit" else s]["batch_size"] * (1.0 if s == "cpt" else 0.33)
               for s, n in grads.items())


def _run_cell(profile: str, cfg: dict, arm: str, seed: int, threads: int, commit: str | None = None) -> dict:
    """One run in a worker process (quiet: the parent's bar reports progress); its records name the
    commit the parent pinned when the grid started."""
    import torch

    from kl_utils.protocol import experiment
    records.pin_commit(commit)
    torch.set_num_threads(threads)
    cfg = dict(cfg, threads=threads)
    ds, tok, _ = experiment.prepare_data(profile, cfg)
    return experiment.run_arm(profile, cfg, ds, tok, arm=arm, seed=seed, log=lambda *a, **k: None)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Spawned worker processes that end with this process, even when it is killed (kill -9)."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))


def run_grid(profile: str, cfg: dict, cells: list[tuple[str, int]], workers: int = 2, log=print) -> list[dict]:
    """Run every cell that has no record yet; returns the arm records of all cells."""
    from kl_utils.protocol import experiment  # torch: imported once the profile has been checked
    records.pin_commit()  # records name the code this process loaded, not HEAD when they are written
    ds, tok, _ = experiment.prepare_data(profile, cfg)
    adopt_same_runs(profile, cfg, cells, log=log)
    todo = cell_records(profile, cfg, cells)[1]
    first = {}  # one run per (seed, spec): the other cells of the same run are copies of its record
    for cell in todo:
        first.setdefault(run_key(arm_spec(cfg, *cell)[2]), cell)
    twins, todo = [c for c in todo if c not in first.values()], list(first.values())
    if todo and os.environ.get("KL_NO_TRAIN"):  # a redraw (make figures): draw what has records, name the rest
        log(f"{len(todo)} of {len(cells)} runs have no record and training is off (a redraw from records): "
            f"`python -m kl_utils run --profile {profile}` or `make reproduce PROFILE={profile}` makes them")
        return sorted(cell_records(profile, cfg, cells)[0], key=lambda r: r["run_id"])
    if todo:  # bf16 named on a CPU without it: one line before any training (kl_utils.core.precision)
        from kl_utils.core import precision
        device = precision.default_device_type()
        for arm, seed in todo:
            arm_cfg = arm_spec(cfg, arm, seed)[0]
            if any(precision.warn_slow_bf16(precision.resolve(arm_cfg[s].get("mixed_precision"), device), device,
                                            where=f"profile {profile}:") for s in ("cpt", "it")):
                break
    if todo and cfg["base"].get("enabled", default("base.enabled")):  # once, with all threads, before the workers need it
        experiment.base_model(profile, cfg, ds, tok, log=log)
    log(f"{len(cells) - len(todo)} of {len(cells)} runs already have records; {len(todo)} to run "
        f"with {workers} worker(s)")
    cost = {arm: estimated_cost(cfg, ds, arm) for arm in {a for a, _ in todo}}
    todo.sort(key=lambda cell: -cost[cell[0]])  # largest first: the workers finish together
    t0 = time.time()
    bar = tqdm(total=round(sum(cost[a] for a, _ in todo)), desc=f"{profile} grid", unit="ex",
               disable=not todo or None)
    if workers <= 1:
        # A run's arithmetic must not depend on --workers (float reductions differ with the thread
        # count): where the profile's grids run in 1-thread workers, a run in this process uses 1
        # thread too -- and two such runners side by side do not oversubscribe the cores.
        run_cfg = dict(cfg, threads=1) if cfg.get("workers", 1) > 1 else cfg
        for arm, seed in todo:
            experiment.run_arm(profile, run_cfg, ds, tok, arm=arm, seed=seed, log=log)
            bar.update(round(cost[arm]))
    elif todo:
        # tqdm reads TQDM_DISABLE when it is imported, so the workers must inherit it from their
        # start: their per-stage bars would otherwise interleave with the grid bar.
        with environ(TQDM_DISABLE="1"), worker_pool(workers) as pool:
            futures = {pool.submit(_run_cell, profile, cfg, arm, seed, 1, records.pin_commit()): (arm, seed) for arm, seed in todo}
            for fut in as_completed(futures):
                arm, seed = futures[fut]
                try:
                    res = fut.result()
                except Exception as err:
                    for f in futures:
                        f.cancel()
                    raise RuntimeError(f"run {arm} seed {seed} failed: {err}") from err
                bar.update(round(cost[arm]))
                bar.write(f"{arm} seed {seed}: test EM {res['metrics']['test_em']:.3f} "
                          f"({res['timing']['cpt_s'] + res['timing']['it_s']:.0f} s training)")
    bar.close()
    if twins:
        adopt_same_runs(profile, cfg, twins, log=log)
    if todo:
        log(f"grid finished in {time.time() - t0:.0f} s")
    return sorted(cell_records(profile, cfg, cells)[0], key=lambda r: r["run_id"])


def adopt_same_runs(profile: str, cfg: dict, cells: list[tuple[str, int]], log=print) -> list[str]:
    """Cells without a record whose run (same seed, same spec hash) was already made under another
    arm name get a copy of that record under their own run id, marked `same_run_as`: e.g. the
    `sam` arm once its rho is set to the value a `sam_rho<v>` sweep arm already ran. The run id
    hashes everything the result depends on and training is bit-identical on one machine, so
    training it again would only repeat it. Returns the run ids written."""
    have = {r["run_id"]: r for r in records.load_run_records(profile, kind="arm")}
    by_run = runs_by_key(list(have.values()))
    written = []
    for cell in cells:
        rid = arm_spec(cfg, *cell)[2]
        src = by_run.get(run_key(rid))
        if rid in have or src is None:
            continue
        rec = {**src, "run_id": rid, "arm": cell[0], "same_run_as": src["run_id"]}
        records.atomic_write_json(records.runs_dir(profile) / f"{rid}.json", rec)
        log(f"{rid}: the same run as {src['run_id']} (same seed and spec); its record copied, not retrained")
        written.append(rid)
    return written


def cell_records(profile: str, cfg: dict, cells: list[tuple[str, int]]) -> tuple[list[dict], list[tuple[str, int]]]:
    """(the records of the cells that have one, of the profile's current config; the cells without)."""
    have = {(r["arm"], r["seed"]): r for r in current_arm_records(profile, cfg)}
    return [have[c] for c in cells if c in have], [c for c in cells if c not in have]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run a grid of arms x seeds of the knowledge-learning protocol.")
    ap.add_argument("--profile", default=None, help="profile name (default: KL_PROFILE or cpu)")
    ap.add_argument("--grid", default=None, help="a named grid of the profile (grids:); default: all of them")
    ap.add_argument("--arms", nargs="+", default=None, help="instead of --grid: these arms ...")
    ap.add_argument("--seeds", nargs="+", type=non_negative_int, default=None, help="... with these seeds (default: the profile's)")
    ap.add_argument("--workers", type=positive_int, default=None, help="parallel 1-thread processes (default: profile's)")
    args = ap.parse_args(argv)
    profile, cfg = load_config(args.profile)
    try:
        if args.arms:
            cells = [(arm, seed) for arm in args.arms for seed in (args.seeds or cfg["seeds"])]
            for arm, seed in cells:
                arm_spec(cfg, arm, seed)
        else:
            cells = grid_cells(cfg, args.grid)
    except ValueError as err:
        ap.error(str(err))
    run_grid(profile, cfg, cells, workers=args.workers or cfg.get("workers", default("workers")))
    return 0


if __name__ == "__main__":
    from kl_utils.core.command import entry
    sys.exit(entry(main))

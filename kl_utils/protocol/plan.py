"""What a profile's grid would run, without training anything:

    python -m kl_utils plan --profile cpu [--grid main]

One row per (arm, seed): its run id, the optimizer steps of each stage (CPT, IT, and PIT for
order: pit), the gradient evaluations (SAM: 2 per step, 1 + 1/k with sam_every_k), whether its
record already exists, and a time (first, the precision each stage would run in on this host and, for
bf16 on a CPU without native bf16, what that costs here, measured): measured for a run with a record, else estimated from the
profile's committed arm records (median seconds per gradient evaluation of each stage, on the
machine that made them), or 'no estimate' when the profile has none. A record's time is its stages'
CPU seconds per thread where it has them (timing_cpu: not inflated while the run was paused or
shared a core), else their wall seconds (older records). The data is built (or read
from its cache) to count the examples; nothing else is computed.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys

from kl_utils.config.arms import arm_spec, grads_per_step, grid_cells, run_key, runs_by_key
from kl_utils.core.records import distinct_runs
from kl_utils.config.profiles import load_config
from kl_utils.config.schema import ProfileError, default

STAGES = ("pit", "cpt", "it")  # the order a run trains them in


def example_counts(ds) -> dict:
    """What the stages' example counts are made of: the biographies of each new person (all of
    them, and the train split's), and the train split's QA pairs."""
    rows = [(split, len(bios), len(qa)) for pop, split, bios, qa
            in zip(ds["population"], ds["split"], ds["bios"], ds["qa"]) if pop == "new"]
    return {"bios": [n for _, n, _ in rows], "train_bios": [n for s, n, _ in rows if s == "train"],
            "qa": sum(q for s, _, q in rows if s == "train")}


def _n_docs(bios: list[int], cpt_cfg: dict) -> int:
    """CPT documents (kl_utils.protocol.experiment.cpt_documents): `paraphrases` biographies a person, each
    with its k augmented copies."""
    k = (cpt_cfg.get("augmentation") or {}).get("k", 0)
    return sum(min(n, cpt_cfg.get("paraphrases", 1)) for n in bios) * (1 + k)


def stage_steps(arm_cfg: dict, counts: dict, baseline: dict | None = None) -> dict[str, int]:
    """Optimizer steps of each stage of an arm (as a run records them in `optimizer_steps`).
    baseline: the baseline's {cpt, it} steps, the budget of an arm with budget: steps."""
    from kl_utils.training.train import total_steps
    cpt, it = dict(arm_cfg["cpt"]), dict(arm_cfg["it"])
    if arm_cfg["budget"] == "steps":
        cpt["max_steps"], it["max_steps"] = baseline["cpt"], baseline["it"]
    n_it = counts["qa"] * (1 + (it.get("augmentation") or {}).get("k", 0))
    cpt_steps = total_steps(_n_docs(counts["bios"], cpt), cpt)
    if arm_cfg["order"] == "pit":  # the train half's documents with its QA pairs, then CPT, no IT
        return {"pit": total_steps(_n_docs(counts["train_bios"], cpt) + n_it, it), "cpt": cpt_steps}
    return {"cpt": cpt_steps, "it": total_steps(n_it, it)}


def stage_grads(arm_cfg: dict, steps: dict[str, int]) -> dict[str, float]:
    """Gradient evaluations of each stage (PIT trains with the IT settings)."""
    return {s: n * grads_per_step(arm_cfg["it" if s == "pit" else s]) for s, n in steps.items()}


def stage_seconds(rec: dict) -> dict[str, float]:
    """A record's training seconds of the CPT side (PIT + CPT: cpt_s) and of IT: CPU seconds per torch
    thread where the record has them (pauses and other jobs on the cores do not inflate them), else
    wall seconds. Exact for 1-thread runs; for n threads it assumes all n stayed busy, so it reads
    low by the threads' idle share (a few % at 2 threads here)."""
    if rec.get("timing_cpu"):
        threads = max(1, (rec.get("env") or {}).get("torch_threads") or 1)
        return {k: v / threads for k, v in rec["timing_cpu"].items()}
    return dict(rec.get("timing") or {})


def seconds_per_grad(records: list[dict]) -> dict[str, float]:
    """Median seconds per gradient evaluation of the CPT side (PIT + CPT: timing cpt_s) and of IT,
    over arm records that carry their timing."""
    rates = {"cpt": [], "it": []}
    for rec in distinct_runs(records):  # a copy of another run's record is not timed twice
        if rec.get("resumed_stages"):  # timed only in part
            continue
        timing, steps = stage_seconds(rec), rec.get("optimizer_steps") or {}
        grads = stage_grads(rec["config"], steps)
        cpt_side = grads.get("pit", 0) + grads.get("cpt", 0)
        if timing.get("cpt_s") and cpt_side:
            rates["cpt"].append(timing["cpt_s"] / cpt_side)
        if timing.get("it_s") and grads.get("it"):
            rates["it"].append(timing["it_s"] / grads["it"])
    return {k: statistics.median(v) for k, v in rates.items() if v}


def estimate(grads: dict[str, float], rates: dict[str, float]) -> float | None:
    cpt_side, it = grads.get("pit", 0) + grads.get("cpt", 0), grads.get("it", 0)
    if (cpt_side and "cpt" not in rates) or (it and "it" not in rates):
        return None
    return cpt_side * rates.get("cpt", 0) + it * rates.get("it", 0)


def plan_rows(profile: str, cfg: dict, cells: list[tuple[str, int]], ds) -> list[dict]:
    from kl_utils.core import records
    from kl_utils.protocol import experiment
    have = {r["run_id"]: r for r in records.load_run_records(profile, kind="arm")}
    rates = seconds_per_grad(list(have.values()))
    same_run = runs_by_key(list(have.values()))
    counts, baseline = example_counts(ds), experiment.baseline_steps(cfg, ds)
    rows = []
    for arm, seed in cells:
        arm_cfg, _, run_id = arm_spec(cfg, arm, seed)
        steps = stage_steps(arm_cfg, counts, baseline)
        grads = stage_grads(arm_cfg, steps)
        rec = have.get(run_id)
        twin = None if rec else same_run.get(run_key(run_id))  # made under another arm name: copied, not run
        measured = rec and not rec.get("resumed_stages") and stage_seconds(rec)  # a resumed run timed only its rest
        rows.append({"arm": arm, "seed": seed, "run_id": run_id, "steps": steps, "grads": grads,
                     "record": rec is not None or twin is not None, "same_run_as": twin and twin["run_id"],
                     "measured_s": measured.get("cpt_s", 0) + measured.get("it_s", 0) if measured else None,
                     "estimate_s": estimate(grads, rates)})
    return rows


def _time(s: float | None) -> str:
    if s is None:
        return "no estimate"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _steps(row: dict) -> str:
    return " + ".join(f"{s.upper()} {row['steps'][s]}" for s in STAGES if s in row["steps"])


def render(profile: str, cfg: dict, rows: list[dict], grid: str | None, base_line: str) -> str:
    header = ("arm", "seed", "run id", "optimizer steps", "grad evals", "record", "training time")
    table = [header] + [(r["arm"], str(r["seed"]), r["run_id"], _steps(r), f"{math.ceil(sum(r['grads'].values()))}",
                         f"same run as {r['same_run_as']}" if r.get("same_run_as") else "yes" if r["record"] else "no",
                         f"{_time(r['measured_s'])} (measured)" if r["measured_s"] is not None
                         else _time(r["estimate_s"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    todo = [r for r in rows if not r["record"]]
    workers = cfg.get("workers", default("workers"))
    title = f"profile {profile}, {f'grid {grid}' if grid else 'all grids'}: {len(rows)} runs"
    return "\n".join([title, base_line, *lines,
                      f"{len(rows) - len(todo)} of {len(rows)} runs have a record; {len(todo)} to run"
                      + (_total(todo, workers) if todo else ""),
                      f"all {len(rows)} from scratch{_total(rows, workers)}"])


def _total(rows: list[dict], workers: int) -> str:
    known = [r["estimate_s"] for r in rows if r["estimate_s"] is not None]
    if not known:
        return ": no estimate (no arm records of this profile to time by)"
    missing = f" ({len(rows) - len(known)} without an estimate)" if len(known) < len(rows) else ""
    return (f": estimated {_time(sum(known))} of training, about {_time(sum(known) / workers)} "
            f"on {workers} worker(s){missing}")


def base_line(profile: str, cfg: dict) -> str:
    from kl_utils.core import records
    from kl_utils.protocol import experiment
    from kl_utils.core.spec import config_hash
    from kl_utils.core.paths import cache_dir
    if cfg["model"].get("pretrained"):
        return f"no base stage: the pretrained model {cfg['model']['pretrained']} is the base"
    if not cfg["base"].get("enabled", default("base.enabled")):
        return "no base stage: each run starts from a random initialisation"
    run_id = f"base-{config_hash(experiment.base_spec(cfg))}"
    if (cache_dir(profile) / run_id / "model.safetensors").exists():
        return f"base model {run_id}: cached"
    have = records.existing_record(profile, run_id, kind="base") is not None
    return f"base model {run_id}: {'record exists, ' if have else ''}not cached: trained first if a run needs it"


def precision_lines(profile: str, cfg: dict, records_: list[dict] | None = None) -> list[str]:
    """What precision the profile's stages would run in on this host, and what that costs here: where a
    stage names bf16 and the CPU has no native bf16, the warning line, the rate of a bf16 vs an fp32
    matmul measured now, and the CPU the time estimates come from."""
    from kl_utils.core import precision
    device = precision.default_device_type()
    stages = {s: cfg[s].get("mixed_precision", default("cpt.mixed_precision")) for s in ("base", "cpt", "it")
              if s in cfg and not (s == "base" and (cfg["model"].get("pretrained") or not cfg[s].get("enabled", True)))}
    resolved = {s: precision.resolve(p, device) for s, p in stages.items()}
    native = precision.native_bf16(device)
    from kl_utils.core.records import cpu_info
    host = f"{device.upper() if device == 'cuda' else cpu_info()['model']}: {'native' if native else 'no native'} bf16"
    parts = [f"{s.upper()} {precision.label(resolved[s])}" + (" (auto)" if stages[s] == "auto" else "") for s in stages]
    lines = [f"precision on this host ({host}): {', '.join(parts)}"]
    if device == "cpu" and not native and "bf16" in resolved.values():
        lines.append(precision.slow_bf16_message(f"profile {profile}:"))
        lines.append("  cost: " + precision.bf16_cost_line())
        made_on = sorted({(r.get("env") or {}).get("cpu", {}).get("model", "an unrecorded CPU") for r in records_ or []})
        if made_on:
            lines.append(f"  the time estimates below are of records made on {', '.join(made_on)}: bf16 stages take "
                         "many times longer here")
    return lines


def reproduce_line(profile: str) -> str:
    """The wall time of the profile's last `make reproduce` (every notebook; results/<profile>/timing.json)."""
    import json

    from kl_utils.core.paths import results_dir
    path = results_dir(profile) / "timing.json"
    if not path.exists():
        return f"no timing.json: make reproduce has not timed {profile} yet"
    t = json.loads(path.read_text())
    return (f"the last make reproduce of {profile} took {_time(t['wall_time_s'])} (every notebook, on "
            f"{t.get('machine', {}).get('cpu_count', '?')} CPUs; results/{profile}/timing.json)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kl_utils plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=None, help="profile name or YAML path (default: KL_PROFILE or cpu)")
    ap.add_argument("--grid", default=None, help="a named grid of the profile (default: all of them)")
    args = ap.parse_args(argv)
    profile, cfg = load_config(args.profile)
    from kl_utils.protocol import experiment
    try:
        cells = grid_cells(cfg, args.grid)
    except ValueError as err:
        ap.error(str(err))
    if not cells:
        print(f"profile {profile} has no grids: nothing to plan")
        return 0
    try:
        ds, _, _ = experiment.prepare_data(profile, cfg)
    except OSError as err:  # a model or documents this machine cannot reach (offline, not downloaded)
        what = cfg["data"].get("documents") or cfg["model"].get("pretrained") or "the data"
        raise ProfileError(f"profile {profile}: cannot count the steps without the data and tokenizer of "
                           f"{what}: {str(err).splitlines()[0]}") from err
    from kl_utils.core import records
    print("\n".join(precision_lines(profile, cfg, records.load_run_records(profile, kind="arm"))))
    print(render(profile, cfg, plan_rows(profile, cfg, cells, ds), args.grid, base_line(profile, cfg)))
    print(reproduce_line(profile))
    return 0


if __name__ == "__main__":
    from kl_utils.core.command import entry
    sys.exit(entry(main))

"""Arms: a profile's `arms:` (overrides of its cpt / it settings), the ones its `ablations:`
generate, and each (arm, seed)'s run id. Imports neither torch nor datasets, so a profile can be
checked (kl_utils.config.schema) and a plan printed before anything heavy loads."""
from __future__ import annotations

from typing import NamedTuple

from kl_utils.config.schema import STAGE_DEFAULTS
from kl_utils.core import precision, records
from kl_utils.core.spec import config_hash, merge


# Training-stage keys that select an implementation of the same computation (kl_utils.training.train), with
# the value each had before the key existed. A stage that sets one to this value hashes as if the
# key were absent, so records made before the key was introduced keep their run ids.
IMPLEMENTATION_DEFAULTS = {k: STAGE_DEFAULTS[k] for k in ("batching", "logits", "fused")}
STAGES = ("base", "cpt", "it")


def canonical_spec(spec: dict) -> dict:
    """`spec` with each stage's implementation keys left out where they have their default value, and
    `mixed_precision: auto` resolved to what this host runs (bf16 or no: core.precision), so the run
    id names the arithmetic."""
    def stage(cfg):
        if not isinstance(cfg, dict):
            return cfg
        if cfg.get("mixed_precision") == "auto":
            cfg = {**cfg, "mixed_precision": precision.resolve("auto")}
        return {k: v for k, v in cfg.items() if not (k in IMPLEMENTATION_DEFAULTS and v == IMPLEMENTATION_DEFAULTS[k])}
    return {k: stage(v) if k in STAGES else v for k, v in spec.items()}


def seed_config(cfg: dict, seed: int) -> dict:
    """The config of one seed's run. With `data.draw_per_seed`, each seed is also its own data draw
    (new people from data.seed + seed): the unit of replication is then the data draw, not only the
    CPT seed (a pretrained model has no base-model draw to vary)."""
    if not cfg["data"].get("draw_per_seed"):
        return cfg
    return {**cfg, "data": {**cfg["data"], "seed": cfg["data"]["seed"] + seed}}


ARM_KEYS = ("cpt", "it", "budget", "order")
BUDGETS = ("epochs", "steps")
ORDERS = ("standard", "pit")


class Ablation(NamedTuple):
    """A single-factor ablation arm, as data: what the claims and figures need to know about it
    (nothing reads it back from the arm's name)."""
    factor: str          # rho, k, family or rho_k
    level: str           # as tables show it: "0.1", "8", "bullet_list", "2/0.05" (k/rho)
    claim: str           # the claim it bears on: C4 (rho), C3 (k, family), C5 (rho x k)
    k: int | None        # formatted copies
    rho: float | None    # SAM radius
    family: str | None   # the one augmentation family
    overrides: dict      # the arm (see arm_spec)


def ablation_arms(abl: dict) -> dict[str, Ablation]:
    """The arms a profile's `ablations:` generates, by name:
      rho: [...]        -> sam_rho<v>                    (SAM at each rho)
      k: [...]          -> format_k<k>_steps             (k formatted copies, step-matched)
      families: [...]   -> format_<family>_steps         (one augmentation family alone, k=1)
      rho_k: true       -> format_sam_k<k>_rho<v>_steps  (the rho x k grid)"""
    sam, out = {"optimizer": "sam"}, {}
    for rho in abl.get("rho", []):
        out.setdefault(f"sam_rho{rho}", Ablation("rho", f"{rho}", "C4", None, rho, None, {"cpt": {**sam, "rho": rho}}))
    for k in abl.get("k", []):
        out.setdefault(f"format_k{k}_steps", Ablation("k", f"{k}", "C3", k, None, None,
                                                      {"budget": "steps", "cpt": {"augmentation": {"k": k}}}))
    for fam in abl.get("families", []):
        out.setdefault(f"format_{fam}_steps", Ablation(
            "family", fam, "C3", 1, None, fam, {"budget": "steps", "cpt": {"augmentation": {"k": 1, "families": [fam]}}}))
    if abl.get("rho_k"):
        for k in abl.get("k", []):
            for rho in abl.get("rho", []):
                out.setdefault(f"format_sam_k{k}_rho{rho}_steps", Ablation(
                    "rho_k", f"{k}/{rho}", "C5", k, rho, None,
                    {"budget": "steps", "cpt": {**sam, "rho": rho, "augmentation": {"k": k}}}))
    return out


def ablation_of(arm: str, spec: dict | None) -> Ablation | None:
    """The ablation an arm is, from its settings (a run record's config): the one `ablations:` would
    generate under this name for these settings (ablation_arms); None for any other arm."""
    cpt = (spec or {}).get("cpt") or {}
    aug = cpt.get("augmentation") or {}
    abl = {"rho": [cpt["rho"]] if "rho" in cpt else [], "k": [aug["k"]] if aug.get("k") else [],
           "families": list(aug.get("families") or []), "rho_k": True}
    return ablation_arms(abl).get(arm)


def all_arms(cfg: dict) -> dict:
    """The profile's `arms:`, plus the arms its `ablations:` generate (ablation_arms) and
      lr: {arms: [...], factors: [...]} -> <arm>@lrx<f>  (learning-rate variants, for tuning on valid)
    """
    arms = dict(cfg.get("arms") or {})
    abl = cfg.get("ablations") or {}
    for name, ablation in ablation_arms(abl).items():
        arms.setdefault(name, ablation.overrides)
    lr = abl.get("lr") or {}
    for arm in lr.get("arms", []):
        if arm != "baseline" and arm not in arms:
            raise ValueError(f"ablations.lr.arms names {arm!r}, which is not an arm of the profile "
                             f"(arms: baseline, {', '.join(sorted(arms))})")
        base = {} if arm == "baseline" else arms[arm]
        for f in lr.get("factors", []):
            stage_lr = {st: {"lr": cfg[st]["lr"] * f} for st in ("cpt",)}
            arms.setdefault(f"{arm}@lrx{f}", merge(base, stage_lr))
    return arms


def arm_spec(cfg: dict, arm: str, seed: int) -> tuple[dict, dict, str]:
    """(the arm's settings, everything its result depends on, its run id).

    An arm (profile `arms:`) overrides `cpt` / `it` settings and may set
    budget: epochs (default; the paper's setting: augmentation adds tokens and steps) or steps
      (CPT and IT run exactly as many optimizer steps as the baseline's, whatever the data);
    order: standard (default: CPT, then IT) or pit (pre-instruction-tuning, Jiang et al. 2024:
      first the train half's QA pairs mixed with their documents, then CPT on all documents).
    """
    cfg = seed_config(cfg, seed)
    arms = all_arms(cfg)
    if arm != "baseline" and arm not in arms:
        raise ValueError(f"unknown arm {arm!r}; defined: baseline, {', '.join(arms)}")
    override = arms.get(arm) or {}
    unknown = set(override) - set(ARM_KEYS)
    if unknown:
        raise ValueError(f"arm {arm!r}: unknown keys {sorted(unknown)}; valid: {', '.join(ARM_KEYS)}")
    arm_cfg = merge({"cpt": cfg["cpt"], "it": cfg["it"], "budget": "epochs", "order": "standard"}, override)
    if arm_cfg["budget"] not in BUDGETS or arm_cfg["order"] not in ORDERS:
        raise ValueError(f"arm {arm!r}: budget must be one of {BUDGETS}, order one of {ORDERS}")
    spec = canonical_spec({"data": cfg["data"], "model": cfg["model"], "base": cfg["base"], "eval": cfg["eval"],
                           **arm_cfg})
    return arm_cfg, spec, f"{arm}-s{seed}-{config_hash(spec)}"


def grads_per_step(stage_cfg: dict) -> float:
    """Gradient evaluations per optimizer step of a stage: SAM two (1 + 1/k when it perturbs
    every k-th step), AdamW one."""
    if stage_cfg.get("optimizer", STAGE_DEFAULTS["optimizer"]) != "sam":
        return 1
    return 1 + 1 / stage_cfg.get("sam_every_k", STAGE_DEFAULTS["sam_every_k"])


def is_current(rec: dict, cfg: dict) -> bool:
    """The one rule for "a record of the profile's current config": an arm record is current when its
    run id is the one its (arm, seed) has under `cfg` now (arm_spec). A record of an arm the profile
    no longer defines, or of an older config of the arm, is not (it stays on disk, unused)."""
    try:
        return arm_spec(cfg, rec["arm"], rec["seed"])[2] == rec["run_id"]
    except ValueError:  # an arm the profile no longer defines
        return False


def current_arm_records(profile: str, cfg: dict | None = None) -> list[dict]:
    """The profile's arm records of its current config (is_current); all of them when cfg is None."""
    recs = records.load_run_records(profile, kind="arm")
    return recs if cfg is None else [r for r in recs if is_current(r, cfg)]


def grid_cells(cfg: dict, grid: str | None = None) -> list[tuple[str, int]]:
    """The (arm, seed) cells of a named grid of the profile (default: all its grids), in order,
    without duplicates."""
    grids = cfg.get("grids", {})
    if grid is not None and grid not in grids:
        raise ValueError(f"unknown grid {grid!r}; defined: {', '.join(grids) or 'none'}")
    cells = []
    for block in [b for name in ([grid] if grid else list(grids)) for b in grids[name]]:
        for arm in block["arms"]:
            for seed in block.get("seeds", cfg["seeds"]):
                if (arm, seed) not in cells:
                    cells.append((arm, seed))
    for arm, seed in cells:
        arm_spec(cfg, arm, seed)  # unknown arms fail here, before any training
    return cells


def home_grids(cfg: dict) -> dict[str, str]:
    """{arm: grid} for every arm of the profile's grids: the grid that runs it on the most seeds (the
    first such grid on a tie), ordered by grid then by first appearance: baseline's home is main, not the
    lr sweep that also runs it once. Where a status table lists an arm."""
    cells = {name: grid_cells(cfg, name) for name in cfg.get("grids") or {}}
    best = {}
    for name, grid in cells.items():
        for arm, _ in grid:
            n = sum(a == arm for a, _ in grid)
            if arm not in best or n > best[arm][1]:
                best[arm] = (name, n)
    return {arm: name for arm, (name, _) in sorted(best.items(), key=lambda kv: list(cells).index(kv[1][0]))}


# The grids notebook 06 (controls) reads from its controls profile, and the report summarises.
CONTROL_GRIDS = ("saturation", "converged", "it_side", "c7_pit", "ablations", "rho_k")


def control_cells(cfg: dict) -> list[tuple[str, int]]:
    """The (arm, seed) cells of the profile's control grids, without duplicates."""
    return list(dict.fromkeys(c for g in CONTROL_GRIDS if g in cfg.get("grids", {}) for c in grid_cells(cfg, g)))


def run_key(run_id: str) -> str:
    """`s<seed>-<spec hash>` of a run id `<arm>-s<seed>-<hash>` (arm names may contain '-'): two
    arm names with the same key are the same run (kl_utils.protocol.run.adopt_same_runs)."""
    arm_and_seed, spec_hash = run_id.rsplit("-", 1)
    return f"{arm_and_seed.rsplit('-', 1)[1]}-{spec_hash}"


def runs_by_key(recs: list[dict]) -> dict[str, dict]:
    """The original record of each run (copies under another arm name left out), by run_key."""
    return {run_key(r["run_id"]): r for r in sorted(records.distinct_runs(recs), key=lambda r: r["run_id"], reverse=True)}

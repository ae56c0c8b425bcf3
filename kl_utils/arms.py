"""Arms: a profile's `arms:` (overrides of its cpt / it settings), the ones its `ablations:`
generate, and each (arm, seed)'s run id. Imports neither torch nor datasets, so a profile can be
checked (kl_utils.schema) and a plan printed before anything heavy loads."""
from __future__ import annotations

from kl_utils.config import canonical_spec, config_hash, merge
from kl_utils.schema import STAGE_DEFAULTS


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


def all_arms(cfg: dict) -> dict:
    """The profile's `arms:`, plus the arms its `ablations:` generate:
      rho: [...]        -> sam_rho<v>                    (SAM at each rho)
      k: [...]          -> format_k<k>_steps             (k formatted copies, step-matched)
      families: [...]   -> format_<family>_steps         (one augmentation family alone, k=1)
      rho_k: true       -> format_sam_k<k>_rho<v>_steps  (the rho x k grid)
      lr: {arms: [...], factors: [...]} -> <arm>@lrx<f>  (learning-rate variants, for tuning on valid)
    """
    arms = dict(cfg.get("arms") or {})
    abl = cfg.get("ablations") or {}
    sam = {"optimizer": "sam"}
    for rho in abl.get("rho", []):
        arms.setdefault(f"sam_rho{rho}", {"cpt": {**sam, "rho": rho}})
    for k in abl.get("k", []):
        arms.setdefault(f"format_k{k}_steps", {"budget": "steps", "cpt": {"augmentation": {"k": k}}})
    for fam in abl.get("families", []):
        arms.setdefault(f"format_{fam}_steps", {"budget": "steps", "cpt": {"augmentation": {"k": 1, "families": [fam]}}})
    if abl.get("rho_k"):
        for k in abl.get("k", []):
            for rho in abl.get("rho", []):
                arms.setdefault(f"format_sam_k{k}_rho{rho}_steps", {
                    "budget": "steps", "cpt": {**sam, "rho": rho, "augmentation": {"k": k}}})
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


def run_key(run_id: str) -> str:
    """`s<seed>-<spec hash>` of a run id `<arm>-s<seed>-<hash>` (arm names may contain '-'): two
    arm names with the same key are the same run (kl_utils.run.adopt_same_runs)."""
    arm_and_seed, spec_hash = run_id.rsplit("-", 1)
    return f"{arm_and_seed.rsplit('-', 1)[1]}-{spec_hash}"

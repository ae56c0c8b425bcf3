"""Does the cpu profile's fast implementation change what is learned? The held-out EM of every arm
(and of the base model) in the records made with it vs the records made before it
(results/cpu/runs-v1), paired by seed, with confidence intervals: the speed-up counts only if the
results stay where they were. It reads run records; it trains nothing.

    python -m kl_utils bench --implementation-check     (prints only this; also part of `make bench`)
"""
from __future__ import annotations


# ---------------------------------------------------------------- does the fast implementation change results?
# Two comparisons, each against the cpu records made before the switch to bench.VARIANTS["fast"]
# (results/cpu/runs-v1: padded batches, logits everywhere, foreach AdamW, in every stage):
# - "CPT + IT only": profiles/cpu-impl.yaml trains the cpu arms with the fast implementation from
#   that old base model, so a pair differs only in how CPT and IT compute their updates;
# - "whole pipeline": the current cpu records, whose base model was trained with it too.
IMPLEMENTATION_CHECKS = {"CPT + IT only (same base model)": ("cpu", "runs-v1", "cpu-impl", "runs"),
                         "whole pipeline (its own base model)": ("cpu", "runs-v1", "cpu", "runs")}


def _em_by_arm_seed(profile: str, folder: str, metric: str) -> dict:
    """{arm: {seed: metric}} of the arm records in results/<profile>/<folder>, plus the base model's
    held-out base QA."""
    from kl_utils.core.records import load_run_records
    from kl_utils.analysis.summary import by_arm
    recs = load_run_records(profile, folder=folder)
    out = by_arm([r for r in recs if r.get("kind") == "arm"], metric)
    base = {r["seed"]: r["metrics"]["base_heldout_qa_em"] for r in recs if r.get("kind") == "base"}
    return {**out, **({"base model (held-out base QA)": base} if base else {})}


def implementation_check(previous: tuple[str, str] = ("cpu", "runs-v1"), current: tuple[str, str] = ("cpu", "runs"),
                         metric: str = "test_em", verbose: bool = True) -> dict:
    """Held-out EM of every arm (and of the base model) in two record folders, given as (profile,
    folder under results/<profile>), paired by seed: same data, initialisation and batch order, so
    a pair differs only in what the two folders' configs compute differently (here: float rounding,
    which training amplifies into a different run). Differences whose CI contains 0 are seed noise."""
    from kl_utils.analysis.stats import mean_ci, paired_diff_ci
    old, new = _em_by_arm_seed(*previous, metric), _em_by_arm_seed(*current, metric)
    rows = {}
    for arm in sorted(set(old) & set(new)):
        seeds = set(old[arm]) & set(new[arm])
        if not seeds:
            continue
        rows[arm] = {"previous": mean_ci([old[arm][s] for s in seeds]), "current": mean_ci([new[arm][s] for s in seeds]),
                     "current_minus_previous": paired_diff_ci(old[arm], new[arm])}
    if verbose:
        if not rows:
            print(f"  no arm has records of the same seed in results/{'/'.join(previous)} and results/{'/'.join(current)}")
        for arm, r in rows.items():
            d = r["current_minus_previous"]
            ci = "" if d["n"] < 2 else f" [{d['low']:+.3f}, {d['high']:+.3f}]"
            print(f"    {arm:<32} previous {r['previous']['mean']:.3f}  current {r['current']['mean']:.3f}  "
                  f"{d['mean']:+.3f}{ci} ({d['n']} seeds)")
    return rows


def implementation_checks(verbose: bool = True) -> dict:
    out = {}
    for name, (p0, f0, p1, f1) in IMPLEMENTATION_CHECKS.items():
        if verbose:
            print(f"  {name}: results/{p0}/{f0} -> results/{p1}/{f1} (held-out EM, current - previous, paired by seed)")
        out[name] = implementation_check((p0, f0), (p1, f1), verbose=verbose)
    return out

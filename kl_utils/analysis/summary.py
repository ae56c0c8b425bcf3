"""Tables from run records: per-arm metrics (mean ± 95% CI over seeds) and paired differences
against a reference arm over the seeds both share.

    python -m kl_utils.analysis.summary --profile cpu [--metric test_em] [--reference baseline]
"""
from __future__ import annotations

import argparse
from collections import defaultdict

from kl_utils.core import records
from kl_utils.analysis import stats
from kl_utils.config.profiles import resolve_profile


def by_arm(recs: list[dict], metric: str) -> dict[str, dict[int, float]]:
    """{arm: {seed: value}}; two records of one arm and seed (different configs) are an error."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in recs:
        arm, seed = r.get("arm"), r["seed"]
        if arm is None or metric not in r["metrics"]:
            continue
        if seed in out[arm]:
            raise ValueError(f"two records for arm {arm!r} seed {seed} ({r['run_id']}): "
                             "remove the stale one or give the arms different names")
        out[arm][seed] = r["metrics"][metric]
    return dict(out)


def arm_table(recs: list[dict], metric: str = "test_em", reference: str = "baseline") -> list[dict]:
    """One row per arm: mean ± CI of `metric`, and the paired difference to `reference`."""
    values = by_arm(recs, metric)
    rows = []
    for arm in sorted(values, key=lambda a: (a != reference, a)):
        ci = stats.mean_ci(list(values[arm].values()))
        row = {"arm": arm, "n_seeds": ci["n"], "mean": ci["mean"], "ci_low": ci["low"], "ci_high": ci["high"]}
        if arm != reference and reference in values:
            d = stats.paired_diff_ci(values[reference], values[arm])
            row.update({"diff": d["mean"], "diff_low": d["low"], "diff_high": d["high"], "paired_seeds": len(d["seeds"]),
                        "verdict": verdict(d)})
        rows.append(row)
    return rows


def verdict(ci: dict) -> str:
    """supported: CI above 0; contradicted: CI below 0; inconclusive: CI contains 0 (or n < 2)."""
    if ci["n"] < 2:
        return "inconclusive"
    if ci["low"] > 0:
        return "supported"
    if ci["high"] < 0:
        return "contradicted"
    return "inconclusive"


def format_table(rows: list[dict], metric: str) -> str:
    lines = [f"| arm | seeds | {metric} (mean ± 95% CI) | paired diff vs reference (95% CI) | verdict |",
             "|---|---|---|---|---|"]
    for r in rows:
        half = (r["ci_high"] - r["ci_low"]) / 2 if r["n_seeds"] > 1 else float("nan")
        diff = (f"{r['diff']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]" if "diff" in r else "—")
        lines.append(f"| {r['arm']} | {r['n_seeds']} | {r['mean']:.3f} ± {half:.3f} | {diff} | {r.get('verdict', '')} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None)
    ap.add_argument("--metric", default="test_em")
    ap.add_argument("--reference", default="baseline")
    args = ap.parse_args(argv)
    profile = resolve_profile(args.profile)
    recs = records.load_run_records(profile, kind="arm")
    print(f"profile {profile}: {len(recs)} arm records\n")
    print(format_table(arm_table(recs, args.metric, args.reference), args.metric))


if __name__ == "__main__":
    import sys

    from kl_utils.core.command import entry
    sys.exit(entry(main))

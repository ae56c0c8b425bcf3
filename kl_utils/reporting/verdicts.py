"""The test behind each claims row, its unit of replication, and multiplicity control.

Every row of results/<profile>/claims.csv gets
  test          superiority (H0: diff = 0), "superiority (lower is better)" (sharpness), non-inferiority
                (C5: H0 diff <= -margin), "CMH (stratified by run)" (the C1 per-fact test), or descriptive
                (correlations: no test, no verdict beyond the CI);
  family        headline (the paper's claims at their own arms), controls (against AdamW given more steps
                or gradients, regime, near convergence), ablations (single-factor ablations, efficient SAM,
                learning rates tuned on valid) or descriptive; Holm-Bonferroni runs within each family;
  n_pairs ...   the random-effects estimate over (base model, data draw) pairs (kl_utils.analysis.meta: REML tau^2,
                Hartung-Knapp CI), where the profile lists `pairs:` (profiles of the same design on other
                base models or data draws) and two or more pairs have both arms;
  primary       the estimate the p-value and the Holm verdict use: random effects when n_pairs >= 2,
                else the within-pair CI over CPT seeds (the columns diff, ci_low, ci_high, n_seeds, verdict).
docs/statistics.md explains the choices.
"""
from __future__ import annotations

import math

from kl_utils.analysis import meta, stats
from kl_utils.config.arms import current_arm_records

NI_MARGIN = 0.02  # C5's pre-stated non-inferiority margin in held-out EM (STUDY.md)
ALPHA = 0.05
FAMILIES = ("headline", "controls", "ablations")

# C5: "augmentation + SAM is at least as good as either alone": format + SAM against each method alone,
# at the paper's budgets (headline) and near convergence (a control: cpu-full grid `converged`).
C5_HEADLINE_ARMS = {("format_steps", "format_sam_steps"), ("sam", "format_sam_steps"), ("format", "format_sam"),
                    ("sam", "format_sam")}
NON_INFERIORITY_ARMS = C5_HEADLINE_ARMS | {("format_ep48", "format_sam_ep48"), ("sam_ep96", "format_sam_ep48")}
# The comparisons that test a claim of the paper at its own arms (everything else among the arm
# comparisons is a control, or an ablation).
HEADLINE_ARMS = C5_HEADLINE_ARMS | {
    ("baseline", "format_steps"), ("baseline", "format"), ("baseline", "sam"), ("baseline", "it_format_sam"),
    ("baseline", "it_format_sam_steps"), ("baseline", "it_format"), ("baseline", "it_sam"), ("pit", "pit_format_sam"),
    ("para4", "para4_format_sam"), ("para4", "para4_format_sam_steps"), ("baseline", "para4")}
ABLATION_ARMS = {"sam_every4"}

# verdict when the CI lies above / below the null value
LABELS = {"superiority": ("supported", "contradicted"), "superiority (lower is better)": ("contradicted", "supported"),
          "non-inferiority": ("non-inferior", "inferior"), "CMH (stratified by run)": ("supported", "contradicted")}
COLUMNS = ["test", "margin", "family", "primary", "n_pairs", "pair_profiles", "re_diff", "re_ci_low", "re_ci_high",
           "re_tau2", "re_q", "re_verdict", "p_value", "p_holm", "verdict_holm"]


def base_arm(arm) -> str:
    """An arm's name without its learning-rate variant suffix (sam@lrx2.0 -> sam)."""
    return (arm or "").split("@")[0]


def test_of(row: dict) -> tuple[str, float | None]:
    """(test, margin) of a row: the row's own `test` if it names one (analysis rows), else
    non-inferiority for C5's format + SAM vs either alone, superiority for every other comparison."""
    if row.get("test"):
        return row["test"], row.get("margin")
    if row["claim"] == "C5" and (base_arm(row.get("arm_a")), base_arm(row.get("arm_b"))) in NON_INFERIORITY_ARMS:
        return "non-inferiority", NI_MARGIN
    return "superiority", None


def family_of(row: dict, test: str) -> str:
    if test == "descriptive":
        return "descriptive"
    arms = (base_arm(row.get("arm_a")), base_arm(row.get("arm_b")))
    if row["comparison"].startswith("ablation:") or "(lr tuned on valid)" in row["comparison"] \
            or arms[1] in ABLATION_ARMS:
        return "ablations"
    if not row.get("arm_a") or arms in HEADLINE_ARMS:  # analysis rows (C1, C2, C4 flatness) test the paper's claims
        return "headline"
    return "controls"


def _null(test: str, margin) -> float:
    return -float(margin) if test == "non-inferiority" else 0.0


def decide(low, high, test: str, margin=None) -> str:
    """The verdict of a CI under a test: above / below its null value (0, or -margin), else inconclusive."""
    if test not in LABELS or low is None or high is None or math.isnan(low) or math.isnan(high):
        return "inconclusive"
    above, below = LABELS[test]
    null = _null(test, margin)
    return above if low > null else below if high < null else "inconclusive"


def _by_sign(estimate: float, test: str, margin) -> str:
    above, below = LABELS[test]
    return above if estimate > _null(test, margin) else below


def within_pair_p(row: dict, test: str, margin) -> float:
    """Two-sided p-value (H0: diff = null) of the within-pair t interval, recovered from it exactly:
    se = half-width / t95(n - 1), df = n - 1. CMH rows carry their own p-value."""
    if "p_value" in row:
        return row["p_value"]
    n, low, high = row.get("n_seeds") or 0, row.get("ci_low"), row.get("ci_high")
    if n < 2 or low is None or math.isnan(low):
        return float("nan")
    se = (high - low) / (2 * stats.t95(n - 1))
    return stats.p_two_sided(row["diff"], se, null=_null(test, margin), df=n - 1)


def pair_groups(pair_recs: dict, arm_a: str, arm_b: str, metric: str = "test_em") -> dict[tuple, list[float]]:
    """Per pair (profile, base model run id, data seed): the per-seed differences b - a over the seeds
    both arms have there (pairs without such a seed are left out)."""
    from kl_utils.analysis.summary import by_arm
    out = {}
    for key, recs in pair_recs.items():
        values = by_arm(recs, metric)
        seeds = sorted(set(values.get(arm_a, {})) & set(values.get(arm_b, {})))
        if seeds:
            out[key] = [values[arm_b][s] - values[arm_a][s] for s in seeds]
    return out


def pair_key(rec: dict) -> tuple:
    """(base model, data draw) of an arm record."""
    return rec.get("base_run_id"), (rec.get("config") or {}).get("data", {}).get("seed")


def pair_records(profile: str, cfg: dict | None, current=current_arm_records) -> dict[tuple, list[dict]]:
    """The arm records of every pair of the profile's `pairs:` (profiles of one design on different
    base models / data draws), each profile's of its current config, keyed (profile, base run id,
    data seed). Only the profile itself when it lists no pairs, or is not among them. Two profiles
    with the same base model and data draw are not independent pairs: an error. current(profile, cfg):
    the records of a profile's current config (kl_utils.config.arms.current_arm_records)."""
    from kl_utils.config.profiles import load_config
    listed = list((cfg or {}).get("pairs") or [])
    profiles = listed if profile in listed else [profile]
    out, owner = {}, {}
    for prof in profiles:
        pcfg = cfg if prof == profile else load_config(prof)[1]
        for rec in current(prof, pcfg):
            key = pair_key(rec)
            if owner.setdefault(key, prof) != prof:
                raise ValueError(f"profiles {owner[key]!r} and {prof!r} share base model and data draw {key}: "
                                 "they are one pair, not two (fix `pairs:`)")
            out.setdefault((prof, *key), []).append(rec)
    return out


def random_effects_columns(row: dict, pair_recs: dict | None, test: str, margin) -> dict:
    # learning rates tuned on valid are chosen per pair: the other pairs did not tune, so such a row
    # stays within its own pair
    tuned = "(lr tuned on valid)" in row["comparison"]
    groups = pair_groups(pair_recs, row["arm_a"], row["arm_b"], row.get("metric", "test_em")) \
        if pair_recs and row.get("arm_a") and not tuned else {}
    cols = {"n_pairs": max(len(groups), 1), "pair_profiles": " ".join(sorted({k[0] for k in groups}))}
    if len(groups) < 2:
        return cols
    res = meta.meta_of_pairs(list(groups.values()))
    return {**cols, "re_diff": res["mu"], "re_ci_low": res["low"], "re_ci_high": res["high"], "re_tau2": res["tau2"],
            "re_q": res["q"] if math.isfinite(res["q"]) else None, "re_verdict": decide(res["low"], res["high"], test, margin),
            "re_p": stats.p_two_sided(res["mu"], res["se"], null=_null(test, margin), df=res["df"])}


def annotate(rows: list[dict], pair_recs: dict | None = None) -> list[dict]:
    """The rows with the columns of COLUMNS: test and margin, the within-pair verdict under that test
    (`verdict`), the random-effects estimate over pairs, the primary p-value, and Holm-Bonferroni
    within each family (headline / controls / ablations; descriptive rows are not tested)."""
    out = []
    for row in rows:
        test, margin = test_of(row)
        row = {**row, "test": test, "margin": margin, "family": family_of(row, test)}
        if test != "descriptive":
            row["verdict"] = decide(row.get("ci_low"), row.get("ci_high"), test, margin) \
                if (row.get("n_seeds") or 0) >= 2 or "p_value" in row else "inconclusive"
            row.update(random_effects_columns(row, pair_recs, test, margin))
            use_re = row["n_pairs"] >= 2
            row["primary"] = "random effects" if use_re else "within pair"
            row["p_value"] = row.pop("re_p") if use_re else within_pair_p(row, test, margin)
            row["_estimate"] = row["re_diff"] if use_re else row["diff"]
        out.append(row)
    for family in FAMILIES:
        members = [r for r in out if r["family"] == family]
        for r, adj in zip(members, stats.holm([r["p_value"] for r in members])):
            r["p_holm"] = adj
            r["verdict_holm"] = "inconclusive" if math.isnan(adj) or adj > ALPHA else \
                _by_sign(r["_estimate"], r["test"], r["margin"])
    for r in out:
        r.pop("_estimate", None)
    return out

"""results/<profile>/claims.csv: one row per claim comparison, built only from run records.

Main-experiment rows compare two arms over the seeds both have (paired difference of b - a with
its 95% t-interval: the within-pair columns diff, ci_low, ci_high, n_seeds, verdict); the analysis
modules (probe, diversity, sharpness) add their own rows in the same columns. Verdict: `supported`
(CI above 0), `contradicted` (CI below 0), `inconclusive` (CI contains 0, or fewer than 2 paired
seeds); C5's non-inferiority rows: `non-inferior` / `inferior` / `inconclusive` against -margin.
kl_utils.reporting.verdicts adds the test of each row, the random-effects estimate over (base model, data
draw) pairs and the Holm-adjusted verdict (the columns after run_ids).

    python -m kl_utils claims --profile cpu     # rebuild the file and print it
    python -m kl_utils claims --across cpu cpu-base1   # the rows of several profiles side by side
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

from kl_utils.core import records
from kl_utils.analysis import stats
from kl_utils.reporting import verdicts
from kl_utils.config.arms import ablation_of, current_arm_records
from kl_utils.config.profiles import load_config
from kl_utils.core.paths import results_dir
from kl_utils.analysis.summary import by_arm, verdict

COLUMNS = ["claim", "comparison", "budget", "metric", "mean_a", "mean_b", "diff", "ci_low", "ci_high",
           "n_seeds", "verdict", "arm_a", "arm_b", "run_ids", *verdicts.COLUMNS]

# (claim, arm a, arm b, budget, what the comparison is). Rows whose arms have no records are left
# out (a profile runs the comparisons its grid covers); `main_rows` adds rows tuned on valid.
COMPARISONS = [
    ("C3", "baseline", "format_steps", "steps", "formatting augmentation vs plain CPT"),
    ("C3", "baseline", "format", "epochs", "formatting augmentation vs plain CPT"),
    ("C3", "baseline_2x", "format", "steps", "formatting augmentation vs plain CPT for as many steps"),
    ("C4", "baseline", "sam", "steps", "SAM vs AdamW (same steps and epochs)"),
    ("C4", "baseline_2x", "sam", "compute", "SAM vs AdamW with as many gradient evaluations"),
    ("C4", "baseline", "sam_every4", "steps", "efficient SAM (every 4th step) vs AdamW"),
    ("C5", "format_steps", "format_sam_steps", "steps", "format + SAM vs format alone"),
    ("C5", "sam", "format_sam_steps", "steps", "format + SAM vs SAM alone"),
    ("C5", "format", "format_sam", "epochs", "format + SAM vs format alone"),
    ("C5", "sam", "format_sam", "epochs", "format + SAM vs SAM alone"),
    ("C6", "baseline", "it_format_sam", "epochs", "augmented QA + SAM during IT vs plain IT"),
    ("C6", "baseline", "it_format_sam_steps", "steps", "augmented QA + SAM during IT vs plain IT"),
    ("C6", "baseline", "it_format", "epochs", "augmented QA during IT vs plain IT"),
    ("C6", "baseline", "it_sam", "epochs", "SAM during IT vs AdamW"),
    ("C6", "pit", "pit_format_sam", "epochs", "format + SAM in the pre-instruction-tuning order"),
    # The saturation control (cpu-full grid `saturation`): each method against AdamW trained as many
    # optimizer steps ("steps") or as many gradient evaluations ("compute"); and whether AdamW is
    # still improving with more CPT epochs ("regime": if so, the miniature is under-trained).
    ("C3", "baseline_ep48", "format_ep24", "steps", "formatting vs plain CPT for as many steps, 2x epochs"),
    ("C4", "baseline_2x", "sam_ep24", "steps", "SAM vs AdamW, both at 2x epochs"),
    ("C4", "baseline_ep48", "sam_ep24", "compute", "SAM at 2x epochs vs AdamW with as many gradient evaluations"),
    ("C5", "baseline_2x", "format_sam", "steps", "format + SAM vs plain CPT for as many steps"),
    ("C5", "baseline_ep48", "format_sam", "compute", "format + SAM vs AdamW with as many gradient evaluations"),
    ("C5", "baseline_ep48", "format_sam_ep24", "steps", "format + SAM vs plain CPT for as many steps, 2x epochs"),
    ("C5", "baseline_ep96", "format_sam_ep24", "compute", "format + SAM at 2x epochs vs AdamW with as many gradient evaluations"),
    # Near convergence (cpu-full grid `converged`): AdamW levels off between 96 and 192 epochs.
    ("C3", "baseline_ep96", "format_ep48", "steps", "formatting vs plain CPT for as many steps, near convergence"),
    ("C3", "baseline_ep48", "format_ep48", "epochs", "formatting vs plain CPT, both at 4x epochs"),
    ("C4", "baseline_ep96", "sam_ep96", "steps", "SAM vs AdamW, both at 8x epochs (near convergence)"),
    ("C4", "baseline_ep192", "sam_ep96", "compute", "SAM vs AdamW with as many gradient evaluations, near convergence"),
    ("C5", "baseline_ep96", "format_sam_ep48", "steps", "format + SAM vs plain CPT for as many steps, near convergence"),
    ("C5", "baseline_ep192", "format_sam_ep48", "compute", "format + SAM vs AdamW with as many gradient evaluations, near convergence"),
    ("C5", "format_ep48", "format_sam_ep48", "steps", "format + SAM vs formatting alone, near convergence"),
    ("C5", "sam_ep96", "format_sam_ep48", "steps", "format + SAM vs SAM alone, near convergence"),
    ("regime", "baseline", "baseline_2x", "epochs", "AdamW: 2x vs 1x the CPT epochs"),
    ("regime", "baseline_2x", "baseline_ep48", "epochs", "AdamW: 4x vs 2x the CPT epochs"),
    ("regime", "baseline_ep48", "baseline_ep96", "epochs", "AdamW: 8x vs 4x the CPT epochs"),
    ("regime", "baseline_ep96", "baseline_ep192", "epochs", "AdamW: 16x vs 8x the CPT epochs"),
    ("regime", "baseline", "it_2x", "epochs", "plain IT: 2x vs 1x the IT epochs"),
    ("C6", "it_2x", "it_format", "steps", "augmented QA during IT vs plain IT for as many IT steps"),
    ("C7", "para4", "para4_format_sam", "epochs", "format + SAM on top of 4 paraphrases per person"),
    ("C7", "para4", "para4_format_sam_steps", "steps", "format + SAM on top of 4 paraphrases per person"),
    ("C7", "para4_eda", "para4_format", "steps", "formatting vs EDA rewriting on top of paraphrases (same steps)"),
    ("C7", "para4_2x", "para4_format", "steps", "formatting on top of paraphrases vs the paraphrases for as many steps"),
    ("C7", "para4_2x", "para4_format_sam", "steps", "format + SAM on top of paraphrases vs the paraphrases for as many steps"),
    ("C7", "para4_4x", "para4_format_sam", "compute", "format + SAM on top of paraphrases vs the paraphrases with as many gradients"),
    ("C2", "baseline", "para4", "steps", "4 paraphrases per person vs 1 biography, same steps"),
    # cpu-llm's compute controls: AdamW at 4x the CPT epochs has format + SAM's (epoch-matched) gradient evaluations
    ("C5", "baseline_4x", "format_sam", "compute", "format + SAM vs AdamW with as many gradient evaluations (4x epochs)"),
    ("regime", "baseline_2x", "baseline_4x", "epochs", "AdamW: 4x vs 2x the CPT epochs"),
    ("regime", "para4", "para4_2x", "epochs", "4 paraphrases: 2x vs 1x the epochs"),
]


def _fmt(x):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 6) if isinstance(x, float) else x


def compare(recs: list[dict], claim: str, arm_a: str, arm_b: str, budget: str, comparison: str,
            metric: str = "test_em") -> dict | None:
    """One claims row from arm records, or None when an arm has no records."""
    values = by_arm(recs, metric)
    if arm_a not in values or arm_b not in values or not set(values[arm_a]) & set(values[arm_b]):
        return None
    d = stats.paired_diff_ci(values[arm_a], values[arm_b])
    seeds = d["seeds"]
    ids = sorted(r["run_id"] for r in recs if r.get("arm") in (arm_a, arm_b) and r["seed"] in seeds)
    return {"claim": claim, "comparison": comparison, "budget": budget, "metric": metric,
            "mean_a": sum(values[arm_a][s] for s in seeds) / len(seeds) if seeds else float("nan"),
            "mean_b": sum(values[arm_b][s] for s in seeds) / len(seeds) if seeds else float("nan"),
            "diff": d["mean"], "ci_low": d["low"], "ci_high": d["high"], "n_seeds": len(seeds),
            "verdict": verdict(d), "arm_a": arm_a, "arm_b": arm_b, "run_ids": " ".join(ids)}


def lr_variants(arms, arm: str) -> list[str]:
    """`arm` and its learning-rate variants `arm@lrx<f>` among the names in `arms`."""
    return [a for a in arms if a == arm or a.startswith(f"{arm}@lrx")]


def best_by_valid(valid_means: dict, arm: str) -> str:
    """The one rule for tuning on validation: among `arm` and its learning-rate variants, the name
    with the best mean validation EM (ties go to the configured `arm`; test EM is never looked at).
    valid_means: arm name -> mean validation EM over seeds."""
    cands = lr_variants(valid_means, arm)
    return max(cands, key=lambda a: (valid_means[a], a == arm)) if cands else arm


def best_variant_by_valid(recs: list[dict], arm: str) -> str:
    """best_by_valid over the records' validation EM."""
    values = by_arm(recs, "valid_em")
    return best_by_valid({a: sum(v.values()) / len(v) for a, v in values.items()}, arm)


def has_lr_variants(recs: list[dict], arm: str) -> bool:
    return any((r.get("arm") or "").startswith(f"{arm}@lrx") for r in recs)


def main_rows(recs: list[dict]) -> list[dict]:
    """The main-experiment rows: each comparison of its arms as configured, and, where *both* arms
    have learning-rate variants, once more with each replaced by its variant with the best
    validation EM ("lr tuned on valid"). Tuning only one side would favour it, so a comparison
    with an untuned arm (say a control without variants) keeps its configured learning rates."""
    rows = []
    for claim, a, b, budget, what in COMPARISONS:
        row = compare(recs, claim, a, b, budget, what)
        if row is not None:
            rows.append(row)
        if has_lr_variants(recs, a) and has_lr_variants(recs, b):
            ta, tb = best_variant_by_valid(recs, a), best_variant_by_valid(recs, b)
            row = compare(recs, claim, ta, tb, budget, f"{what} (lr tuned on valid)")
            if row is not None:
                rows.append(row)
    return rows


def ablation_rows(recs: list[dict]) -> list[dict]:
    """Each ablation arm against AdamW (every ablation arm has the baseline's optimizer steps).
    Many rows at 95% each: expect about one in twenty to leave 0 by chance; their Holm-adjusted
    verdicts (family "ablations", kl_utils.reporting.verdicts) control that."""
    names = {"rho": "SAM at rho = {}", "k": "formatting with k = {} copies", "family": "formatting family {} alone",
             "rho_k": "format + SAM at k/rho = {}"}
    found = {r.get("arm"): ablation_of(r.get("arm"), r.get("config")) for r in recs}
    rows = []
    for arm in sorted(a for a, ablation in found.items() if ablation):
        factor, level, claim = found[arm][:3]
        row = compare(recs, claim, "baseline", arm, "steps", f"ablation: {names[factor].format(level)} vs AdamW")
        if row is not None:
            rows.append(row)
    return rows


def analysis_records(profile: str, cfg: dict | None) -> dict[str, list[dict]]:
    """The records each analysis module (kl_utils.analysis.<name>) reads, of the profile's current
    settings only: diversity runs of the current data / model / analysis config, and probe /
    sharpness measurements of the current main-experiment runs."""
    from kl_utils.analysis import diversity
    arm_recs = current_arm_records(profile, cfg)
    current = {r["run_id"] for r in arm_recs}
    probed = [r for r in records.distinct_runs(arm_recs) if r.get("final_facts")]  # arms probed right after CPT (analysis.probe_after_cpt)
    div = diversity.load_records(profile, cfg) if cfg is not None else records.load_run_records(profile, kind="diversity")
    of_current = lambda kind: [r for r in records.load_run_records(profile, kind=kind) if r.get("source_run_id") in current]
    probe_arm, sharp = of_current("probe_arm"), of_current("sharpness")
    return {"probe": div + probe_arm + probed, "diversity": div, "sharpness": sharp}


def analysis_rows(profile: str, cfg: dict | None = None) -> list[dict]:
    """Rows from the analysis modules (C1 probe, C2 diversity, sharpness), with the run ids of
    the records each module's rows were computed from."""
    from kl_utils.analysis import diversity, probe, sharpness  # here: they import torch
    modules = {"probe": probe, "diversity": diversity, "sharpness": sharpness}
    rows = []
    for name, recs in analysis_records(profile, cfg).items():
        mod = modules[name]
        ids = " ".join(sorted(r["run_id"] for r in recs))
        rows += [dict(r, run_ids=ids) for r in mod.claim_rows(recs)]
    return rows


def build(profile: str, cfg: dict | None = None) -> list[dict]:
    """Every claims row of a profile, annotated by kl_utils.reporting.verdicts (test, random effects over the
    profile's `pairs:`, Holm). With `cfg`, only records of its current config count."""
    arm_recs = current_arm_records(profile, cfg)
    rows = main_rows(arm_recs) + ablation_rows(arm_recs) + analysis_rows(profile, cfg)
    rows = sorted(rows, key=lambda r: (r["claim"], r.get("budget", ""), r["comparison"]))
    return verdicts.annotate(rows, verdicts.pair_records(profile, cfg, current_arm_records))


def rows_of_arms(rows: list[dict], arms) -> list[dict]:
    """The arm-comparison rows whose two arms (learning-rate variants count as their arm) are in `arms`."""
    arms = set(arms)
    base = lambda a: (a or "").split("@")[0]
    return [r for r in rows if base(r.get("arm_a")) in arms and base(r.get("arm_b")) in arms]


def present(x) -> bool:
    """A cell with a value: not None, "" or nan (rows from a DataFrame carry nan for missing keys)."""
    return x is not None and x != "" and not (isinstance(x, float) and math.isnan(x))


def describe(rows: list[dict]) -> list[str]:
    """One plain sentence per row, for notebooks and reports (numbers straight from the rows)."""
    out = []
    for r in rows:
        ci = "" if r["n_seeds"] < 2 else f" [95% CI {float(r['ci_low']):+.3f}, {float(r['ci_high']):+.3f}]"
        test = f" ({r['test']}, margin {float(r['margin']):.2f})" if present(r.get("margin")) else ""
        line = (f"{r['claim']} ({r['budget']}-matched) {r['comparison']}: {r.get('arm_b', 'b')} {float(r['mean_b']):.3f} vs "
                f"{r.get('arm_a', 'a')} {float(r['mean_a']):.3f}, diff {float(r['diff']):+.3f}{ci}, "
                f"{r['n_seeds']} seeds -> {r['verdict'].upper()}{test}")
        if present(r.get("re_diff")):
            line += (f"; over {int(r['n_pairs'])} (base model, data draw) pairs: {float(r['re_diff']):+.3f} [{float(r['re_ci_low']):+.3f}, "
                     f"{float(r['re_ci_high']):+.3f}] -> {r['re_verdict'].upper()}")
        if present(r.get("verdict_holm")):
            line += f"; Holm ({r['family']}): {r['verdict_holm'].upper()}"
        out.append(line)
    return out


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
    return buf.getvalue()


def write(profile: str, cfg: dict | None = None) -> Path:
    """Rebuild results/<profile>/claims.csv from the records (atomically)."""
    path = results_dir(profile) / "claims.csv"
    records.atomic_write_text(path, to_csv(build(profile, cfg)))
    return path


def read(profile: str) -> list[dict]:
    with open(results_dir(profile) / "claims.csv") as f:
        return list(csv.DictReader(f))


def read_csv(profile: str) -> list[dict]:
    """The rows of results/<profile>/claims.csv as written (strings), [] when there is none."""
    path = results_dir(profile) / "claims.csv"
    return list(csv.DictReader(io.StringIO(path.read_text()))) if path.exists() else []


def across_long(profiles: list[str], metric: str = "test_em") -> list[dict]:
    """The claim rows on `metric` that two or more of `profiles` have, one dict per (row, profile) with
    numbers: claim, comparison, budget, profile, diff, ci_low, ci_high, verdict, n_seeds."""
    rows, count = [], {}
    for prof in profiles:
        for r in read_csv(prof):
            if r["metric"] != metric or "" in (r["diff"], r["ci_low"], r["ci_high"]) or r["ci_low"] == "nan":
                continue
            key = (r["claim"], r["comparison"], r["budget"])
            count[key] = count.get(key, 0) + 1
            rows.append({"claim": key[0], "comparison": key[1], "budget": key[2], "profile": prof,
                         "diff": float(r["diff"]), "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]),
                         "verdict": r["verdict"], "n_seeds": int(r["n_seeds"])})
    need = min(2, len(profiles))
    return [r for r in rows if count[(r["claim"], r["comparison"], r["budget"])] >= need]


def across(profiles: list[str], pooled: bool = False) -> list[dict]:
    """Each claim row (claim, comparison, budget, metric) of several profiles side by side -- e.g.
    the same protocol on different base models -- with `agree`: every profile that has the row
    gives it the same verdict. Rows of the first profile first. pooled: where a row was pooled over
    two or more (base model, data draw) pairs, show that estimate ("5 pairs") instead of the
    within-pair one over CPT seeds ("n=3"): the figure to set beside another design's."""
    table: dict[tuple, dict] = {}
    for prof in profiles:
        for r in read_csv(prof):
            key = (r["claim"], r["comparison"], r["budget"], r["metric"])
            row = table.setdefault(key, dict(zip(("claim", "comparison", "budget", "metric"), key)))
            over_pairs = pooled and r.get("re_verdict") and int(r.get("n_pairs") or 0) >= 2
            d, lo, hi, verdict = ((r["re_diff"], r["re_ci_low"], r["re_ci_high"], r["re_verdict"]) if over_pairs else
                                  (r["diff"], r["ci_low"], r["ci_high"], r["verdict"]))
            ci = f" [{float(lo):+.3f}, {float(hi):+.3f}]" if "" not in (lo, hi) and lo != "nan" else ""
            diff = f"{float(d):+.3f}" if d not in ("", "nan") else "n/a"
            row[prof] = f"{diff}{ci} {verdict} " + (f"({r['n_pairs']} pairs)" if over_pairs else f"(n={r['n_seeds']})")
            row.setdefault("_verdicts", set()).add(verdict)
    out = []
    for row in table.values():
        verdicts = row.pop("_verdicts")
        out.append({**row, **{p: row.get(p, "") for p in profiles}, "agree": len(verdicts) == 1})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None)
    ap.add_argument("--across", nargs="+", metavar="PROFILE",
                    help="print the claims.csv rows of these profiles side by side (reads, rebuilds nothing)")
    args = ap.parse_args(argv)
    if args.across:
        for prof in args.across:
            if not (results_dir(prof) / "claims.csv").exists():
                load_config(prof)  # an unknown profile: one line naming the valid ones
                ap.error(f"{results_dir(prof) / 'claims.csv'} does not exist (python -m kl_utils claims --profile {prof})")
        rows = across(args.across)
        for r in rows:
            if sum(bool(r[p]) for p in args.across) >= min(2, len(args.across)):  # rows shared by two or more
                print(f"{r['claim']} {r['comparison']} [{r['budget']}, {r['metric']}]"
                      f"{'' if r['agree'] else '   <-- verdicts differ'}")
                for p in args.across:
                    print(f"    {p:<14}{r[p] or '-'}")
        return
    profile, cfg = load_config(args.profile)
    require_records(profile)
    path = write(profile, cfg)
    print(path.read_text())


def require_records(profile: str) -> None:
    """A one-line error, before anything is written, for a profile with no run records here."""
    from kl_utils.core.command import UserError
    from kl_utils.core.paths import runs_dir
    if not records.load_run_records(profile):
        raise UserError(f"{runs_dir(profile)}: no run records of {profile} (train them first: "
                        f"python -m kl_utils run --profile {profile}), so no claims to write")


if __name__ == "__main__":
    import sys

    from kl_utils.core.command import entry
    sys.exit(entry(main))

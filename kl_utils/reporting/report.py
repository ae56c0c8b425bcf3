"""results/<profile>/REPORT.md: the claims table, the headline numbers, the figures, the exact
environment and how to reproduce — written from run records only (notebook 07, and again by
`make reproduce` once the end-to-end wall time is known).

    python -m kl_utils report --profile cpu [--blocks]   # --blocks: refresh the generated blocks in README.md and docs/*.md
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from kl_utils.core import records
from kl_utils.analysis import stats
from kl_utils.reporting import claims, figures
from kl_utils.config.arms import is_current
from kl_utils.config.profiles import load_config
from kl_utils.core.paths import ROOT, figures_dir, results_dir

# What the paper says (STUDY.md), one line per claim.
PAPER = {
    "C1": "fact tokens act as labels: predicting a fact in unseen paraphrases tracks answering questions about it",
    "C2": "more distinct paraphrases per fact raise held-out QA; repeating one document does not",
    "C3": "CPT on formatting-augmented documents beats plain CPT on held-out QA, changing no fact",
    "C4": "SAM (AdamW base) beats AdamW on held-out QA and finds flatter minima",
    "C5": "augmentation + SAM is at least as good as either alone",
    "C6": "augmented QA pairs and SAM during instruction tuning also help, also in the PIT order",
    "C7": "with paraphrased documents, formatting augmentation and SAM on top give further gains",
    "regime": "(our control, not a claim of the paper) more CPT epochs still raise the baseline's held-out QA; supported = the shorter run was under-trained",
}


def doc_blocks(profile: str, cfg: dict) -> dict[tuple[str, str], str]:
    """The generated blocks of a profile (README.md, docs/*.md), {(start marker, end marker): markdown}: the headline
    table (`cpu`: the unnamed markers; any other profile: markers naming it), the verdicts of its
    headline family and of its near-convergence rows (from claims.csv), and, for a profile with
    `beside:`, its claims next to the other profiles'. A block is written only where README has its markers."""
    tag = "" if profile == "cpu" else f" {profile}"
    blocks = {(f"<!-- headline{tag}:start -->", f"<!-- headline{tag}:end -->"):
              headline_markdown(claims.current_arm_records(profile, cfg))}
    rows = claims.read_csv(profile)
    blocks[(f"<!-- claims{tag}:start -->", f"<!-- claims{tag}:end -->")] = \
        verdicts_markdown([r for r in rows if r.get("family") == "headline"])
    near = set(figures.NEAR_CONVERGENCE)
    blocks[(f"<!-- near{tag}:start -->", f"<!-- near{tag}:end -->")] = \
        verdicts_markdown([r for r in rows if r.get("arm_a") in near and r.get("arm_b") in near and r["metric"] == "test_em"])
    beside = beside_table(profile, cfg)
    if beside:
        blocks[(f"<!-- beside{tag}:start -->", f"<!-- beside{tag}:end -->")] = beside
    blocks[(f"<!-- per-seed{tag}:start -->", f"<!-- per-seed{tag}:end -->")] = per_seed_markdown(profile, cfg)
    return blocks


def _em_cell(metrics: dict) -> str:
    train = metrics.get("train_em")
    return f"{metrics['test_em']:.3f}" + (f" ({train:.3f})" if train is not None else "")


def per_seed_markdown(profile: str, cfg: dict) -> str:
    """Every cell of the profile's grids: held-out EM (train-half EM) per seed, '—' where no record of the
    current config exists yet, blank where no grid runs that seed; CPT updates and gradient evaluations from the records. The status table of
    a grid that fills over several sessions (docs/cpu-llm.md), written from the records, never by hand."""
    from kl_utils.config.arms import grads_per_step, grid_cells, home_grids
    have = {(r["arm"], r["seed"]): r for r in claims.current_arm_records(profile, cfg)}
    cells = {name: grid_cells(cfg, name) for name in cfg.get("grids") or {}}
    planned = {cell for grid in cells.values() for cell in grid}  # an arm may run more seeds in another grid
    seeds = sorted({seed for _, seed in planned})
    grid_of = home_grids(cfg)
    lines = ["| grid | arm | CPT updates | CPT gradients | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|---|" + "---|" * len(seeds)]
    for arm, grid in grid_of.items():
        recs = [have[(arm, s)] for s in seeds if (arm, s) in have]
        steps = recs[0]["optimizer_steps"]["cpt"] if recs else None
        grads = f"{steps * grads_per_step(recs[0]['config']['cpt']):.0f}" if recs else "—"
        row = [_em_cell(have[(arm, s)]["metrics"]) if (arm, s) in have else ("—" if (arm, s) in planned else "")
               for s in seeds]
        lines.append(f"| {grid} | `{arm}` | {steps if steps is not None else '—'} | {grads} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _num(x, digits=3):
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return "—"


def _ci_cell(diff, low, high) -> str:
    if _num(diff) == "—":
        return "—"
    return f"{_num(diff)} [{_num(low)}, {_num(high)}]" if _num(low) not in ("—", "nan") else f"{_num(diff)} (no CI)"


def _test_cell(r: dict) -> str:
    return r.get("test", "") + (f", margin {float(r['margin']):.2f}" if claims.present(r.get("margin")) else "")


def _holm_cell(r: dict) -> str:
    return f"**{r['verdict_holm']}** ({r['family']})" if claims.present(r.get("verdict_holm")) else "—"


def claims_markdown(rows: list[dict]) -> str:
    lines = ["| claim | the paper says | comparison (b vs a) | budget | metric | a | b | within-pair diff b − a [95% CI] | seeds "
             "| verdict | test | pairs | random effects over pairs [95% CI] | verdict over pairs | Holm verdict (family) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        arms = f": `{r['arm_b']}` vs `{r['arm_a']}`" if r.get("arm_a") else ""
        test, holm = _test_cell(r), _holm_cell(r)
        lines.append(f"| {r['claim']} | {PAPER.get(r['claim'], '')} | {r['comparison']}{arms} "
                     f"| {r['budget']} | {r['metric']} | {_num(r['mean_a'])} | {_num(r['mean_b'])} "
                     f"| {_ci_cell(r['diff'], r['ci_low'], r['ci_high'])} | {r['n_seeds']} | {r['verdict']} | {test} "
                     f"| {r.get('n_pairs') or '—'} | {_ci_cell(r.get('re_diff'), r.get('re_ci_low'), r.get('re_ci_high'))} "
                     f"| {r['re_verdict'] if claims.present(r.get('re_verdict')) else '—'} | {holm} |")
    return "\n".join(lines)


def verdicts_markdown(rows: list[dict]) -> str:
    """README's compact view of claims rows: the estimate within the profile's own (base model, data
    draw) pair over CPT seeds, the random-effects estimate over the pairs, and the Holm verdict."""
    lines = ["| claim | comparison (b vs a) | budget | test | this pair: diff [95% CI], seeds → verdict "
             "| pairs | over pairs: diff [95% CI] → verdict | Holm (family) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        arms = f" (`{r['arm_b']}` vs `{r['arm_a']}`)" if r.get("arm_a") else ""
        arms += f", {r['metric']}" if r["metric"] != "test_em" else ""
        test, holm = _test_cell(r), _holm_cell(r)
        over = (f"{_ci_cell(r.get('re_diff'), r.get('re_ci_low'), r.get('re_ci_high'))} → {r['re_verdict']}"
                if claims.present(r.get("re_verdict")) else "—")
        lines.append(f"| {r['claim']} | {r['comparison']}{arms} | {r['budget']} | {test} "
                     f"| {_ci_cell(r['diff'], r['ci_low'], r['ci_high'])}, {r['n_seeds']} → {r['verdict']} "
                     f"| {r.get('n_pairs') or '—'} | {over} | {holm} |")
    return "\n".join(lines)


def headline_markdown(arm_recs: list[dict]) -> str:
    """Held-out QA per headline arm (mean ± 95% CI over seeds), both budgets."""
    df = figures.arm_frame(arm_recs) if arm_recs else None
    lines = ["| arm | step-matched: held-out EM (mean ± 95% CI) | seeds | epoch-matched: held-out EM | seeds |",
             "|---|---|---|---|---|"]
    if df is None:
        return "\n".join(lines)
    for i, label in enumerate(["AdamW (baseline)", "+ format augmentation", "+ SAM", "+ format + SAM"]):
        cells = []
        for budget in ("steps", "epochs"):
            arm = figures.HEADLINE[budget][i]
            vals = df[df.arm == arm].test_em
            cells += [stats.fmt(stats.mean_ci(vals)) if len(vals) else "not run", str(len(vals))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def beside_markdown(profile: str, cfg: dict) -> str:
    """The profile's claim rows next to other profiles' (`beside:`, e.g. the miniature next to the
    pretrained LLM): the same comparison, one column per profile, and whether the verdicts agree."""
    others = [p for p in cfg.get("beside") or [] if claims.read_csv(p)]
    if not others or not claims.read_csv(profile):
        return ""
    table = beside_table(profile, cfg)
    return (f"## Beside {', '.join(f'`{o}`' for o in others)}\nThe comparisons both profiles ran (paired difference "
            "b − a of held-out QA EM [95% CI], verdict): over the (base model, data draw) "
            "pairs where a profile has two or more (random effects, 'k pairs'), else over its seeds ('n='; in `cpu-llm` "
            "each seed is a data draw).\n\n" + table + "\n\n") if table else ""


def beside_table(profile: str, cfg: dict) -> str:
    """The table of beside_markdown (empty when no other profile of `beside:` has claims)."""
    others = [p for p in cfg.get("beside") or [] if claims.read_csv(p)]
    if not others or not claims.read_csv(profile):
        return ""
    rows = [r for r in claims.across([profile, *others], pooled=True) if r["metric"] == "test_em" or r["comparison"].startswith("QA answer rate")]
    rows = [r for r in rows if r[profile] and any(r[o] for o in others)]
    head = f"| claim | comparison | budget | `{profile}` | " + " | ".join(f"`{o}`" for o in others) + " | same verdict |"
    lines = [head, "|" + "---|" * (5 + len(others))]
    lines += [f"| {r['claim']} | {r['comparison']} | {r['budget']} | {r[profile] or '—'} | "
              + " | ".join(r[o] or "—" for o in others) + f" | {'yes' if r['agree'] else 'no'} |" for r in rows]
    return "\n".join(lines)


def environment_markdown(profile: str, recs: list[dict]) -> str:
    commits = sorted({r["env"]["git_commit"] for r in recs if "env" in r})
    env = recs[-1]["env"] if recs else records.environment()
    timing_path = results_dir(profile) / "timing.json"
    if timing_path.exists():
        t = json.loads(timing_path.read_text())
        wall = f"{t['wall_time_s']} s end to end (`make reproduce PROFILE={profile}`); per notebook: " + \
               ", ".join(f"{k} {v} s" for k, v in t["per_notebook_s"].items())
    else:
        wall = f"{sum(r.get('wall_time_s', 0) for r in records.distinct_runs(recs)):.0f} s summed over run records (no timing.json yet)"
    pk = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    return "\n".join([f"- profile: `{profile}`", f"- git commit(s) of the run records: {', '.join(f'`{c}`' for c in commits)}",
                      f"- packages: {pk}", f"- python {env['python']} on {env['platform']}, {env['cpu_count']} CPUs, "
                      f"GPU: {env.get('cuda') or 'none'}", f"- wall time: {wall}"])


def controls_markdown(profile: str, cfg: dict) -> str:
    """The controls (notebook 06) when they live in another profile (cpu: cpu-full): its claims rows
    of its control grids (kl_utils.config.arms.CONTROL_GRIDS), from that profile's records, with a pointer to its figures."""
    other = (cfg.get("controls") or {}).get("profile")
    if not other or other == profile:
        return ""
    from kl_utils.config.arms import control_cells
    ocfg = load_config(other)[1]
    rows = claims.rows_of_arms(claims.build(other, ocfg), {a for a, _ in control_cells(ocfg)})
    if not rows:
        return f"## Controls (profile `{other}`)\nNo records yet: `make controls`.\n\n"
    manifest_path = figures_dir(other) / "manifest.json"
    names = sorted(n for n in (json.loads(manifest_path.read_text()) if manifest_path.exists() else {})
                   if n.startswith("controls_"))
    figs = ", ".join(f"[{n}](../../figures/{other}/{n}.png)" for n in names)
    abl = [r for r in rows if r["comparison"].startswith("ablation:")]
    main = [r for r in rows if not r["comparison"].startswith("ablation:")]
    abl_text = f"""
### Ablations against AdamW (same optimizer steps)
One row per ablation arm; with this many comparisons at 95% each, about one in twenty leaves 0 by chance:
read the Holm verdict (family "ablations").

{claims_markdown(abl)}
""" if abl else ""
    return f"""## Controls (profile `{other}`, notebook 06)
The saturation sweep (AdamW at more CPT epochs; the methods against AdamW with as many optimizer steps or
gradient evaluations), the IT-side arms of C6, C7 / PIT, the ablations and the learning rates tuned on validation
("lr tuned on valid": both arms' variants chosen on validation EM), from `results/{other}/claims.csv`.
Figures: {figs or "none yet"}.

{claims_markdown(main)}
{abl_text}
"""


def write_report(profile: str, cfg: dict) -> Path:
    arm_recs = claims.current_arm_records(profile, cfg)
    all_recs = records.load_run_records(profile)
    rows = claims.build(profile, cfg)
    manifest_path = figures_dir(profile) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    figs = "\n".join(f"- [{name}](../../figures/{profile}/{name}.png) ([PDF](../../figures/{profile}/{name}.pdf))"
                     for name in sorted(manifest)) or "(no figures yet)"
    text = f"""# Report — profile `{profile}`

Written by `notebooks/07_results.ipynb` (and refreshed by `make reproduce`) from {len(all_recs)} run records in
`results/{profile}/runs/`; the claims table is `results/{profile}/claims.csv`. Every number below comes from
those records.

## Headline: held-out QA exact match
{headline_markdown(arm_recs)}

## Claims
Each row names its test (docs/statistics.md). *Superiority*: *supported* when the 95% CI of the paired
difference is above 0, *contradicted* when below 0, *inconclusive* when it contains 0 (for flatness, lower is
better). *Non-inferiority* (C5, margin 0.02 EM stated in STUDY.md): *non-inferior* when the CI's lower end is
above −margin, *inferior* when its upper end is below −margin. *CMH*: the C1 per-fact test stratified by run
(Mantel-Haenszel risk difference of the answer rate, Cochran-Mantel-Haenszel p). *Descriptive* rows (correlations)
are not tested. "Within pair": over CPT seeds given one base model and one data draw (`verdict`). "Over pairs":
random-effects meta-analysis over the (base model, data draw) pairs of `pairs:` in the profile (REML, Hartung-Knapp
CI). The Holm verdict uses the over-pairs estimate where there are two or more pairs, else the within-pair one,
Holm-Bonferroni adjusted within its family (headline, controls, ablations) at 0.05.

{claims_markdown(rows)}

{controls_markdown(profile, cfg)}{beside_markdown(profile, cfg)}## Figures
{figs}

## Environment
{environment_markdown(profile, all_recs)}

## Reproduce
```
make figures PROFILE={profile}      # redraw every figure, claims.csv and this report from the run records (trains nothing)
make reproduce PROFILE={profile}    # train every run again from scratch and compare with these records
python -m kl_utils claims --profile {profile}   # only claims.csv, from the records
python -m kl_utils report --profile {profile}   # only claims.csv and this report
```
"""
    path = results_dir(profile) / "REPORT.md"
    records.atomic_write_text(path, text)
    return path


def _block(start: str, body: str, end: str) -> str:
    """A generated README block as written and as checked: markers on their own lines around the body."""
    return f"{start}\n{body}\n{end}"


def block_files() -> list[Path]:
    """The files that may hold generated blocks (doc_blocks): README.md and docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def update_blocks(profile: str, cfg: dict, doc: Path = ROOT / "README.md") -> bool:
    """Replace the profile's generated blocks in `doc` (doc_blocks: between their markers) with the
    report's tables. Returns whether the file changed."""
    text = new = doc.read_text()
    for (start, end), body in doc_blocks(profile, cfg).items():
        block = _block(start, body, end)
        new = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, new, flags=re.S)
    if new != text:
        records.atomic_write_text(doc, new)
    return new != text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None)
    # --readme: the flag's earlier name, kept so that old notes still work
    ap.add_argument("--blocks", "--readme", dest="blocks", action="store_true",
                    help="also refresh the profile's generated blocks in README.md and docs/*.md")
    args = ap.parse_args(argv)
    profile, cfg = load_config(args.profile)
    claims.require_records(profile)
    claims.write(profile, cfg)
    print(f"wrote {write_report(profile, cfg)}")
    if args.blocks:
        for path in block_files():
            if update_blocks(profile, cfg, path):
                print(f"{path.relative_to(ROOT)}: blocks of {profile} updated")


def provenance_problems(profile: str, cfg: dict, doc: Path | None = None) -> list[str]:
    """Everything a reader sees must have run records behind it, of the profile's current config:
    claims.csv equal to its rebuild from the records, every run id a table row or a figure names
    present in results/<profile>/runs (or, for figures across pairs, in a `pairs:` profile's), every
    arm record named there matching its profile's current arm config, every figure in the manifest, and (optionally) README's headline block equal to
    the report's. Returns the problems found (empty: all good)."""
    problems = []
    runs = {r["run_id"]: r for r in records.load_run_records(profile)}
    # figures across (base model, data draw) pairs name records of the other pairs: each is checked
    # against its own profile's current config
    config_of = {run_id: cfg for run_id in runs}
    for pair in cfg.get("pairs") or []:
        if pair != profile:
            pcfg = load_config(pair)[1]
            for r in records.load_run_records(pair):
                runs.setdefault(r["run_id"], r)
                config_of.setdefault(r["run_id"], pcfg)
    path = results_dir(profile) / "claims.csv"
    if not path.exists():
        return [f"{path} is missing"]
    rows = claims.build(profile, cfg)
    if path.read_text() != claims.to_csv(rows):
        problems.append(f"{path} differs from its rebuild from the run records (python -m kl_utils claims --profile {profile})")
    named = {f"claims.csv row {r['claim']} {r['comparison']} ({r['budget']})": (r.get("run_ids") or "").split() for r in rows}
    manifest_path = figures_dir(profile) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for png in sorted(figures_dir(profile).glob("*.png")):
        if png.stem not in manifest:
            problems.append(f"figure {png.name} has no manifest entry (no run records behind it)")
    for name, entry in manifest.items():
        ids = (entry or {}).get("run_ids") or []
        if not ids and not (entry or {}).get("source"):
            problems.append(f"figure {name} names no run records (and no data source)")
        named[f"figure {name}"] = ids
    for where, ids in named.items():
        for run_id in ids:
            rec = runs.get(run_id)
            if rec is None:
                problems.append(f"{where}: run record {run_id} does not exist")
            elif rec.get("kind") == "arm" and not is_current(rec, config_of[run_id]):
                problems.append(f"{where}: run record {run_id} does not match the profile's current config of arm {rec['arm']!r}")
    if doc is not None:
        text = doc.read_text()
        for (start, end), body in doc_blocks(profile, cfg).items():
            if start in text and _block(start, body, end) not in text:
                problems.append(f"{doc.name}'s block {start} differs from the {profile} report "
                                f"(python -m kl_utils report --profile {profile} --blocks)")
    return problems


if __name__ == "__main__":
    import sys

    from kl_utils.core import command
    sys.exit(command.entry(main))

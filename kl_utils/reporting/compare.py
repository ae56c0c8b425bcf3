"""How close a reproduction came: its run records and claims against the committed ones.

Records are paired by run id (a hash of everything that defines the run, so equal ids mean the same
experiment). A pair is *identical* when every metric is equal (numbers exactly, to the last bit the
JSON keeps); otherwise the largest absolute deviation and the metric it is in are reported. Claims rows
are paired by (claim, comparison, budget, metric): a changed verdict is listed with both intervals.
On one machine kind training is bit-identical run to run; across CPU kinds float kernels differ, so
the report names both CPUs.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from kl_utils.core import records


def flat_metrics(obj, prefix: str = "") -> dict:
    """{dotted key: leaf} of a nested metrics dict (lists indexed)."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in flat_metrics(val, f"{prefix}{key}.").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in flat_metrics(val, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}


def _deviation(a, b) -> float:
    """|a - b| for two numbers; inf when the values are not comparable numbers and differ."""
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        return abs(float(a) - float(b))
    return 0.0 if a == b else math.inf


# Metrics that measure the machine, not the result (the fact audit times each method): not compared.
TIMING_METRICS = ("seconds",)


def result_metrics(record: dict) -> dict:
    return {k: v for k, v in flat_metrics(record.get("metrics", {})).items() if k.split(".")[-1] not in TIMING_METRICS}


def compare_records(committed: dict, fresh: dict) -> dict:
    """{identical, max_deviation, metric, n_metrics, history_equal} of one pair of records (timings
    left out)."""
    a, b = result_metrics(committed), result_metrics(fresh)
    worst, where = 0.0, None
    for key in sorted(set(a) | set(b)):
        d = _deviation(a.get(key), b.get(key))
        if d > worst:
            worst, where = d, key
    hist = committed.get("history") == fresh.get("history") if "history" in committed else None
    prec = (records.record_precision(committed), records.record_precision(fresh))
    old_cfg, new_cfg = committed.get("config") or {}, fresh.get("config") or {}
    inputs = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
    return {"identical": worst == 0.0, "max_deviation": worst, "metric": where, "n_metrics": len(a),
            "history_equal": hist, "kind": committed.get("kind"), "config_differs": inputs,
            "other_arithmetic": prec[0] != prec[1], "precision": prec}


def load_records(folder: Path) -> dict[str, dict]:
    """The run records of a folder by run id (each file parsed once)."""
    recs = (json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json")))
    return {r["run_id"]: r for r in recs}


def read_claims(path: Path) -> dict[tuple, dict]:
    if not Path(path).exists():
        return {}
    rows = csv.DictReader(io.StringIO(Path(path).read_text()))
    return {(r["claim"], r["comparison"], r["budget"], r["metric"]): r for r in rows}


def _float(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# The verdicts of a claims row, from one (base model, data draw) pair to the whole design: the pair's own
# interval, the random-effects interval over every pair of the design, and that one after Holm.
VERDICT_LEVELS = (("verdict", "single pair"), ("re_verdict", "pooled over pairs"), ("verdict_holm", "pooled, Holm"))


def compare_claims(committed: dict, fresh: dict) -> dict:
    """Claims rows paired by key. `verdicts_changed`: rows whose single-pair verdict changed (as before);
    `levels`: for each verdict level (VERDICT_LEVELS) the rows where it is present in both and how many
    changed; `headline`: every row of the headline family with all three levels, committed and fresh. The
    pooled columns of a reproduction's claims.csv are recomputed with the reproduced pair in place of the
    committed one (the other pairs' records are copied into its tree as committed)."""
    changed, worst = [], 0.0
    levels = {col: {"label": label, "n": 0, "changed": []} for col, label in VERDICT_LEVELS}
    headline = []
    for key in sorted(set(committed) & set(fresh)):
        a, b = committed[key], fresh[key]
        d = abs(_float(a["diff"]) - _float(b["diff"]))
        worst = max(worst, d if not math.isnan(d) else 0.0)
        if a["verdict"] != b["verdict"]:
            changed.append({"key": key, "committed": a, "fresh": b})
        for col in levels:
            if a.get(col) and b.get(col):
                levels[col]["n"] += 1
                if a[col] != b[col]:
                    levels[col]["changed"].append(key)
        if a.get("family") == "headline":
            headline.append({"key": key, **{col: (a.get(col) or "", b.get(col) or "") for col in levels},
                             "re_ci": ((a.get("re_diff"), a.get("re_ci_low"), a.get("re_ci_high")),
                                       (b.get("re_diff"), b.get("re_ci_low"), b.get("re_ci_high")))})
    return {"n_rows": len(committed), "n_both": len(set(committed) & set(fresh)), "verdicts_changed": changed,
            "levels": levels, "headline": headline,
            "max_diff_deviation": worst, "only_committed": sorted(set(committed) - set(fresh)),
            "only_fresh": sorted(set(fresh) - set(committed))}


def compare_profile(profile: str, committed: Path, fresh: Path) -> dict:
    """Compare the records and claims.csv of results/<profile> (committed) with a reproduction's."""
    old, new = load_records(Path(committed) / "runs"), load_records(Path(fresh) / "runs")
    pairs = {rid: compare_records(old[rid], new[rid]) for rid in sorted(set(old) & set(new))}
    cpu_of = lambda recs: sorted({json.dumps(r.get("env", {}).get("cpu")) for r in recs.values()
                                  if r.get("env", {}).get("cpu")})
    not_reproduced, new_only = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    # the same (kind, arm, seed) made in another precision (an `auto` stage on another host): a run of
    # other arithmetic, not a failure to reproduce
    cell = lambda r: (r.get("kind"), r.get("arm"), r.get("seed"))
    fresh_cells = {cell(new[rid]): rid for rid in new_only if new[rid].get("arm")}
    other = {rid: fresh_cells[cell(old[rid])] for rid in not_reproduced if old[rid].get("arm") and cell(old[rid]) in fresh_cells
             and records.record_precision(old[rid]) != records.record_precision(new[fresh_cells[cell(old[rid])]])}
    return {"profile": profile, "n_committed": len(old), "n_fresh": len(new), "pairs": pairs,
            "not_reproduced": [r for r in not_reproduced if r not in other],
            "new_only": [r for r in new_only if r not in other.values()], "other_arithmetic": other,
            "claims": compare_claims(read_claims(Path(committed) / "claims.csv"), read_claims(Path(fresh) / "claims.csv")),
            "cpu_committed": [json.loads(c) for c in cpu_of(old)], "cpu_fresh": [json.loads(c) for c in cpu_of(new)]}


def summary_line(result: dict) -> str:
    pairs = result["pairs"]
    same = sum(p["identical"] for p in pairs.values())
    line = f"reproduced {len(pairs)} / {result['n_committed']} committed run records of {result['profile']}: "
    # A record whose config differs was made from other inputs (a run id that does not hash its whole
    # config, e.g. the fact audit of whichever Wikipedia documents are at hand): not a reproduction failure.
    arith = {rid for rid, p in pairs.items() if p.get("other_arithmetic")} | set(result.get("other_arithmetic") or {})
    other = {rid for rid, p in pairs.items() if not p["identical"] and p.get("config_differs") and rid not in arith}
    differ = {rid: p for rid, p in pairs.items() if not p["identical"] and rid not in other | arith}
    if pairs and same == len(pairs):
        line += "identical"
    elif pairs:
        line += f"{same} identical"
        if differ:
            worst = max(differ.items(), key=lambda kv: kv[1]["max_deviation"])
            line += (f", {len(differ)} differ (largest deviation {worst[1]['max_deviation']:.4g} "
                     f"in {worst[1]['metric']} of {worst[0]})")
        if other:
            line += f", {len(other)} made from other inputs ({', '.join(sorted(other))})"
    if arith:
        line += f", {len(arith)} made in other arithmetic (another precision: not compared)"
    else:
        line += "none in common"
    changed = result["claims"]["verdicts_changed"]
    pooled = (result["claims"].get("levels") or {}).get("re_verdict")
    if not result["claims"]["n_rows"]:
        line += "; no committed claims.csv"
    else:
        line += f"; {len(changed)} claim verdict(s) changed"
        if pooled and pooled["n"]:
            line += f" (single-pair rows), {len(pooled['changed'])} of {pooled['n']} pooled over pairs"
    return line + (f" ({result['wall_time_s']} s)" if "wall_time_s" in result else "")


def _cpu(cpus: list[dict]) -> str:
    return "; ".join(f"{c.get('model')} ({' '.join(c.get('isa', [])) or 'no flags recorded'})" for c in cpus) or \
        "not recorded (records made before CPUs were recorded)"


def _precisions(result: dict, side: str) -> str:
    seen = sorted({json.dumps(p["precision"][0 if side == "committed" else 1], sort_keys=True)
                   for p in result["pairs"].values() if p.get("precision")})
    return "; ".join(", ".join(f"{k} {v}" for k, v in json.loads(x).items()) or "no training stage" for x in seen) or "—"


def markdown(profile: str, result: dict) -> str:
    pairs = result["pairs"]
    differ = sorted(((rid, p) for rid, p in pairs.items() if not p["identical"] and not p.get("other_arithmetic")),
                    key=lambda kv: -kv[1]["max_deviation"])
    arith = [f"`{rid}` ({', '.join(f'{k} {v}' for k, v in p['precision'][0].items())} → "
             f"{', '.join(f'{k} {v}' for k, v in p['precision'][1].items())})" for rid, p in pairs.items() if p.get("other_arithmetic")]
    arith += [f"`{a}` → `{b}`" for a, b in (result.get("other_arithmetic") or {}).items()]
    by_kind: dict[str, list[int]] = {}
    for p in pairs.values():
        by_kind.setdefault(p["kind"], [0, 0])[0 if p["identical"] else 1] += 1
    kinds = "\n".join(f"| {k} | {v[0]} | {v[1]} |" for k, v in sorted(by_kind.items()))
    lines = [f"# Reproduction — profile `{profile}`", "",
             f"**{summary_line(result)}**", "",
             f"Written by `make reproduce PROFILE={profile}` (`python -m kl_utils reproduce`): every run of the profile "
             f"trained from scratch in `results/{profile}/reproduction/`, every notebook run on the new records, then "
             f"the new records compared with the committed ones run id by run id (`kl_utils.reporting.compare`).", "",
             f"- started {result.get('started', '?')} at commit `{result.get('commit', '?')}`; end-to-end notebook time "
             f"{result.get('wall_time_s', '?')} s" + (f" over {result['resumed'] + 1} starts" if result.get("resumed") else ""),
             f"- CPU of this reproduction: {_cpu(result['cpu_fresh'])}",
             f"- CPU of the committed records: {_cpu(result['cpu_committed'])}",
             f"- precision (per stage) of the reproduced records: {_precisions(result, 'fresh')}; of the committed: "
             f"{_precisions(result, 'committed')}. A record made in another precision is other arithmetic, not a "
             "mismatch (docs/speed.md)",
             "- identical = every metric equal to the last bit JSON keeps; training is bit-identical run to run on one "
             "CPU kind, not across kinds (other float kernels), so expect small deviations on another CPU.", "",
             "| record kind | identical | differ |", "|---|---|---|", kinds, ""]
    if differ:
        lines += ["## Records that differ (largest deviation first)", "",
                  "A record whose config differs was made from other inputs (e.g. `augment-audit` reads the Wiki2023",
                  "documents of `../shared` when a clone has them beside it, else the 20-document sample the project ships).", "",
                  "| run id | largest deviation | in metric | training loss history equal | config differs in |",
                  "|---|---|---|---|---|"]
        lines += [f"| {rid} | {p['max_deviation']:.4g} | {p['metric']} | {p['history_equal']} | "
                  f"{', '.join(p.get('config_differs') or []) or '—'} |" for rid, p in differ[:40]]
        lines += [f"| ... {len(differ) - 40} more | | | |"] if len(differ) > 40 else []
        lines.append("")
    if arith:
        lines += [f"## Made in other arithmetic ({len(arith)}): another precision, not compared", "", ", ".join(arith[:30])
                  + (" ..." if len(arith) > 30 else ""), ""]
    for title, ids in (("Committed records not reproduced", result["not_reproduced"]),
                       ("Records only in the reproduction", result["new_only"])):
        if ids:
            lines += [f"## {title} ({len(ids)})", "", ", ".join(f"`{i}`" for i in ids[:30]) + (" ..." if len(ids) > 30 else ""), ""]
    c = result["claims"]
    lines += ["## Claims", "", f"{c['n_both']} of {c['n_rows']} committed claims rows reproduced; largest change of a "
              f"difference {c['max_diff_deviation']:.4g}; {len(c['verdicts_changed'])} verdict(s) changed.", ""]
    lines += verdict_levels_markdown(c)
    if c["verdicts_changed"]:
        lines += ["| claim | comparison | budget | metric | committed | reproduced |", "|---|---|---|---|---|---|"]
        fmt = lambda r: f"{r['verdict']} {_float(r['diff']):+.3f} [{_float(r['ci_low']):+.3f}, {_float(r['ci_high']):+.3f}]"
        lines += [f"| {' | '.join(ch['key'])} | {fmt(ch['committed'])} | {fmt(ch['fresh'])} |" for ch in c["verdicts_changed"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def _ci(t) -> str:
    d, lo, hi = (_float(x) for x in t)
    return "—" if math.isnan(d) else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def verdict_levels_markdown(c: dict) -> list[str]:
    """Which verdicts hold: per verdict level, the rows compared and changed; then the headline family's
    rows with the single-pair, pooled and Holm verdicts on both sides."""
    levels = c.get("levels") or {}
    if not levels:
        return []
    out = ["### Which verdicts hold", "",
           "The pooled verdicts are recomputed with the reproduced pair in place of the committed one (the design's "
           "other pairs are read as committed); they are the ones the README's headline table shows.", "",
           "| verdict | rows in both | changed |", "|---|---|---|"]
    out += [f"| {v['label']} | {v['n']} | {len(v['changed'])} |" for v in levels.values()]
    out.append("")
    if c.get("headline"):
        out += ["| claim | comparison | budget | metric | single pair: committed → reproduced | pooled over pairs: "
                "committed → reproduced | pooled, Holm |", "|---|---|---|---|---|---|---|"]
        arrow = lambda pair: "—" if not any(pair) else (f"{pair[0]} (same)" if pair[0] == pair[1] else f"**{pair[0]} → {pair[1]}**")
        for row in c["headline"]:
            pooled = arrow(row["re_verdict"])
            if any(row["re_verdict"]):
                pooled += f"; {_ci(row['re_ci'][0])} → {_ci(row['re_ci'][1])}"
            out.append(f"| {' | '.join(row['key'])} | {arrow(row['verdict'])} | {pooled} | {arrow(row['verdict_holm'])} |")
        out.append("")
    return out

"""`make reproduce` (recompute in a fresh tree, then compare) and `make figures` (redraw only), on
what a fresh clone has: committed-style records, no checkpoints, no caches, no data."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from kl_utils.core import records
from kl_utils.reporting import compare
from kl_utils.tools import reproduce
from kl_utils.training.train import TrainingForbidden, train


def _rec(run_id, metrics, history=None, kind="arm"):
    return {"run_id": run_id, "kind": kind, "metrics": metrics, **({"history": history} if history else {})}


def test_flat_metrics_and_deviation():
    flat = compare.flat_metrics({"a": 1, "b": {"c": [0.5, 2]}, "d": "x"})
    assert flat == {"a": 1, "b.c.0": 0.5, "b.c.1": 2, "d": "x"}
    same = compare.compare_records(_rec("r", {"em": 0.25, "per": {"x": 1}}, [1, 2]), _rec("r", {"em": 0.25, "per": {"x": 1}}, [1, 2]))
    assert same["identical"] and same["max_deviation"] == 0 and same["history_equal"]
    diff = compare.compare_records(_rec("r", {"em": 0.25, "f1": 0.5}), _rec("r", {"em": 0.3125, "f1": 0.5}))
    assert not diff["identical"] and diff["metric"] == "em" and diff["max_deviation"] == pytest.approx(0.0625)
    missing = compare.compare_records(_rec("r", {"em": 0.25}), _rec("r", {}))
    assert not missing["identical"] and missing["metric"] == "em"
    nan = compare.compare_records(_rec("r", {"x": float("nan")}), _rec("r", {"x": float("nan")}))
    assert nan["identical"]
    timed = compare.compare_records(_rec("r", {"rows": [{"seconds": 1.5, "v": 1}]}), _rec("r", {"rows": [{"seconds": 2.0, "v": 1}]}))
    assert timed["identical"]  # a timing is not a result


def _claims(path, verdict, diff):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["claim", "comparison", "budget", "metric", "diff", "ci_low", "ci_high", "verdict"])
        w.writeheader()
        w.writerow({"claim": "C3", "comparison": "format vs AdamW", "budget": "steps", "metric": "test EM",
                    "diff": diff, "ci_low": diff - 0.05, "ci_high": diff + 0.05, "verdict": verdict})


def test_compare_profile_reports_changes(tmp_path):
    for side, em, verdict, diff in (("old", 0.5, "supported", 0.1), ("new", 0.5625, "inconclusive", 0.02)):
        (tmp_path / side / "runs").mkdir(parents=True)
        for rid, m in (("a", {"test_em": 0.25}), ("b", {"test_em": em})):
            (tmp_path / side / "runs" / f"{rid}.json").write_text(json.dumps(_rec(rid, m)))
        _claims(tmp_path / side / "claims.csv", verdict, diff)
    (tmp_path / "old" / "runs" / "c.json").write_text(json.dumps(_rec("c", {})))
    res = compare.compare_profile("p", tmp_path / "old", tmp_path / "new")
    assert res["n_committed"] == 3 and set(res["pairs"]) == {"a", "b"} and res["not_reproduced"] == ["c"]
    line = compare.summary_line(res)
    assert line.startswith("reproduced 2 / 3 committed run records of p: 1 identical, 1 differ (largest deviation 0.0625")
    assert "1 claim verdict(s) changed" in line
    md = compare.markdown("p", res)
    assert "supported +0.100" in md and "inconclusive +0.020" in md and "`c`" in md
    # a record made from other inputs (its config differs) is reported as such, not as a failure
    old_a = json.loads((tmp_path / "old" / "runs" / "a.json").read_text())
    (tmp_path / "new" / "runs" / "a.json").write_text(json.dumps(dict(old_a, config={"wiki": "sample"}, metrics={"test_em": 0.5})))
    line = compare.summary_line(compare.compare_profile("p", tmp_path / "old", tmp_path / "new"))
    assert "0 identical, 1 differ" in line and "1 made from other inputs (a)" in line


def test_reuse_or_write(tmp_path, monkeypatch):
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path))
    calls = []
    compute = lambda: (calls.append(1) or {"x": 1}, None)
    a = records.reuse_or_write("p", "stats", kind="data", config={"n": (1, 2)}, seed=0, compute=compute)
    b = records.reuse_or_write("p", "stats", kind="data", config={"n": (1, 2)}, seed=0, compute=compute)
    assert a["metrics"] == b["metrics"] == {"x": 1} and len(calls) == 1  # the tuple is stored as a list: still equal
    records.reuse_or_write("p", "stats", kind="data", config={"n": 3}, seed=0, compute=compute)
    assert len(calls) == 2  # another config: recomputed
    assert records.existing_record("p", "stats", kind="other") is None


def test_no_train_guard(monkeypatch):
    monkeypatch.setenv("KL_NO_TRAIN", "1")
    with pytest.raises(TrainingForbidden, match="make reproduce"):
        train(None, [{"input_ids": [1], "labels": [1]}], {}, seed=0, pad_id=0)


def test_cpu_is_recorded():
    cpu = records.environment()["cpu"]
    assert cpu["model"] and isinstance(cpu["isa"], list)


def _manifest_ids(figures_root):
    return {p.parent.name: {k: v.get("run_ids") for k, v in json.loads(p.read_text()).items()}
            for p in sorted(figures_root.glob("*/manifest.json"))}


def test_fresh_clone_reproduce_and_redraw(tmp_path):
    """The smoke profile through both paths, from what a clone holds. On the code before this test
    existed, the redraw stopped in notebook 05 (no CPT checkpoints) and reproduce read the committed
    records back instead of recomputing."""
    results, figures = tmp_path / "results", tmp_path / "figures"
    first = reproduce.reproduce("smoke", results_root=results, figures_root=figures, publish_results=True,
                                allow_dirty=True, log=lambda *a: None)
    assert first["n_committed"] == 0 and first["n_fresh"] > 20  # nothing committed yet: all of it is new
    committed = sorted(p.name for p in (results / "smoke" / "runs").glob("*.json"))
    assert len(committed) == first["n_fresh"] and (results / "smoke" / "claims.csv").exists()
    # A clone: records, claims, report and figures; no reproduction tree, no data, cache or checkpoints.
    for part in ("reproduction", "data", "cache", "ckpt", "scratch"):
        shutil.rmtree(results / "smoke" / part, ignore_errors=True)
    claims_before = (results / "smoke" / "claims.csv").read_text()
    manifests_before = _manifest_ids(figures)

    reproduce.redraw("smoke", results_root=results, figures_root=figures, log=lambda *a: None)  # KL_NO_TRAIN inside
    assert sorted(p.name for p in (results / "smoke" / "runs").glob("*.json")) == committed  # no record added
    assert (results / "smoke" / "claims.csv").read_text() == claims_before
    assert _manifest_ids(figures) == manifests_before
    assert not (results / "smoke" / "ckpt").exists()  # nothing was trained

    again = reproduce.reproduce("smoke", results_root=results, figures_root=figures, log=lambda *a: None)
    assert len(again["pairs"]) == len(committed) and not again["not_reproduced"]
    assert all(p["identical"] for p in again["pairs"].values()), compare.summary_line(again)
    assert not again["claims"]["verdicts_changed"] and again["claims"]["max_diff_deviation"] == 0
    report = (results / "smoke" / "REPRODUCTION.md").read_text()
    assert f"reproduced {len(committed)} / {len(committed)} committed run records of smoke: identical" in report


def test_report_beside_another_profile(tmp_path, monkeypatch):
    """REPORT.md's 'Beside' section: the comparisons two profiles share, side by side, with agreement."""
    from kl_utils.reporting import report
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path))
    head = "claim,comparison,budget,metric,diff,ci_low,ci_high,verdict,n_seeds\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "claims.csv").write_text(head + "C3,format vs AdamW,steps,test_em,0.1,0.05,0.15,supported,3\n"
                                               "C4,SAM vs AdamW,steps,test_em,0.0,-0.1,0.1,inconclusive,3\n")
    (tmp_path / "b" / "claims.csv").write_text(head + "C3,format vs AdamW,steps,test_em,-0.1,-0.15,-0.05,contradicted,3\n")
    text = report.beside_markdown("a", {"beside": ["b"]})
    assert "| C3 | format vs AdamW | steps | +0.100 [+0.050, +0.150] supported (n=3) | " \
           "-0.100 [-0.150, -0.050] contradicted (n=3) | no |" in text
    assert "SAM vs AdamW" not in text  # only rows both profiles have
    assert report.beside_markdown("a", {"beside": ["missing"]}) == ""


def test_notebooks_are_published_only_for_cpu_into_the_committed_results(tmp_path, monkeypatch):
    """One rule for both callers (reproduce --publish, figures): the committed notebooks show cpu, and
    only a run that writes the committed results replaces them."""
    written = []
    monkeypatch.setattr("kl_utils.tools.notebooks.publish", lambda src, dst: written.append((src, dst)) or [])
    assert reproduce.publish_notebooks("cpu-llm", tmp_path, reproduce.ROOT / "results") == []
    assert reproduce.publish_notebooks("cpu", tmp_path, tmp_path / "results") == []
    assert written == []
    reproduce.publish_notebooks("cpu", tmp_path, reproduce.ROOT / "results")
    assert written == [(tmp_path, reproduce.NOTEBOOKS_DIR)]


def _claims_rows(path, rows):
    cols = ["claim", "comparison", "budget", "metric", "diff", "ci_low", "ci_high", "verdict", "family",
            "re_diff", "re_ci_low", "re_ci_high", "re_verdict", "verdict_holm"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def test_reproduction_reports_single_pair_and_pooled_verdicts(tmp_path):
    """A row whose single-pair verdict moves while its pooled verdict holds is reported as such, level by level."""
    base = {"claim": "C3", "comparison": "format vs AdamW", "budget": "steps", "metric": "test_em", "family": "headline",
            "ci_low": -0.06, "ci_high": -0.01, "re_ci_low": -0.04, "re_ci_high": -0.01, "re_diff": -0.023}
    old = [dict(base, diff=-0.034, verdict="contradicted", re_verdict="contradicted", verdict_holm="contradicted"),
           dict(base, budget="epochs", diff=0.1, verdict="supported", re_verdict="supported", verdict_holm="supported")]
    new = [dict(base, diff=-0.018, verdict="inconclusive", re_verdict="contradicted", verdict_holm="contradicted"),
           dict(base, budget="epochs", diff=0.1, verdict="supported", re_verdict="supported", verdict_holm="supported")]
    for side, rows in (("old", old), ("new", new)):
        (tmp_path / side / "runs").mkdir(parents=True)
        _claims_rows(tmp_path / side / "claims.csv", rows)
    res = compare.compare_profile("p", tmp_path / "old", tmp_path / "new")
    lv = res["claims"]["levels"]
    assert [len(lv[c]["changed"]) for c in ("verdict", "re_verdict", "verdict_holm")] == [1, 0, 0]
    assert lv["re_verdict"]["n"] == 2 and len(res["claims"]["headline"]) == 2
    assert "1 claim verdict(s) changed (single-pair rows), 0 of 2 pooled over pairs" in compare.summary_line(res)
    md = compare.markdown("p", res)
    assert "**contradicted → inconclusive**" in md and "contradicted (same)" in md and "| pooled over pairs | 2 | 0 |" in md


def test_a_record_in_another_precision_is_other_arithmetic(tmp_path):
    """The same cell made in bf16 and in fp32 (an auto stage on two hosts) is not a mismatch."""
    cfg = lambda p: {"base": {"enabled": False}, "cpt": {"mixed_precision": p}, "it": {"mixed_precision": p}}
    for side, rid, p, em in (("old", "baseline-s0-aaa", "bf16", 0.5), ("new", "baseline-s0-bbb", "no", 0.4)):
        (tmp_path / side / "runs").mkdir(parents=True)
        rec = {"run_id": rid, "kind": "arm", "arm": "baseline", "seed": 0, "config": cfg(p), "metrics": {"test_em": em}}
        (tmp_path / side / "runs" / f"{rid}.json").write_text(json.dumps(rec))
    res = compare.compare_profile("p", tmp_path / "old", tmp_path / "new")
    assert res["other_arithmetic"] == {"baseline-s0-aaa": "baseline-s0-bbb"}
    assert res["not_reproduced"] == res["new_only"] == []
    assert "1 made in other arithmetic" in compare.summary_line(res)
    assert "Made in other arithmetic (1)" in compare.markdown("p", res)
    same_id = compare.compare_records({"metrics": {"x": 1}, "config": cfg("bf16")}, {"metrics": {"x": 2}, "config": cfg("no")})
    assert same_id["other_arithmetic"] and same_id["precision"] == ({"cpt": "bf16", "it": "bf16"}, {"cpt": "fp32", "it": "fp32"})

"""The C1 probe: fact tokens as labels of an implicit supervised task -- its tables, records and claims.

What is measured (loss / probability / greedy accuracy on the fact tokens given the training
biography, a held-out-template biography and the QA prompt; loss on fact vs other tokens, the
generalization gap) is described with the measurement itself, kl_utils.training.fact_probe (one
batched forward pass per context), which a run also calls right after CPT
(kl_utils.protocol.experiment); its names are re-exported here.
"""
from __future__ import annotations

import numpy as np

from kl_utils.analysis import stats
from kl_utils.analysis.summary import verdict
from kl_utils.training.fact_probe import (CONTEXTS, encode_with_spans, fact_flags, heldout_spans,  # noqa: F401 (re-exported)
                                          probe, summarize, token_scores)
from kl_utils.core import records


def fact_table(heldout: list[int], train: list[int], answered: list[int]) -> list[dict]:
    """The per-fact table: does the model answer the question (greedy QA exact match) when it
    predicts the fact in an unseen paraphrase, only in the training context, or in neither?
    The first two groups' complements form the 2x2 (held-out predicted yes/no x answered yes/no)."""
    groups = {"held-out paraphrase": lambda h, t: h == 1,
              "training context only": lambda h, t: h == 0 and t == 1,
              "neither": lambda h, t: h == 0 and t == 0}
    rows = []
    for name, keep in groups.items():
        hits = [a for h, t, a in zip(heldout, train, answered) if keep(h, t)]
        rows.append({"fact predicted in": name, "facts": len(hits), "answered": sum(hits),
                     "not answered": len(hits) - sum(hits),
                     "answer rate": sum(hits) / len(hits) if hits else float("nan")})
    return rows


def two_by_two(heldout: list[int], answered: list[int]) -> dict[tuple, int]:
    """Counts of (held-out paraphrase predicted, question answered), 4 cells summing to the facts."""
    return {(h, a): sum(1 for x, y in zip(heldout, answered) if (x, y) == (h, a)) for h in (1, 0) for a in (1, 0)}


def checkpoint_points(recs: list[dict]) -> list[dict]:
    """One point per (run, checkpoint with QA): held-out-paraphrase fact accuracy of the test
    people vs their held-out QA exact match. Reads `history` of diversity records."""
    pts = []
    for r in recs:
        for h in r["history"]:
            if "test_em" in h:
                pts.append({"run_id": r["run_id"], "seed": r["seed"], "paraphrases": r["paraphrases"],
                            "passes": h["passes"], "heldout_acc": h["test_heldout_acc"],
                            "heldout_loss": h["test_heldout_loss"], "test_em": h["test_em"]})
    return pts


def probe_run_id(arm_record: dict, n_people: int) -> str:
    from kl_utils.core.spec import config_hash
    return f"probe-{arm_record['run_id']}-{config_hash({'n_people': n_people})}"


def probe_checkpoints(profile: str, cfg: dict, ds, tok, checkpoints, n_people: int, log=print) -> list[dict]:
    """C1 across the main experiments' arms: the probe on each run's model after CPT (the first
    n_people test people) next to the run's held-out QA EM. One record each (kind "probe_arm")."""
    import time
    from transformers import AutoModelForCausalLM
    from kl_utils.core import records
    from kl_utils.core.spec import config_hash
    test = ds.filter(lambda r: r["split"] == "test")
    test = test.select(range(min(n_people, len(test))))
    out = []
    for rec, path in checkpoints:
        run_id = probe_run_id(rec, n_people)
        done = records.existing_record(profile, run_id, kind="probe_arm", config={"n_people": n_people})
        if done is not None:  # probed before (or committed)
            out.append(done)
            continue
        t0 = time.time()
        model = AutoModelForCausalLM.from_pretrained(str(path))
        res = probe(model, tok, test, cfg["data"]["n_train_templates"], cfg["analysis"]["probe_batch_size"],
                    cfg["data"].get("templates", "default"))
        metrics = {**summarize(res["facts"]), **res["tokens"], "test_em": rec["metrics"]["test_em"]}
        extra = {"arm": rec["arm"], "source_run_id": rec["run_id"]}
        records.write_run_record(profile, run_id, kind="probe_arm", config={"n_people": n_people}, seed=rec["seed"],
                                 metrics=metrics, wall_time_s=time.time() - t0, extra=extra)
        out.append({"run_id": run_id, "kind": "probe_arm", "seed": rec["seed"], "metrics": metrics, **extra})
    log(f"probe records of {len(out)} runs on {len(test)} test people")
    return out


def _row(claim, comparison, budget, metric, a, b, d, lo, hi, n_seeds, test="descriptive"):
    return {"claim": claim, "comparison": comparison, "budget": budget, "metric": metric, "mean_a": a, "mean_b": b,
            "diff": d, "ci_low": lo, "ci_high": hi, "n_seeds": n_seeds,
            "verdict": verdict({"n": n_seeds, "low": lo, "high": hi}), "test": test}


def stratified_fact_row(recs: list[dict], runs: str = "run") -> dict | None:
    """The primary C1 row: per fact, is a question answered more often when the model predicts the
    fact in an unseen (held-out-template) paraphrase? One 2x2 table (held-out predicted x answered)
    per run, so that differences between runs (arms, seeds, checkpoints of training) cannot create the
    association: Cochran-Mantel-Haenszel test over the runs, effect = Mantel-Haenszel risk difference
    of the answer rate (predicted minus not predicted) with its Sato-Greenland-Robins 95% CI."""
    from kl_utils.analysis import meta
    tables = []
    for r in recs:
        cells = two_by_two(r["final_facts"]["heldout"], r["final_facts"]["qa_em"])
        tables.append([cells[(1, 1)], cells[(1, 0)], cells[(0, 1)], cells[(0, 0)]])
    if not tables:
        return None
    cmh, rd = meta.cmh_test(tables), meta.mh_risk_difference(tables)
    t = np.asarray(tables, dtype=float).sum(0)
    row = _row("C1", f"QA answer rate: fact predicted vs not predicted in a held-out paraphrase, stratified by {runs}",
               "per fact", f"answer rate, Mantel-Haenszel ({cmh['n']} facts in {cmh['strata']} runs; CMH chi2 {cmh['chi2']:.1f})",
               float(t[2] / (t[2] + t[3])), float(t[0] / (t[0] + t[1])), rd["rd"], rd["low"], rd["high"],
               len({r["seed"] for r in recs}), test="CMH (stratified by run)")
    return {**row, "p_value": cmh["p"]}


def claim_rows(recs: list[dict], n_boot: int = 2000) -> list[dict]:
    """C1 rows for results/<profile>/claims.csv from diversity and probe_arm records: the correlation
    of held-out-paraphrase fact accuracy with held-out QA EM over the main arms' runs (probe_arm) and
        over checkpoints and paraphrase counts (diversity) (diff = r, CI by bootstrap over points), and per fact the answer-rate difference between facts predicted in
    the unseen paraphrase and facts predicted only in the training context (bootstrap over facts):
    all descriptive (runs and checkpoints differ in more than the probe). The tested row is
    stratified_fact_row, the per-fact association within each run."""
    rows = []
    probed = [r for r in records.distinct_runs(recs) if r.get("kind") == "arm" and r.get("final_facts")]  # probe_after_cpt (cpu-llm)
    if probed:
        rows.append(stratified_fact_row(probed, runs="main-experiment run (probe after CPT)"))
    arms = [r for r in recs if r.get("kind") == "probe_arm"]
    if len(arms) >= 3:
        x, y = [r["metrics"]["heldout_acc"] for r in arms], [r["metrics"]["test_em"] for r in arms]
        for method in ("pearson", "spearman"):
            c = stats.bootstrap_corr_ci(x, y, method=method, n_boot=n_boot)
            rows.append(_row("C1", "held-out-paraphrase fact acc after CPT vs held-out QA EM (main arms x seeds)",
                             "arms", f"{method} r ({len(arms)} runs)", float(np.mean(x)), float(np.mean(y)),
                             c["r"], c["low"], c["high"], len({r["seed"] for r in arms})))
    recs = [r for r in recs if r.get("kind") == "diversity"]
    if not recs:
        return rows
    n_seeds = len({r["seed"] for r in recs})
    rows.append(stratified_fact_row(recs))
    pts = checkpoint_points(recs)
    x, y = [p["heldout_acc"] for p in pts], [p["test_em"] for p in pts]
    for method in ("pearson", "spearman"):
        c = stats.bootstrap_corr_ci(x, y, method=method, n_boot=n_boot)
        rows.append(_row("C1", "held-out-paraphrase fact acc vs held-out QA EM (checkpoints x arms)",
                         "checkpoints", f"{method} r ({len(pts)} points)", float(np.mean(x)), float(np.mean(y)),
                         c["r"], c["low"], c["high"], n_seeds))
    h, t, a = (sum((r["final_facts"][k] for r in recs), []) for k in ("heldout", "train", "qa_em"))
    only = [ai for hi, ti, ai in zip(h, t, a) if hi == 0 and ti == 1]
    pred = [ai for hi, ai in zip(h, a) if hi == 1]
    if only and pred:
        rng = np.random.default_rng(0)
        boots = [rng.choice(pred, len(pred)).mean() - rng.choice(only, len(only)).mean() for _ in range(n_boot)]
        lo, hi = np.percentile(boots, [2.5, 97.5])
        rows.append(_row("C1", "QA answer rate: fact predicted in held-out paraphrase vs only in training context",
                         "steps", f"answer rate (EM, {len(h)} facts)", float(np.mean(only)),
                         float(np.mean(pred)), float(np.mean(pred) - np.mean(only)), float(lo), float(hi), n_seeds))
    return rows

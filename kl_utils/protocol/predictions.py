"""Per-question predictions of a run (run record field `predictions`: {split: [row, ...]}, written by
experiment.run_arm since issue 18; older records have none) and the analyses they allow: exact match
per attribute, and confidence intervals that resample *people* (the six questions of one person are
not independent: one person's facts are learned together).

A row: question_id ("<person_id>:<index of the question in the person's QA>"), person_id, person (the
name), attribute, prediction, gold (as compared: evaluate.as_decoded), correct (exact match, 0/1).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np


def question_rows(ds, split: str, res: dict) -> list[dict]:
    """The rows of one evaluate.evaluate_qa result on data.qa_examples(ds, split) (same order)."""
    rows = []
    for row in ds:
        if row["split"] != split:
            continue
        for j, qa in enumerate(row["qa"]):
            rows.append({"question_id": f"{row['person_id']}:{j}", "person_id": row["person_id"], "person": row["name"],
                         "attribute": qa.get("attribute", "all")})
    if len(rows) != len(res["predictions"]):
        raise ValueError(f"question_rows: {len(rows)} questions in split {split!r}, {len(res['predictions'])} predictions")
    for r, pred, gold, hit in zip(rows, res["predictions"], res["golds"], res["correct"]):
        r.update(prediction=pred, gold=gold, correct=int(hit))
    return rows


def has_predictions(record: dict, split: str = "test") -> bool:
    return bool((record.get("predictions") or {}).get(split))


def rows_of(record: dict, split: str = "test") -> list[dict]:
    """The per-question rows of a record's split (ValueError for a record without them)."""
    if not has_predictions(record, split):
        raise ValueError(f"run record {record.get('run_id')!r} has no per-question predictions for {split!r} "
                         "(records before issue 18 keep only the aggregate metrics)")
    return record["predictions"][split]


def em_by_attribute(rows: list[dict]) -> dict[str, float]:
    """Exact match per attribute, in attribute order of first appearance."""
    hits = defaultdict(list)
    for r in rows:
        hits[r["attribute"]].append(r["correct"])
    return {a: float(np.mean(v)) for a, v in hits.items()}


def _by_person(rows: list[dict]) -> dict:
    out = defaultdict(dict)
    for r in rows:
        out[r["person_id"]][r["question_id"]] = r["correct"]
    return dict(out)


def bootstrap_em(rows: list[dict], n_boot: int = 2000, seed: int = 0, attribute: str | None = None) -> dict:
    """Exact match with a 95% percentile-bootstrap CI that resamples people (with all their questions);
    optionally of one attribute's questions only."""
    if attribute is not None:
        rows = [r for r in rows if r["attribute"] == attribute]
    people = _by_person(rows)
    hits = np.array([sum(q.values()) for q in people.values()], dtype=float)
    counts = np.array([len(q) for q in people.values()], dtype=float)
    if not len(hits):
        raise ValueError("bootstrap_em: no questions")
    idx = np.random.default_rng(seed).integers(0, len(hits), (n_boot, len(hits)))
    boots = hits[idx].sum(1) / counts[idx].sum(1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"em": float(hits.sum() / counts.sum()), "low": float(low), "high": float(high), "n_people": len(hits),
            "n_questions": int(counts.sum())}


def paired_bootstrap_diff(rows_a: list[dict], rows_b: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """EM of b minus EM of a on the questions both answered, with a 95% bootstrap CI over people
    (the same resampled people for both: a paired comparison of two runs on the same test set)."""
    a, b = _by_person(rows_a), _by_person(rows_b)
    people = sorted(set(a) & set(b))
    shared = [sorted(set(a[p]) & set(b[p])) for p in people]
    diff = np.array([sum(b[p][q] - a[p][q] for q in qs) for p, qs in zip(people, shared)], dtype=float)
    counts = np.array([len(qs) for qs in shared], dtype=float)
    if not counts.sum():
        raise ValueError("paired_bootstrap_diff: the two runs share no question")
    idx = np.random.default_rng(seed).integers(0, len(diff), (n_boot, len(diff)))
    boots = diff[idx].sum(1) / counts[idx].sum(1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"diff": float(diff.sum() / counts.sum()), "low": float(low), "high": float(high), "n_people": len(people)}


def attribute_table(records: list[dict], split: str = "test", n_boot: int = 2000) -> list[dict]:
    """One row per (record with predictions, attribute): arm, seed, attribute, EM and its CI over people.
    Records without per-question predictions are skipped."""
    out = []
    for rec in records:
        if not has_predictions(rec, split):
            continue
        rows = rows_of(rec, split)
        for attr in em_by_attribute(rows):
            ci = bootstrap_em(rows, n_boot=n_boot, attribute=attr)
            out.append({"run_id": rec["run_id"], "arm": rec.get("arm"), "seed": rec.get("seed"), "attribute": attr,
                        "em": ci["em"], "low": ci["low"], "high": ci["high"], "n_people": ci["n_people"]})
    return out

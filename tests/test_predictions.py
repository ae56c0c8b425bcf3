"""Per-question predictions in run records: rows from an evaluation, per-attribute EM, and CIs that
resample people (tested on synthetic records)."""
import pytest

from kl_utils.protocol import predictions


def _record(run_id, correct_by_person, attrs=("birth_date", "major")):
    rows = [{"question_id": f"{p}:{j}", "person_id": p, "person": f"P{p}", "attribute": a, "prediction": "x",
             "gold": "x" if c else "y", "correct": c}
            for p, hits in correct_by_person.items() for j, (a, c) in enumerate(zip(attrs, hits))]
    return {"run_id": run_id, "arm": "baseline", "seed": 0, "predictions": {"test": rows}}


def test_question_rows_from_an_evaluation():
    ds = [{"split": "test", "person_id": 3, "name": "Ann B", "qa": [{"attribute": "major"}, {"attribute": "employer"}]},
          {"split": "train", "person_id": 4, "name": "Bo C", "qa": [{"attribute": "major"}]}]
    res = {"predictions": ["Physics", "Acme"], "golds": ["Physics", "Initech"], "correct": [True, False]}
    rows = predictions.question_rows(ds, "test", res)
    assert rows == [{"question_id": "3:0", "person_id": 3, "person": "Ann B", "attribute": "major", "prediction": "Physics",
                     "gold": "Physics", "correct": 1},
                    {"question_id": "3:1", "person_id": 3, "person": "Ann B", "attribute": "employer", "prediction": "Acme",
                     "gold": "Initech", "correct": 0}]
    with pytest.raises(ValueError, match="2 questions"):
        predictions.question_rows(ds, "test", {"predictions": ["a"], "golds": ["a"], "correct": [1]})


def test_em_per_attribute_and_bootstrap_over_people():
    # birth_date answered by every person, major by none: 0.5 overall
    rec = _record("r", {p: (1, 0) for p in range(40)})
    rows = predictions.rows_of(rec)
    assert predictions.em_by_attribute(rows) == {"birth_date": 1.0, "major": 0.0}
    ci = predictions.bootstrap_em(rows, n_boot=500)
    # every person has exactly one of two right: resampling people cannot move EM
    assert (ci["em"], ci["low"], ci["high"], ci["n_people"], ci["n_questions"]) == (0.5, 0.5, 0.5, 40, 80)
    assert predictions.bootstrap_em(rows, attribute="major")["em"] == 0.0
    # half the people answer both, half neither: the CI over people is wide
    split = predictions.bootstrap_em(predictions.rows_of(_record("s", {p: (p % 2, p % 2) for p in range(40)})), n_boot=500)
    assert split["em"] == 0.5 and split["low"] < 0.4 and split["high"] > 0.6
    table = predictions.attribute_table([rec, {"run_id": "old", "metrics": {"test_em": 0.3}}], n_boot=100)
    assert [(r["run_id"], r["attribute"], r["em"]) for r in table] == [("r", "birth_date", 1.0), ("r", "major", 0.0)]


def test_records_without_predictions_and_paired_difference():
    old = {"run_id": "old", "metrics": {"test_em": 0.3}}
    assert not predictions.has_predictions(old)
    with pytest.raises(ValueError, match="no per-question predictions"):
        predictions.rows_of(old)
    a = predictions.rows_of(_record("a", {p: (0, 0) for p in range(30)}))
    b = predictions.rows_of(_record("b", {p: (1, int(p < 15)) for p in range(30)}))
    d = predictions.paired_bootstrap_diff(a, b, n_boot=500)
    assert d["diff"] == pytest.approx(0.75) and d["low"] < 0.75 < d["high"] and d["n_people"] == 30

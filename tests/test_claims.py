"""claims.csv is built only from run records, and a rebuild from the records reproduces it."""
import pytest

from kl_utils import claims, paths, records


def _write(profile, arm, seed, test, valid=0.5):
    records.write_run_record(profile, f"{arm}-s{seed}", kind="arm", config={"arm": arm}, seed=seed,
                             metrics={"test_em": test, "valid_em": valid}, wall_time_s=1.0, extra={"arm": arm})


@pytest.fixture
def profile(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.delenv("KL_RESULTS_ROOT", raising=False)
    for s, (b, f, sam) in enumerate([(0.20, 0.30, 0.19), (0.22, 0.33, 0.25), (0.21, 0.31, 0.20)]):
        _write("toy", "baseline", s, b)
        _write("toy", "format_steps", s, f)
        _write("toy", "sam", s, sam)
    return "toy"


def test_rows_verdicts_and_missing_arms(profile):
    rows = {(r["claim"], r["arm_a"], r["arm_b"]): r for r in claims.build(profile)}
    c3 = rows[("C3", "baseline", "format_steps")]
    assert c3["diff"] == pytest.approx(0.1033333, abs=1e-6) and c3["verdict"] == "supported"
    assert c3["n_seeds"] == 3 and c3["budget"] == "steps" and c3["mean_a"] == pytest.approx(0.21)
    assert rows[("C4", "baseline", "sam")]["verdict"] == "inconclusive"
    # comparisons whose arms were not run are left out, not filled in
    assert ("C3", "baseline", "format") not in rows and ("C6", "baseline", "it_format_sam") not in rows
    assert set(c3["run_ids"].split()) == {f"{a}-s{s}" for a in ("baseline", "format_steps") for s in range(3)}


def test_csv_rebuilds_identically_from_records(profile):
    path = claims.write(profile)
    assert path.read_text() == claims.to_csv(claims.build(profile))
    assert path.read_text().splitlines()[0].split(",")[:11] == claims.COLUMNS[:11]
    _write(profile, "sam", 0, 0.9)  # a changed record changes the rebuild: the file is stale
    assert path.read_text() != claims.to_csv(claims.build(profile))


def test_learning_rate_variant_chosen_on_validation_not_test(profile):
    for s in range(3):  # better on valid, worse on test: it must still be the one chosen
        _write(profile, "sam@lrx2.0", s, test=0.05, valid=0.9)
        _write(profile, "sam@lrx0.5", s, test=0.95, valid=0.1)
    recs = records.load_run_records(profile, kind="arm")
    assert claims.best_variant_by_valid(recs, "sam") == "sam@lrx2.0"
    row = next(r for r in claims.build(profile) if r["claim"] == "C4" and r["budget"] == "steps")
    assert row["arm_b"] == "sam@lrx2.0" and row["verdict"] == "contradicted"

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
    c4 = [r for r in claims.build(profile) if r["claim"] == "C4" and r["budget"] == "steps"]
    # only sam has variants: tuning one side alone would favour it, so the row stays untuned
    assert [(r["arm_a"], r["arm_b"]) for r in c4] == [("baseline", "sam")]
    for s in range(3):
        _write(profile, "baseline@lrx2.0", s, test=0.5, valid=0.4)  # worse on valid than the baseline's 0.5
    c4 = {r["comparison"]: r for r in claims.build(profile) if r["claim"] == "C4" and r["budget"] == "steps"}
    tuned = c4["SAM vs AdamW (same steps and epochs) (lr tuned on valid)"]
    assert (tuned["arm_a"], tuned["arm_b"], tuned["verdict"]) == ("baseline", "sam@lrx2.0", "contradicted")
    assert c4["SAM vs AdamW (same steps and epochs)"]["arm_b"] == "sam"


def test_ablation_rows_each_level_against_adamw(profile):
    assert claims.ablation_level("sam_rho0.1") == ("rho", "0.1", "C4")
    assert claims.ablation_level("format_k8_steps") == ("k", "8", "C3")
    assert claims.ablation_level("format_bullet_list_steps") == ("family", "bullet_list", "C3")
    assert claims.ablation_level("format_sam_k2_rho0.05_steps") == ("rho_k", "2/0.05", "C5")
    assert claims.ablation_level("format_sam_steps") is None and claims.ablation_level("format_steps") is None
    for s, v in enumerate([0.30, 0.32, 0.31]):
        _write(profile, "format_bullet_list_steps", s, v)
        _write(profile, "sam_rho0.2", s, v - 0.15)
    rows = {r["arm_b"]: r for r in claims.build(profile) if r["comparison"].startswith("ablation:")}
    assert set(rows) == {"format_bullet_list_steps", "sam_rho0.2"}
    assert rows["format_bullet_list_steps"]["verdict"] == "supported" and rows["format_bullet_list_steps"]["claim"] == "C3"
    assert rows["sam_rho0.2"]["verdict"] == "contradicted" and rows["sam_rho0.2"]["arm_a"] == "baseline"


def test_control_rows_equal_steps_and_compute_and_arm_filter(profile):
    """A method meets AdamW with as many optimizer steps ("steps") and as many gradient evaluations
    ("compute"); rows_of_arms keeps the comparisons among a set of arms (lr variants count)."""
    for s, (b2, b4, fs) in enumerate([(0.25, 0.33, 0.29), (0.27, 0.35, 0.30), (0.26, 0.36, 0.28)]):
        _write(profile, "baseline_2x", s, b2)
        _write(profile, "baseline_ep48", s, b4)
        _write(profile, "format_sam", s, fs)
    rows = claims.build(profile)
    got = {(r["claim"], r["arm_a"], r["arm_b"], r["budget"]): r["verdict"] for r in rows}
    assert got[("C5", "baseline_2x", "format_sam", "steps")] == "supported"
    assert got[("C5", "baseline_ep48", "format_sam", "compute")] == "contradicted"
    assert got[("regime", "baseline_2x", "baseline_ep48", "epochs")] == "supported"
    kept = claims.rows_of_arms(rows, {"baseline_2x", "baseline_ep48", "format_sam"})
    assert {(r["arm_a"], r["arm_b"]) for r in kept} == {("baseline_2x", "format_sam"), ("baseline_ep48", "format_sam"),
                                                         ("baseline_2x", "baseline_ep48")}
    for s in range(3):
        _write(profile, "baseline@lrx2.0", s, 0.1, valid=0.99)
        _write(profile, "sam@lrx2.0", s, 0.1, valid=0.99)
    assert any(r["arm_a"] == "baseline@lrx2.0" for r in claims.rows_of_arms(claims.build(profile), {"baseline", "sam"}))


def test_claims_across_profiles_side_by_side(profile, capsys):
    """The same comparison on two 'base models': a verdict that flips is flagged."""
    for s, (b, f, sam) in enumerate([(0.20, 0.18, 0.19), (0.22, 0.19, 0.25), (0.21, 0.17, 0.20)]):
        _write("other", "baseline", s, b)
        _write("other", "format_steps", s, f)
        _write("other", "sam", s, sam)
    claims.write(profile)
    claims.write("other")
    rows = {(r["claim"], r["budget"]): r for r in claims.across([profile, "other"])}
    c3 = rows[("C3", "steps")]
    assert "supported" in c3[profile] and "contradicted" in c3["other"] and not c3["agree"]
    assert c3[profile].startswith("+0.103 [") and "(n=3)" in c3[profile]
    assert claims.across(["nothing-here"]) == []
    claims.main(["--across", profile, "other"])
    assert "verdicts differ" in capsys.readouterr().out


def test_across_long_keeps_rows_shared_by_two_profiles(profile):
    for s, (b, f) in enumerate([(0.20, 0.18), (0.22, 0.19), (0.21, 0.17)]):
        _write("other", "baseline", s, b)
        _write("other", "format_steps", s, f)
    claims.write(profile)
    claims.write("other")
    long = claims.across_long([profile, "other"])
    assert {(r["claim"], r["budget"]) for r in long} == {("C3", "steps")}  # sam: only in `profile`
    by = {r["profile"]: r for r in long}
    assert by[profile]["verdict"] == "supported" and by["other"]["verdict"] == "contradicted"
    assert by["other"]["ci_low"] < by["other"]["diff"] < by["other"]["ci_high"] < 0
    import pandas as pd
    from kl_utils import figures
    fig = figures.across_figure(pd.DataFrame(long))
    assert fig is not None and figures.across_figure(pd.DataFrame()) is None


def test_across_tolerates_rows_without_a_difference(monkeypatch, tmp_path):
    """Rows with too few runs carry empty diff / CI cells in claims.csv: shown as n/a, left out of the figure."""
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "claims.csv").write_text(
        "claim,comparison,budget,metric,mean_a,mean_b,diff,ci_low,ci_high,n_seeds,verdict,arm_a,arm_b,run_ids\n"
        "C1,corr,arms,pearson r,0.0,0.0,,,,2,inconclusive,,,\n")
    assert claims.across(["p"])[0]["p"] == "n/a inconclusive (n=2)"
    assert claims.across_long(["p"], metric="pearson r") == []

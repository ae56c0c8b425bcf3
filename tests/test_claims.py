"""claims.csv is built only from run records, and a rebuild from the records reproduces it."""
import pytest

from kl_utils.config import arms
from kl_utils.core import paths, records
from kl_utils.core.spec import merge
from kl_utils.reporting import claims


def _write(profile, arm, seed, test, valid=0.5, config=None):
    records.write_run_record(profile, f"{arm}-s{seed}", kind="arm", config=config or {"arm": arm}, seed=seed,
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
    """An ablation arm is known from its record's settings (the arm `ablations:` generates under
    that name for them), not from a pattern of its name."""
    generated = arms.ablation_arms({"rho": [0.1, 0.05, 0.2], "k": [8, 2], "families": ["bullet_list"], "rho_k": True})
    for name, (factor, level, claim) in {"sam_rho0.1": ("rho", "0.1", "C4"), "format_k8_steps": ("k", "8", "C3"),
                                         "format_bullet_list_steps": ("family", "bullet_list", "C3"),
                                         "format_sam_k2_rho0.05_steps": ("rho_k", "2/0.05", "C5")}.items():
        spec = merge({"cpt": {"lr": 1e-3}}, generated[name].overrides)
        assert arms.ablation_of(name, spec)[:3] == (factor, level, claim)
        assert arms.ablation_of("format_sam_steps", spec) is None and arms.ablation_of("format_steps", spec) is None
    assert arms.ablation_of("sam_rho0.1", {"cpt": {"optimizer": "sam", "rho": 0.05}}) is None  # not its settings
    assert arms.ablation_of("format_k8_steps", {"arm": "format_k8_steps"}) is None  # no settings: no ablation
    for s, v in enumerate([0.30, 0.32, 0.31]):
        _write(profile, "format_bullet_list_steps", s, v, config=generated["format_bullet_list_steps"].overrides)
        _write(profile, "sam_rho0.2", s, v - 0.15, config=generated["sam_rho0.2"].overrides)
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
    from kl_utils.reporting import figures
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


def test_across_pooled_shows_the_over_pairs_estimate_where_there_is_one(monkeypatch, tmp_path):
    """Beside another design (README / REPORT 'Beside'), a profile pooled over pairs shows its random-effects
    row, not the within-pair one: the first beside table set cpu's one base model against cpu-llm's 3 draws."""
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path))
    head = "claim,comparison,budget,metric,diff,ci_low,ci_high,n_seeds,verdict,n_pairs,re_diff,re_ci_low,re_ci_high,re_verdict\n"
    for prof, row in (("pairs", "C3,f,epochs,test_em,0.104,0.039,0.168,3,supported,5,0.089,0.057,0.121,supported\n"),
                      ("draws", "C3,f,epochs,test_em,0.128,-0.051,0.308,3,inconclusive,,,,,\n")):
        (tmp_path / prof).mkdir()
        (tmp_path / prof / "claims.csv").write_text(head + row)
    pooled = claims.across(["draws", "pairs"], pooled=True)[0]
    assert pooled["pairs"] == "+0.089 [+0.057, +0.121] supported (5 pairs)"
    assert pooled["draws"] == "+0.128 [-0.051, +0.308] inconclusive (n=3)" and not pooled["agree"]
    assert claims.across(["pairs"])[0]["pairs"] == "+0.104 [+0.039, +0.168] supported (n=3)"  # the default: within pair


def _write_pair(profile, arm, seed, test, base="base-A", data_seed=0):
    records.write_run_record(profile, f"{arm}-s{seed}", kind="arm", config={"arm": arm, "data": {"seed": data_seed}},
                             seed=seed, metrics={"test_em": test, "valid_em": 0.5}, wall_time_s=1.0,
                             extra={"arm": arm, "base_run_id": base})


def test_c5_rows_are_non_inferiority_rows_with_their_margin(profile):
    """format + SAM vs format alone: -0.01 with a tight CI is non-inferior at margin 0.02 (the
    superiority rule would call it contradicted); -0.05 is inferior."""
    for s, (f, fs, sam) in enumerate([(0.30, 0.290, 0.20), (0.33, 0.321, 0.26), (0.31, 0.299, 0.21)]):
        _write(profile, "format_steps@lrx2.0", s, f)  # lr variants count as their arm
        _write(profile, "format_sam_steps", s, fs)
        _write(profile, "sam_every4", s, sam)
    rows = {(r["arm_a"], r["arm_b"]): r for r in claims.build(profile)}
    assert claims.verdicts.NI_MARGIN == 0.02
    ni = claims.verdicts.annotate([{**rows[("format_steps", "format_sam_steps")]} | {"arm_a": "format_steps@lrx2.0"}])[0]
    assert ni["test"] == "non-inferiority" and ni["margin"] == 0.02
    vs_format = rows[("format_steps", "format_sam_steps")]
    assert vs_format["diff"] == pytest.approx(-0.01) and vs_format["ci_low"] > -0.02 and vs_format["ci_high"] < 0
    assert vs_format["verdict"] == "non-inferior" and vs_format["test"] == "non-inferiority"
    vs_sam = rows[("sam", "format_sam_steps")]  # +0.07 .. +0.09: non-inferior (and better)
    assert vs_sam["verdict"] == "non-inferior"
    for s, v in enumerate([0.25, 0.27, 0.26]):
        _write(profile, "format_sam_steps", s, v)
    vs_format = {(r["arm_a"], r["arm_b"]): r for r in claims.build(profile)}[("format_steps", "format_sam_steps")]
    assert vs_format["verdict"] == "inferior" and vs_format["verdict_holm"] == "inferior"
    other = {(r["arm_a"], r["arm_b"]): r for r in claims.build(profile)}
    assert other[("baseline", "format_steps")]["test"] == "superiority"
    assert other[("baseline", "sam_every4")]["family"] == "ablations"
    assert other[("baseline", "format_steps")]["family"] == "headline"


def test_holm_within_families_next_to_unadjusted_verdicts(profile):
    """Each family's p-values are Holm-adjusted among themselves only; an unadjusted `supported`
    whose adjusted p exceeds 0.05 becomes inconclusive in verdict_holm (never the other way)."""
    for s, v in enumerate([0.25, 0.31, 0.28]):  # diffs 0.05, 0.09, 0.07: t = 6.06, p = 0.026 (x2 > 0.05)
        _write(profile, "format", s, v)
    rows = claims.build(profile)
    headline = [r for r in rows if r["family"] == "headline"]
    p = [r["p_value"] for r in headline]
    assert [r["p_holm"] for r in headline] == pytest.approx(claims.stats.holm(p))
    weak = next(r for r in headline if r["arm_b"] == "format")
    assert weak["verdict"] == "supported" and weak["p_value"] < 0.05 < weak["p_holm"]
    assert weak["verdict_holm"] == "inconclusive" and weak["primary"] == "within pair" and weak["n_pairs"] == 1
    strong = next(r for r in headline if r["arm_b"] == "format_steps")
    assert strong["verdict_holm"] == "supported"
    import pandas as pd  # notebooks pass rows through a DataFrame: missing cells come back as nan
    lines = claims.describe(pd.DataFrame(rows).to_dict("records"))
    assert any("Holm (headline): INCONCLUSIVE" in line and "format 0.280" in line for line in lines)
    assert not any("nan" in line.split("->", 1)[1] for line in lines)
    text = claims.to_csv(rows)
    header = text.splitlines()[0].split(",")
    assert header[:14] == claims.COLUMNS[:14] and header[14:] == claims.verdicts.COLUMNS


def test_random_effects_over_base_model_pairs(monkeypatch, tmp_path):
    """Three profiles = three base models: the C3 row of each carries the within-pair CI of its own
    seeds and the random-effects estimate over the three pairs (REML + Hartung-Knapp), which becomes
    the primary estimate of the Holm verdict."""
    from kl_utils.config import profiles as config
    from kl_utils.analysis import meta
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.delenv("KL_RESULTS_ROOT", raising=False)
    monkeypatch.setattr(config, "load_config", lambda prof=None, cfg=None: (prof, {}))
    monkeypatch.setattr(claims, "current_arm_records", lambda prof, cfg=None: records.load_run_records(prof, kind="arm"))
    effects = {"pa": [0.05, 0.07, 0.06], "pb": [0.10, 0.13, 0.12, 0.11], "pc": [0.01]}
    for i, (prof, diffs) in enumerate(effects.items()):
        for s, d in enumerate(diffs):
            _write_pair(prof, "baseline", s, 0.2, base=f"base-{prof}")
            _write_pair(prof, "format_steps", s, 0.2 + d, base=f"base-{prof}")
    cfg = {"pairs": ["pa", "pb", "pc"]}
    row = next(r for r in claims.build("pa", cfg) if r["arm_b"] == "format_steps")
    expected = meta.meta_of_pairs([effects["pa"], effects["pb"], effects["pc"]])
    assert row["n_seeds"] == 3 and row["diff"] == pytest.approx(0.06)  # within pair: pa's seeds only
    assert row["n_pairs"] == 3 and row["pair_profiles"] == "pa pb pc" and row["primary"] == "random effects"
    assert (row["re_diff"], row["re_ci_low"], row["re_ci_high"]) == pytest.approx(
        (expected["mu"], expected["low"], expected["high"]))
    assert row["re_verdict"] == ("supported" if expected["low"] > 0 else "inconclusive")
    assert row["run_ids"].split() == sorted(f"{a}-s{s}" for a in ("baseline", "format_steps") for s in range(3))
    # a profile not among its own pairs, or without pairs: within pair only
    assert next(r for r in claims.build("pa", None) if r["arm_b"] == "format_steps")["n_pairs"] == 1
    # two profiles on the same base model and data draw are one pair, not two
    _write_pair("pd", "baseline", 0, 0.2, base="base-pa")
    with pytest.raises(ValueError, match="share base model and data draw"):
        claims.build("pa", {"pairs": ["pa", "pd"]})


def test_near_convergence_format_sam_rows_are_non_inferiority_controls():
    """format + SAM at 48 epochs vs formatting at 48 / SAM at 96 answers C5 near convergence: a
    non-inferiority row with C5's margin, in the controls family (not the paper's headline budgets)."""
    from kl_utils.reporting import verdicts
    for arm_a in ("format_ep48", "sam_ep96"):
        row = {"claim": "C5", "comparison": "x", "arm_a": arm_a, "arm_b": "format_sam_ep48", "diff": -0.01,
               "ci_low": -0.015, "ci_high": -0.005, "n_seeds": 3}
        out = verdicts.annotate([row])[0]
        assert (out["test"], out["margin"], out["family"], out["verdict"]) == \
            ("non-inferiority", 0.02, "controls", "non-inferior")
    row = {"claim": "C5", "comparison": "x", "arm_a": "baseline_ep96", "arm_b": "format_sam_ep48", "diff": -0.01,
           "ci_low": -0.015, "ci_high": -0.005, "n_seeds": 3}
    assert verdicts.annotate([row])[0]["test"] == "superiority"
    assert ("C5", "format_ep48", "format_sam_ep48", "steps") in {c[:4] for c in claims.COMPARISONS}


def test_cochran_q_is_left_blank_where_no_pair_has_two_seeds():
    """cpu-llm's pairs are single data draws (one run each): no within-pair variance, so no Q (it would
    be 1 / MIN_VARIANCE, ~1e9); the cpu pairs have several seeds each and get one."""
    from kl_utils.config.profiles import read_profile
    llm = [r for r in claims.build("cpu-llm", read_profile("cpu-llm")) if r.get("re_diff") is not None]
    assert llm and all(r.get("re_q") is None for r in llm)
    cpu = [r for r in claims.build("cpu", read_profile("cpu")) if r.get("re_diff") is not None]
    assert cpu and all(0 <= r["re_q"] < 1e6 for r in cpu)

"""The random-effects meta-analysis over (base model, data draw) pairs, the stratified 2x2 tests and
the distribution functions behind every p-value: hand-computed examples, and the 95% CI coverage
of the chosen method by simulation at the sizes the study uses."""
import math

import numpy as np
import pytest

from kl_utils.analysis import meta, stats


def test_t_distribution_against_known_values():
    for df, crit in [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (10, 2.228), (30, 2.042)]:
        assert stats.t_ppf(0.975, df) == pytest.approx(crit, abs=1e-3)
        assert stats.t_cdf(crit, df) == pytest.approx(0.975, abs=1e-4)
    for t in (-3.0, -0.4, 0.0, 0.7, 5.0):  # df = 1 is the Cauchy distribution
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert stats.t_cdf(1.959964, 1e7) == pytest.approx(0.975, abs=1e-6)
    assert stats.p_two_sided(0.1, 0.1 / 4.303, df=2) == pytest.approx(0.05, abs=1e-4)
    assert stats.p_two_sided(-0.01, 0.01, null=-0.03, df=4) == pytest.approx(stats.p_two_sided(0.02, 0.01, df=4))


def test_holm_hand_computed():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> 0.06 (monotone)
    adj = stats.holm([0.01, 0.04, float("nan"), 0.03, 0.005])
    assert adj[0] == pytest.approx(0.03) and adj[1] == pytest.approx(0.06) and adj[3] == pytest.approx(0.06)
    assert adj[4] == pytest.approx(0.02) and math.isnan(adj[2])
    assert stats.holm([0.6, 0.9]) == [1.0, 1.0] and stats.holm([]) == []


def test_random_effects_hand_computed_no_heterogeneity():
    # w = 100, 50, 100; mu = (10 + 15 + 20) / 250 = 0.18; Q = 0.64 + 0.72 + 0.04 = 1.40 < df 2 -> tau2 = 0
    y, v = [0.1, 0.3, 0.2], [0.01, 0.02, 0.01]
    assert float(meta.tau2_dl(np.array(y), np.array(v))) == 0.0
    res = meta.random_effects(y, v, tau2_method="dl")
    assert res["mu"] == pytest.approx(0.18) and res["q"] == pytest.approx(1.40) and res["tau2"] == 0.0
    # Hartung-Knapp: q = 1.40 / 2 = 0.7, se = sqrt(0.7 / 250), t(2) = 4.303
    assert res["se"] == pytest.approx(math.sqrt(0.7 / 250))
    assert res["high"] - res["mu"] == pytest.approx(4.303 * math.sqrt(0.7 / 250))
    # the modified interval replaces q = 0.7 by 1; without HK it is the normal Wald interval
    assert meta.random_effects(y, v, hk="modified")["se"] == pytest.approx(math.sqrt(1 / 250))
    assert meta.random_effects(y, v, hk="none")["high"] == pytest.approx(0.18 + 1.959964 * math.sqrt(1 / 250))
    assert meta.random_effects(y, v)["tau2"] == pytest.approx(0.0, abs=1e-12)  # REML agrees


def test_random_effects_hand_computed_with_heterogeneity():
    # equal v = 0.01: Q = 100 * (0.0177778 + 0.0277778 + 0.0011111) = 4.6667, C = 300 - 100 = 200,
    # tau2_DL = (4.6667 - 2) / 200 = 0.013333 = REML (s^2 - v = 0.023333 - 0.01); HKSJ is then the t
    # interval of the three means: 0.13333 +- 4.303 * sqrt(0.023333 / 3)
    y, v = [0.0, 0.3, 0.1], [0.01, 0.01, 0.01]
    for method in meta.TAU2_METHODS:
        res = meta.random_effects(y, v, tau2_method=method)
        assert res["tau2"] == pytest.approx(0.0133333, rel=1e-5) and res["q"] == pytest.approx(4.6666667)
        assert res["mu"] == pytest.approx(0.1333333) and res["df"] == 2
        assert res["high"] - res["mu"] == pytest.approx(4.303 * math.sqrt(0.0233333 / 3), rel=1e-5)
    assert res["p"] == pytest.approx(stats.p_two_sided(0.1333333, math.sqrt(0.0233333 / 3), df=2), rel=1e-4)
    with pytest.raises(ValueError, match=">= 2 pairs"):
        meta.random_effects([0.1], [0.01])


def test_random_effects_q_is_nan_without_within_pair_variance():
    # one run per pair (cpu-llm: a data draw is a pair): no pair has a variance, so Q would only be the
    # spread / MIN_VARIANCE; the estimate and the HKSJ interval (the t interval of the pair means) remain
    y = [0.0, 0.3, 0.1]
    res = meta.random_effects(y, [0.0, 0.0, 0.0])
    assert math.isnan(res["q"]) and res["mu"] == pytest.approx(0.1333333)
    assert res["high"] - res["mu"] == pytest.approx(4.303 * math.sqrt(0.0233333 / 3), rel=1e-4)
    # one pair with a variance is enough for Q to mean something; vectorised rows are decided one by one
    assert math.isfinite(meta.random_effects(y, [0.01, 0.0, 0.0])["q"])
    rows = meta.random_effects(np.array([y, y]), np.array([[0.0] * 3, [0.01] * 3]))
    assert math.isnan(rows["q"][0]) and rows["q"][1] == pytest.approx(4.6666667)


def test_pair_summaries_pool_the_within_pair_variance():
    groups = [[0.1, 0.3], [0.0, 0.1, 0.2], [0.5]]  # SS 0.02 (1 df) + 0.02 (2 df): pooled 0.04 / 3
    y, v, n = meta.pair_summaries(groups)
    assert list(y) == pytest.approx([0.2, 0.1, 0.5]) and list(n) == [2, 3, 1]
    assert list(v) == pytest.approx([0.04 / 3 / 2, 0.04 / 3 / 3, 0.04 / 3])
    _, v_own, _ = meta.pair_summaries(groups, within="per_pair")
    assert list(v_own) == pytest.approx([0.02 / 2, 0.01 / 3, 0.04 / 3])  # the one-seed pair: pooled
    res = meta.meta_of_pairs([[0.1, 0.3], [], [0.0, 0.1, 0.2], [0.5]])
    assert res["n_pairs"] == 3 and res["n_seeds"] == 6 and res["pair_means"] == pytest.approx([0.2, 0.1, 0.5])
    _, v_none, _ = meta.pair_summaries([[0.1], [0.2], [0.4]])  # no pair with 2 seeds: equal weights
    assert list(v_none) == [0.0, 0.0, 0.0]
    assert meta.meta_of_pairs([[0.1], [0.2], [0.4]])["mu"] == pytest.approx(0.7 / 3)


@pytest.mark.parametrize("tau", meta.SIM_TAUS)
def test_coverage_of_the_chosen_method_at_our_sizes(tau):
    """REML + Hartung-Knapp with the pooled within-pair variance: 95% CI coverage within 93-97% for
    3-5 pairs with 1-5 CPT seeds each, with and without heterogeneity between pairs (10,000 simulated
    studies per design: the coverage estimate's standard error is 0.2%)."""
    for design in meta.SIM_DESIGNS:
        cov = meta.coverage(design, tau=tau, sigma=0.02, reps=10000, seed=hash((tau, design)) % 2**32)
        assert 0.93 <= cov <= 0.97, (tau, design, cov)


def test_coverage_when_base_models_differ_in_seed_noise():
    """The pooled within-pair variance assumes one seed-noise level; with an 8x spread of the per-seed
    SD between pairs (as between our base models) the interval stays valid, conservative (up to ~99%)
    rather than short; each pair's own variance from 2-5 seeds would cover 65-94% there."""
    for design in [(3, 3, 3), (1, 3, 5), (5, 3, 3)]:
        for tau in (0.0, 0.03):
            cov = meta.coverage(design, tau=tau, sigma=(0.005, 0.01, 0.04), reps=10000, seed=7)
            assert 0.93 <= cov <= 0.995, (design, tau, cov)
    assert meta.coverage((1, 3, 5), tau=0.01, sigma=(0.005, 0.005, 0.04), reps=10000, within="per_pair") < 0.90


def test_coverage_of_the_rejected_variants():
    """Why the defaults: per-pair variances from 2 seeds undercover, the DerSimonian-Laird Wald
    interval undercovers with heterogeneity, the modified (max(q, 1)) interval overcovers without it."""
    assert meta.coverage((2, 2, 2), tau=0.0, reps=10000, within="per_pair") < 0.90
    assert meta.coverage((3, 3, 3), tau=0.03, reps=10000, hk="none") < 0.90
    assert meta.coverage((3, 3, 3), tau=0.0, reps=10000, hk="modified") > 0.98


def test_cmh_and_mantel_haenszel_risk_difference_hand_computed():
    # stratum 1 [[10, 5], [4, 11]]: E[a] = 15 * 14 / 30 = 7, Var = 15 * 15 * 14 * 16 / (30^2 * 29) = 1.931034
    # stratum 2 [[8, 2], [3, 7]]:   E[a] = 10 * 11 / 20 = 5.5, Var = 10 * 10 * 11 * 9 / (20^2 * 19) = 1.302632
    tables = [[10, 5, 4, 11], [8, 2, 3, 7], [1, 0, 0, 0]]  # a one-fact stratum carries no information
    var = 1.931034 + 1.302632
    res = meta.cmh_test(tables)
    assert res["strata"] == 2 and res["n"] == 50
    assert res["chi2"] == pytest.approx((5.5 - 0.5) ** 2 / var, rel=1e-5)
    assert meta.cmh_test(tables, correct=False)["chi2"] == pytest.approx(5.5 ** 2 / var, rel=1e-5)
    assert res["p"] == pytest.approx(math.erfc(math.sqrt(res["chi2"] / 2)))
    assert res["odds_ratio"] == pytest.approx((110 / 30 + 56 / 20) / (20 / 30 + 6 / 20))
    # RD_MH = (7.5 * (10/15 - 4/15) + 5 * (8/10 - 3/10)) / (7.5 + 5) = 0.44
    rd = meta.mh_risk_difference(tables)
    assert rd["rd"] == pytest.approx(0.44) and rd["low"] < 0.44 < rd["high"]
    # one large stratum: the Sato variance is close to the unconditional binomial one
    one = meta.mh_risk_difference([[300, 700, 200, 800]])
    assert one["rd"] == pytest.approx(0.1)
    assert one["se"] == pytest.approx(math.sqrt(0.3 * 0.7 / 1000 + 0.2 * 0.8 / 1000), rel=0.02)
    # stratification matters: within each run answering is independent of the probe (0.9 vs 0.9 and
    # 0.1 vs 0.1), but the good run predicts most facts: pooled over runs, 0.74 vs 0.26
    runs = [[72, 8, 18, 2], [2, 18, 8, 72]]
    assert meta.mh_risk_difference(runs)["rd"] == pytest.approx(0.0, abs=1e-12)
    assert meta.cmh_test(runs, correct=False)["chi2"] == pytest.approx(0.0, abs=1e-12)
    assert meta.mh_risk_difference([[74, 26, 26, 74]])["rd"] == pytest.approx(0.48)

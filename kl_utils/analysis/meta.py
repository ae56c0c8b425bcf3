"""Random-effects meta-analysis of paired differences over (base model, data draw) pairs, and the
Cochran-Mantel-Haenszel test / Mantel-Haenszel risk difference over strata of 2x2 tables.

The unit of replication of a claim is the *pair* (base model, data draw): within a pair, the CPT
seeds give the mean paired difference y_i of two arms and its variance v_i; between pairs the true
difference varies with variance tau^2. The pooled difference is the inverse-variance weighted mean
with weights 1 / (v_i + tau^2), tau^2 estimated by REML, and its 95% CI is the Hartung-Knapp-Sidik-
Jonkman (HKSJ) interval: a t interval with k - 1 degrees of freedom around a variance that is
rescaled by the weighted spread of the y_i. docs/statistics.md explains these choices;
tests/test_meta.py checks the coverage by simulation at the sizes we use.

Every function takes numpy arrays whose last axis runs over pairs, so a simulation can pass
(replicates, pairs) arrays and get one analysis per replicate.
"""
from __future__ import annotations

import math

import numpy as np

from kl_utils.analysis import stats

TAU2_METHODS = ("reml", "dl")
MIN_VARIANCE = 1e-12  # a pair whose within-pair variance is 0 (one seed, identical seeds) gets this


def pair_summaries(groups, within: str = "pooled"):
    """(y, v, n) of each pair from its per-seed paired differences.

    groups: a list (one entry per pair) of arrays whose last axis is the pair's seeds (shape (n_i,)
    or (replicates, n_i)). y_i: the mean difference; v_i: its variance, sigma^2 / n_i, with sigma^2
      within="pooled": the within-pair variance pooled over the pairs with >= 2 seeds (degrees of
        freedom sum(n_i - 1)); pairs with one seed get it too; 0 when no pair has 2 seeds;
      within="per_pair": each pair's own sample variance (a one-seed pair falls back to the pooled).
    """
    if within not in ("pooled", "per_pair"):
        raise ValueError(f"within must be 'pooled' or 'per_pair', not {within!r}")
    groups = [np.asarray(g, dtype=float) for g in groups]
    n = np.array([g.shape[-1] for g in groups], dtype=float)
    y = np.stack([g.mean(-1) for g in groups], -1)
    ss = np.stack([((g - g.mean(-1, keepdims=True)) ** 2).sum(-1) for g in groups], -1)
    dof = (n - 1).sum()
    pooled = ss.sum(-1, keepdims=True) / dof if dof > 0 else np.zeros_like(y[..., :1])
    sigma2 = np.broadcast_to(pooled, y.shape)
    if within == "per_pair":
        sigma2 = np.where(n >= 2, ss / np.maximum(n - 1, 1), sigma2)
    return y, sigma2 / n, n


def _fixed(y, w):
    return (w * y).sum(-1) / w.sum(-1)


def tau2_dl(y, v):
    """DerSimonian-Laird moment estimator of tau^2 (>= 0)."""
    w = 1.0 / np.maximum(v, MIN_VARIANCE)
    mu = _fixed(y, w)
    q = (w * (y - mu[..., None]) ** 2).sum(-1)
    c = w.sum(-1) - (w ** 2).sum(-1) / w.sum(-1)
    return np.maximum(0.0, (q - (y.shape[-1] - 1)) / c)


def tau2_reml(y, v, iterations: int = 500, tol: float = 1e-12):
    """REML estimate of tau^2 (>= 0) by the fixed-point iteration of Viechtbauer (2005, eq. 12),
    started at the DL estimate: tau^2 = sum w^2 ((y - mu)^2 - v) / sum w^2 + 1 / sum w."""
    v = np.maximum(v, MIN_VARIANCE)
    tau2 = tau2_dl(y, v)
    for _ in range(iterations):
        w = 1.0 / (v + tau2[..., None])
        mu = _fixed(y, w)
        new = np.maximum(0.0, (w ** 2 * ((y - mu[..., None]) ** 2 - v)).sum(-1) / (w ** 2).sum(-1) + 1.0 / w.sum(-1))
        if np.all(np.abs(new - tau2) < tol):
            return new
        tau2 = new
    return tau2


def random_effects(y, v, *, tau2_method: str = "reml", hk: str = "plain") -> dict:
    """Random-effects pooled estimate with the Hartung-Knapp(-Sidik-Jonkman) CI.

    hk: "plain" (HKSJ: the variance rescaled by q = sum w (y - mu)^2 / (k - 1)), "modified" (q
    replaced by max(q, 1), so the interval is never narrower than the one from the weights alone;
    Roever et al. 2015), or "none" (the normal Wald interval of DerSimonian-Laird, for comparison).
    The defaults (REML, plain HKSJ, with pair_summaries' pooled within-pair variance) are the ones
    whose coverage `coverage` measured at 94-95% at our sizes (docs/statistics.md).
    Returns arrays (or floats for one analysis): mu, se, low, high, tau2, q (Cochran's Q, fixed-effect
    weights; NaN where no pair has a variance above MIN_VARIANCE, since Q would then only be the spread
    over MIN_VARIANCE), k, df and p (two-sided, H0: mu = 0)."""
    if tau2_method not in TAU2_METHODS:
        raise ValueError(f"tau2_method must be one of {TAU2_METHODS}, not {tau2_method!r}")
    if hk not in ("plain", "modified", "none"):
        raise ValueError(f"hk must be 'plain', 'modified' or 'none', not {hk!r}")
    y, v_given = np.asarray(y, dtype=float), np.asarray(v, dtype=float)
    v = np.maximum(v_given, MIN_VARIANCE)
    k = y.shape[-1]
    if k < 2:
        raise ValueError("random_effects: need >= 2 pairs")
    tau2 = tau2_reml(y, v) if tau2_method == "reml" else tau2_dl(y, v)
    w = 1.0 / (v + tau2[..., None])
    mu = _fixed(y, w)
    var = 1.0 / w.sum(-1)
    if hk != "none":
        scale = (w * (y - mu[..., None]) ** 2).sum(-1) / (k - 1)
        var = var * (np.maximum(scale, 1.0) if hk == "modified" else scale)
    se = np.sqrt(var)
    crit = stats.t95(k - 1) if hk != "none" else 1.959964
    w_fixed = 1.0 / v
    q = (w_fixed * (y - _fixed(y, w_fixed)[..., None]) ** 2).sum(-1)
    q = np.where((v_given > MIN_VARIANCE).any(-1), q, np.nan)
    out = {"mu": mu, "se": se, "low": mu - crit * se, "high": mu + crit * se, "tau2": tau2, "q": q, "k": k,
           "df": k - 1 if hk != "none" else None}
    if np.ndim(mu) == 0:
        out = {key: float(val) if isinstance(val, np.ndarray) else val for key, val in out.items()}
        out["p"] = stats.p_two_sided(out["mu"], out["se"], df=out["df"])
    return out


def meta_of_pairs(groups, *, within: str = "pooled", tau2_method: str = "reml", hk: str = "plain") -> dict:
    """random_effects over pairs given as lists of per-seed paired differences, plus n_pairs and
    n_seeds (total); groups with no seed are dropped. Needs >= 2 pairs."""
    groups = [list(g) for g in groups if len(g)]
    y, v, n = pair_summaries(groups, within)
    return {**random_effects(y, v, tau2_method=tau2_method, hk=hk), "n_pairs": len(groups), "n_seeds": int(n.sum()),
            "pair_means": [float(x) for x in y]}


# --- stratified 2x2 tables (C1 per fact, strata = runs) ---

def _cells(tables):
    t = np.asarray(tables, dtype=float).reshape(-1, 4)  # rows: (a, b, c, d) per stratum
    t = t[t.sum(1) >= 2]
    return t[:, 0], t[:, 1], t[:, 2], t[:, 3]


def cmh_test(tables, correct: bool = True) -> dict:
    """Cochran-Mantel-Haenszel test of no association in any stratum (1 df), over 2x2 tables
    [[a, b], [c, d]] (a: exposed with outcome, b: exposed without, c: unexposed with, d: unexposed
    without); with the 0.5 continuity correction by default (as R's mantelhaen.test).
    Returns chi2, p, and the Mantel-Haenszel common odds ratio."""
    a, b, c, d = _cells(tables)
    n = a + b + c + d
    expected = (a + b) * (a + c) / n
    var = (a + b) * (c + d) * (a + c) * (b + d) / (n ** 2 * (n - 1))
    dev = abs((a - expected).sum())
    chi2 = max(0.0, dev - (0.5 if correct else 0.0)) ** 2 / var.sum() if var.sum() > 0 else float("nan")
    p = math.erfc(math.sqrt(chi2 / 2.0)) if not math.isnan(chi2) else float("nan")
    den = (b * c / n).sum()
    return {"chi2": float(chi2), "p": float(p), "odds_ratio": float((a * d / n).sum() / den) if den > 0 else float("inf"),
            "strata": int(len(n)), "n": int(n.sum())}


def mh_risk_difference(tables) -> dict:
    """Mantel-Haenszel common risk difference a/(a+b) - c/(c+d) over strata, with the variance of
    Sato, Greenland & Robins (1989; valid for sparse and large strata alike) and its 95% Wald CI."""
    a, b, c, d = _cells(tables)
    n1, n0 = a + b, c + d
    n = n1 + n0
    w = n1 * n0 / n
    rd = (a * n0 / n - c * n1 / n).sum() / w.sum()
    p_term = (n1 ** 2 * c - n0 ** 2 * a + n1 * n0 * (n0 - n1) / 2.0) / n ** 2
    q_term = (a * (n0 - c) + c * (n1 - a)) / (2.0 * n)
    se = math.sqrt(max(0.0, (rd * p_term.sum() + q_term.sum()) / w.sum() ** 2))
    return {"rd": float(rd), "se": se, "low": float(rd - 1.959964 * se), "high": float(rd + 1.959964 * se)}


# --- coverage by simulation (tests/test_meta.py; `python -m kl_utils.analysis.meta` prints the full table) ---

def simulate_pairs(seeds_per_pair, *, effect: float, tau: float, sigma: float, reps: int, rng) -> list:
    """reps simulated studies: pair i has true difference effect + u_i, u_i ~ N(0, tau^2), and
    seeds_per_pair[i] per-seed differences with N(0, sigma_i^2) noise (sigma: one value, or one per
    pair). Returns one (reps, n_i) array per pair."""
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=float), (len(seeds_per_pair),))
    u = rng.normal(0.0, tau, (reps, len(seeds_per_pair)))
    return [effect + u[:, i:i + 1] + rng.normal(0.0, sigmas[i], (reps, n)) for i, n in enumerate(seeds_per_pair)]


def coverage(seeds_per_pair, *, effect: float = 0.05, tau: float = 0.03, sigma=0.02, reps: int = 4000,
             seed: int = 0, within: str = "pooled", tau2_method: str = "reml", hk: str = "plain") -> float:
    """Fraction of simulated studies whose 95% CI contains the true effect."""
    groups = simulate_pairs(seeds_per_pair, effect=effect, tau=tau, sigma=sigma, reps=reps, rng=np.random.default_rng(seed))
    y, v, _ = pair_summaries(groups, within)
    res = random_effects(y, v, tau2_method=tau2_method, hk=hk)
    return float(np.mean((res["low"] <= effect) & (effect <= res["high"])))


SIM_DESIGNS = ((1, 1, 1), (2, 2, 2), (3, 3, 3), (5, 5, 5), (1, 3, 5), (1, 2, 3, 5), (3, 3, 3, 3), (2, 2, 2, 2, 2),
               (1, 2, 3, 4, 5), (5, 5, 5, 5, 5))
SIM_TAUS = (0.0, 0.01, 0.03, 0.06)


def main(argv=None) -> None:
    """Print the coverage of each method variant at our sizes (the table of docs/statistics.md)."""
    import argparse
    ap = argparse.ArgumentParser(description="95% CI coverage of the random-effects variants by simulation")
    ap.add_argument("--reps", type=int, default=10000)
    ap.add_argument("--sigma", type=float, nargs="+", default=[0.02],
                    help="within-pair SD of a seed's difference: one value, or one per pair (then only designs of that many pairs)")
    args = ap.parse_args(argv)
    sigma = args.sigma[0] if len(args.sigma) == 1 else tuple(args.sigma)
    variants = [(w, h, "reml") for w in ("pooled", "per_pair") for h in ("plain", "modified", "none")]
    variants.insert(1, ("pooled", "plain", "dl"))
    names = [f"{w}/{h}" + ("/dl" if t == "dl" else "") for w, h, t in variants]
    print("tau   seeds per pair    " + "  ".join(names))
    for tau in SIM_TAUS:
        for design in SIM_DESIGNS:
            if len(args.sigma) > 1 and len(design) != len(args.sigma):
                continue
            covs = [coverage(design, tau=tau, sigma=sigma, reps=args.reps, within=w, hk=h, tau2_method=t)
                    for w, h, t in variants]
            print(f"{tau:<5} {str(design):<17} " + "  ".join(f"{c:.3f}".rjust(len(n)) for c, n in zip(covs, names)))

if __name__ == "__main__":
    main()

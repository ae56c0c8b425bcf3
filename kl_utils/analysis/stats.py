"""Small statistics used for every reported number: mean with a 95% t confidence interval over
seeds, and paired differences between arms over the same seeds."""
from __future__ import annotations

import math

# Two-sided 95% critical values of Student's t (df = 1..30); beyond 30 the normal 1.96 is within 2%.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]


def t95(df: int) -> float:
    if df < 1:
        return float("nan")
    return _T95[df - 1] if df <= len(_T95) else 1.96


def mean_ci(values) -> dict:
    """Mean and 95% CI half-width (t-interval); half-width is nan for fewer than 2 values."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci: no values")
    mean = sum(xs) / n
    if n < 2:
        return {"mean": mean, "half_width": float("nan"), "low": float("nan"), "high": float("nan"), "n": n}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    hw = t95(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "half_width": hw, "low": mean - hw, "high": mean + hw, "n": n}


def paired_diff_ci(a: dict, b: dict) -> dict:
    """CI of mean(b - a) over the seeds both arms share (dicts seed -> value)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("paired_diff_ci: the two arms share no seed")
    return {**mean_ci([b[s] - a[s] for s in seeds]), "seeds": seeds}


def fmt(ci: dict, digits: int = 3) -> str:
    if math.isnan(ci["half_width"]):
        return f"{ci['mean']:.{digits}f} (n={ci['n']})"
    return f"{ci['mean']:.{digits}f} ± {ci['half_width']:.{digits}f}"


def _rank(xs):
    """Average ranks (ties share their mean rank), for Spearman's rho."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def correlation(x, y, method: str = "pearson") -> float:
    """Pearson's r, or Spearman's rho (Pearson on ranks); nan when either side is constant."""
    x, y = [float(v) for v in x], [float(v) for v in y]
    if method == "spearman":
        x, y = _rank(x), _rank(y)
    elif method != "pearson":
        raise ValueError(f"unknown correlation {method!r}; valid: pearson, spearman")
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def bootstrap_corr_ci(x, y, method: str = "pearson", n_boot: int = 2000, seed: int = 0) -> dict:
    """Correlation and its 95% percentile-bootstrap CI (pairs resampled with replacement;
    resamples with a constant side are skipped)."""
    import random
    if len(x) != len(y) or len(x) < 3:
        raise ValueError("bootstrap_corr_ci: need >= 3 paired values")
    rng = random.Random(seed)
    n, boots = len(x), []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        r = correlation([x[i] for i in idx], [y[i] for i in idx], method)
        if not math.isnan(r):
            boots.append(r)
    boots.sort()
    if not boots:
        return {"r": correlation(x, y, method), "low": float("nan"), "high": float("nan"), "n": n}
    return {"r": correlation(x, y, method), "low": boots[int(0.025 * (len(boots) - 1))],
            "high": boots[int(0.975 * (len(boots) - 1))], "n": n}


# --- distributions and p-values (numpy / scipy-free: the CI and test of every claims row) ---

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
            last = d * c
        if abs(last - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on t_cdf; |error| < 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_ppf: p must be in (0, 1), got {p}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    while hi - lo > 1e-10:
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2.0


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def p_two_sided(estimate: float, se: float, null: float = 0.0, df: float | None = None) -> float:
    """Two-sided p-value of H0: parameter = null, from a t (df given) or normal (df None) statistic."""
    if not se > 0 or math.isnan(estimate):
        return float("nan")
    z = abs(estimate - null) / se
    return 2.0 * (1.0 - (t_cdf(z, df) if df is not None else normal_cdf(z)))


def holm(p_values: list) -> list:
    """Holm-Bonferroni adjusted p-values (step-down, monotone); None / nan entries stay nan and do not
    count towards the number of tests."""
    idx = [i for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    out = [float("nan")] * len(p_values)
    m, running = len(idx), 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out

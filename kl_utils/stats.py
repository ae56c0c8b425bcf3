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

"""Tables and figures of the main experiments, built from arm run records only (notebooks 04, 06).
Every figure: one seaborn style (kl_utils.reporting.plots), colour-blind palette, 95% CIs over seeds."""
from __future__ import annotations

import math


import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from kl_utils.analysis import stats
from kl_utils.reporting import plots
from kl_utils.config.arms import ablation_of, grads_per_step

# The headline arms, in display order, per budget ("steps": every arm gets the baseline's
# optimizer steps; "epochs": the paper's setting, augmentation adds tokens and steps).
HEADLINE = {"steps": ["baseline", "format_steps", "sam", "format_sam_steps"],
            "epochs": ["baseline", "format", "sam", "format_sam"]}
LABELS = {"baseline": "AdamW", "format_steps": "+format", "format": "+format", "sam": "+SAM",
          "format_sam_steps": "+format +SAM", "format_sam": "+format +SAM", "baseline_2x": "AdamW, 2x epochs",
          "sam_every4": "+SAM every 4th step", "it_format_sam": "+format +SAM in IT",
          "it_format": "+format in IT", "it_sam": "+SAM in IT", "it_2x": "AdamW, 2x IT epochs", "it_format_sam_steps": "+format +SAM in IT",
          "para4": "4 paraphrases", "para4_format": "4 paraphrases +format", "para4_eda": "4 paraphrases +EDA",
          "para4_format_sam": "4 paraphrases +format +SAM", "para4_format_sam_steps": "4 paraphrases +format +SAM",
          "para4_2x": "4 paraphrases, 2x epochs", "para4_4x": "4 paraphrases, 4x epochs", "pit": "PIT order", "pit_format_sam": "PIT order +format +SAM (CPT and IT)",
          "baseline@lrx2.0": "AdamW, lr x2", "baseline@lrx4.0": "AdamW, lr x4", "baseline@lrx0.5": "AdamW, lr x0.5"}
# The saturation control (cpu-full grid `saturation`): AdamW at 0.5x ... 8x the CPT epochs, and the
# methods at 1x and 2x; each method point has AdamW points at its optimizer steps and at its
# gradient evaluations.
SATURATION_CURVE = ["baseline_ep6", "baseline", "baseline_2x", "baseline_ep48", "baseline_ep96", "baseline_ep192"]
SATURATION_POINTS = ["format", "format_ep24", "format_ep48", "sam", "sam_ep96", "sam_ep24", "format_sam", "format_sam_ep24",
                     "baseline@lrx2.0", "baseline@lrx4.0"]


def long_label(arm: str) -> str:
    """Display name with the budget where two arms share a short label."""
    suffix = (", step-matched" if arm.endswith("_steps") else
              ", epoch-matched" if arm in ("format", "format_sam", "it_format", "it_format_sam", "para4_format_sam") else "")
    return LABELS.get(arm, arm) + suffix


def arm_frame(recs: list[dict]) -> pd.DataFrame:
    """One row per arm run: metrics, optimizer steps and gradient evaluations (SAM: two per step);
    `ablation`: the generated ablation the arm is (kl_utils.config.arms.Ablation), else None."""
    rows = []
    for r in recs:
        cfg, steps = r["config"], r.get("optimizer_steps", {})
        grads = 0
        for stage, n in steps.items():
            grads += n * grads_per_step(cfg.get("it" if stage == "pit" else stage, {}))
        rows.append({"arm": r["arm"], "seed": r["seed"], "budget": cfg.get("budget", "epochs"),
                     "run_id": r["run_id"], **{m: r["metrics"].get(m) for m in
                                               ("test_em", "valid_em", "train_em", "test_em_before_it", "test_f1")},
                     "cpt_steps": steps.get("cpt", 0), "total_steps": sum(steps.values()), "grad_evals": grads,
                     "cpt_grad_evals": steps.get("cpt", 0) * grads_per_step(cfg.get("cpt", {})),
                     "cpt_epochs": cfg.get("cpt", {}).get("epochs"), "cpt_lr": cfg.get("cpt", {}).get("lr"),
                     "it_steps": steps.get("it", 0),
                     "wall_s": r["wall_time_s"], "ablation": ablation_of(r["arm"], cfg)})
    return pd.DataFrame(rows)


def arm_summary(df: pd.DataFrame, metric: str = "test_em") -> pd.DataFrame:
    """Per arm: n seeds, mean ± 95% CI of `metric`, mean optimizer steps."""
    out = []
    for arm, g in df.groupby("arm", sort=False):
        ci = stats.mean_ci(g[metric])
        out.append({"arm": arm, "budget": g["budget"].iloc[0], "seeds": ci["n"], "mean": ci["mean"],
                    "ci95": ci["half_width"], "steps": g["total_steps"].mean(), "grad evals": g["grad_evals"].mean(),
                    "train_em": g["train_em"].mean()})
    return pd.DataFrame(out).set_index("arm")


def headline_figure(df: pd.DataFrame, metric: str = "test_em"):
    """Held-out QA per headline arm with 95% CIs, one panel per budget."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, (budget, arms) in zip(axes, HEADLINE.items()):
        sub = df[df.arm.isin(arms)].copy()
        sub["label"] = sub.arm.map(lambda a: LABELS.get(a, a))
        order = [LABELS.get(a, a) for a in arms if a in set(sub.arm)]
        if len(sub):
            sns.barplot(data=sub, x="label", y=metric, order=order, errorbar=plots.t_interval, ax=ax,
                        hue="label", hue_order=order, legend=False)
            plots.strip(data=sub, x="label", y=metric, order=order, color="black", size=3, ax=ax)
        ax.set(title=f"{budget[:-1]}-matched budget", xlabel="", ylabel="held-out QA exact match")
    fig.suptitle("Held-out QA exact match (bars: mean, 95% CI over seeds; dots: seeds)")
    fig.tight_layout()
    return fig


def steps_figure(df: pd.DataFrame, metric: str = "test_em"):
    """Held-out QA against optimizer steps (CPT + IT) and against gradient evaluations, per arm:
    does a method win because it trains longer?"""
    g = df.groupby("arm").agg(mean=(metric, "mean"), sd=(metric, "std"), n=(metric, "size"),
                              steps=("total_steps", "mean"), grads=("grad_evals", "mean")).reset_index()
    g["ci"] = [stats.mean_ci(df[df.arm == a][metric])["half_width"] for a in g.arm]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, x, xlabel in zip(axes, ("steps", "grads"), ("optimizer steps (CPT + IT)", "gradient evaluations (SAM: 2 per step)")):
        palette = sns.color_palette("colorblind", len(g))
        for (_, row), color in zip(g.iterrows(), palette):
            ax.errorbar(row[x], row["mean"], yerr=row["ci"] if row["n"] > 1 else None, fmt="o", color=color,
                        capsize=3, label=long_label(row.arm))
        ax.set(xlabel=xlabel, ylabel="held-out QA exact match")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, title="arm (mean, 95% CI)")
    fig.suptitle("Held-out QA against training budget")
    fig.tight_layout()
    return fig


def ablation_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of generated ablation arms (kl_utils.config.arms.ablation_arms; arm_frame reads each
    from its record's settings) with their factor and level, and k and rho of the rho x k arms."""
    rows = []
    for _, r in df.iterrows():
        found = r.get("ablation")
        if found:
            row = {**r.drop("ablation").to_dict(), "factor": found.factor, "level": found.level}
            if found.factor == "rho_k":
                row.update(k=found.k, rho=found.rho)
            rows.append(row)
    return pd.DataFrame(rows)


def lr_tuning_table(df: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """Per arm and learning-rate factor: mean valid and held-out EM over seeds; `chosen` marks the
    variant with the best mean *validation* EM (claims.best_by_valid: the rule the tuned claims rows use)."""
    from kl_utils.reporting import claims
    rows = []
    for arm in arms:
        sub = df[df.arm.isin(claims.lr_variants(set(df.arm), arm))]
        if not len(sub):
            continue
        g = sub.groupby("arm").agg(valid_em=("valid_em", "mean"), test_em=("test_em", "mean"), seeds=("seed", "nunique"))
        best = claims.best_by_valid(g["valid_em"].to_dict(), arm)
        for a, r in g.iterrows():
            rows.append({"arm": arm, "lr factor": float(a.split("@lrx")[1]) if "@lrx" in a else 1.0,
                         "valid EM": r.valid_em, "held-out EM": r.test_em, "seeds": int(r.seeds), "chosen": a == best})
    out = pd.DataFrame(rows)
    return out.sort_values(["arm", "lr factor"]).reset_index(drop=True) if len(out) else out


def _number(level: str) -> float:
    """A numeric level (k, rho) as a number, for sorting; 0 for a name (a family)."""
    try:
        return float(level)
    except ValueError:
        return 0


def ablation_figure(abl: pd.DataFrame, baseline: float, metric: str = "test_em"):
    """Bars per level of each single-factor ablation, the baseline mean as a dashed line."""
    factors = [f for f in ("family", "k", "rho") if f in set(abl.get("factor", []))]
    if not factors:
        return None
    fig, axes = plt.subplots(1, len(factors), figsize=(5 * len(factors), 3.8), squeeze=False)
    for ax, f in zip(axes[0], factors):
        sub = abl[abl.factor == f]
        order = sorted(set(sub.level), key=lambda v: (_number(v), v))
        sns.barplot(data=sub, x="level", y=metric, order=order, errorbar=plots.t_interval, ax=ax, color="C0")
        ax.axhline(baseline, ls="--", color="gray", label="AdamW baseline")
        ax.set(title={"family": "one augmentation family (k=1, step-matched)", "k": "formatted copies k (step-matched)",
                      "rho": "SAM radius rho"}[f], xlabel=f, ylabel="held-out QA exact match")
        ax.tick_params(axis="x", rotation=30 if f == "family" else 0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rho_k_figure(abl: pd.DataFrame, metric: str = "test_em", baseline: float | None = None):
    """Mean held-out QA over the rho x k grid of format + SAM (step-matched). With `baseline` (AdamW's
    mean at the same steps) the colours diverge around it: red below AdamW, blue above."""
    sub = abl[abl.get("factor") == "rho_k"] if len(abl) else abl
    if not len(sub):
        return None
    sub = sub.assign(k=sub.k.astype(int))
    grid = sub.groupby(["k", "rho"])[metric].mean().unstack("rho")
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {"cmap": "RdBu", "center": baseline} if baseline is not None else {"cmap": "viridis"}
    sns.heatmap(grid, annot=True, fmt=".3f", ax=ax, cbar_kws={"label": "held-out QA EM (mean over seeds)"}, **colours)
    title = "format + SAM: rho x k (step-matched)" + (f"\nAdamW at the same steps: {baseline:.3f}" if baseline is not None else "")
    ax.set(title=title, xlabel="SAM radius rho", ylabel="formatted copies k")
    fig.tight_layout()
    return fig


def saturation_figure(df: pd.DataFrame, metric: str = "test_em"):
    """Held-out QA against CPT optimizer steps and against CPT gradient evaluations: AdamW's curve
    over CPT epochs (line) and each method (markers). A method beats training longer only if its
    point lies above the AdamW curve at its own x."""
    g = df.groupby("arm").agg(mean=(metric, "mean"), n=(metric, "size"), steps=("cpt_steps", "mean"),
                              grads=("cpt_grad_evals", "mean"), epochs=("cpt_epochs", "mean")).reset_index().set_index("arm")
    g["ci"] = [stats.mean_ci(df[df.arm == a][metric])["half_width"] if n > 1 else 0.0 for a, n in g["n"].items()]
    curve = [a for a in SATURATION_CURVE if a in g.index]
    points = [a for a in SATURATION_POINTS if a in g.index]
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.2), sharey=True)
    # one colour and marker per method; open markers at the fewer epochs, filled at the more
    methods = list(dict.fromkeys(a.split("_ep")[0] for a in points))
    colour = dict(zip(methods, sns.color_palette("colorblind", len(methods) + 1)[1:]))
    marker = dict(zip(methods, "s^DvPX*o"))
    nudge = {m: 1 + 0.025 * (k - (len(methods) - 1) / 2) for k, m in enumerate(methods)}  # side by side in x
    most = {m: max(g.loc[a, "epochs"] for a in points if a.split("_ep")[0] == m) for m in methods}
    for ax, x, xlabel in zip(axes, ("steps", "grads"), ("CPT optimizer steps", "CPT gradient evaluations (SAM: 2 per step)")):
        c = g.loc[curve]
        ax.errorbar(c[x], c["mean"], yerr=c["ci"], fmt="-o", color="0.35", capsize=3, label="AdamW, CPT epochs as marked")
        for a in curve:
            ax.annotate(f"{g.loc[a, 'epochs']:.0f} ep", (c.loc[a, x], c.loc[a, "mean"]), textcoords="offset points",
                        xytext=(5, -12), fontsize=7, color="0.35")
        for a in points:
            m = a.split("_ep")[0]
            filled = g.loc[a, "epochs"] == most[m]
            ax.errorbar(g.loc[a, x] * nudge[m], g.loc[a, "mean"], yerr=g.loc[a, "ci"], fmt=marker[m], color=colour[m],
                        markerfacecolor=colour[m] if filled else "white", capsize=3, markersize=7,
                        label=f"{LABELS.get(m, m)}, {g.loc[a, 'epochs']:.0f} CPT epochs")
        ax.set_xscale("log", base=2)
        ax.set(xlabel=xlabel, ylabel="held-out QA exact match")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, title="mean, 95% CI over seeds")
    fig.suptitle("Is the miniature trained to convergence? Held-out QA against CPT budget")
    fig.tight_layout()
    return fig


def budget_table(df: pd.DataFrame, arms: list[str], metric: str = "test_em") -> pd.DataFrame:
    """Per arm (in the given order, those present): CPT epochs, lr, optimizer steps and gradient
    evaluations, and validation / held-out / train-half EM (held-out: mean ± 95% CI)."""
    rows = []
    for arm in [a for a in arms if a in set(df.arm)]:
        g = df[df.arm == arm]
        ci = stats.mean_ci(g[metric])
        rows.append({"arm": arm, "CPT epochs": g.cpt_epochs.iloc[0], "CPT lr": g.cpt_lr.iloc[0],
                     "CPT steps": int(g.cpt_steps.mean()), "CPT grad evals": int(g.cpt_grad_evals.mean()),
                     "IT steps": int(g.it_steps.mean()), "seeds": ci["n"], "valid EM": g.valid_em.mean(),
                     "held-out EM": ci["mean"], "± 95% CI": ci["half_width"], "train-half EM": g.train_em.mean(),
                     "EM before IT": g.test_em_before_it.mean()})
    return pd.DataFrame(rows).set_index("arm")


IT_SIDE = ["baseline", "it_2x", "it_format", "it_sam", "it_format_sam_steps", "it_format_sam"]
# C7 (paraphrases, then formatting / EDA / SAM on top) and the PIT order of C6 (cpu-full grid `c7_pit`)
C7_PIT = ["baseline", "para4", "para4_2x", "para4_4x", "para4_eda", "para4_format", "para4_format_sam_steps", "para4_format_sam",
          "pit", "pit_format_sam"]


def it_side_figure(df: pd.DataFrame, arms: list[str] | None = None,
                   title: str = "IT-side arms (C6): which part hurts? (mean, 95% CI over seeds)", steps_of: str = "it"):
    """QA exact match on the IT people (train half) and on held-out people per arm, horizontal bars,
    each label with the arm's optimizer steps of one stage (`steps_of`: it | cpt). By default C6
    decomposed: plain IT and IT with formatted QA pairs, SAM, or both (at the baseline's steps, and
    epoch-matched), and plain IT with twice the epochs."""
    arms = [a for a in (arms or IT_SIDE) if a in set(df.arm)]
    steps = df.groupby("arm")[f"{steps_of}_steps"].mean()
    label = {a: f"{long_label(a)} ({steps[a]:.0f} {steps_of.upper()} steps)" for a in arms}
    sub = df[df.arm.isin(arms)].melt(id_vars=["arm", "seed"], value_vars=["train_em", "test_em"],
                                     var_name="split", value_name="exact match")
    sub["split"] = sub.split.map({"train_em": "IT people (train half)", "test_em": "held-out people"})
    sub["label"] = sub.arm.map(label)
    order = [label[a] for a in arms]
    g = sns.catplot(data=sub, y="label", x="exact match", col="split", order=order, kind="bar", errorbar=plots.t_interval,
                    sharex=False, height=3.6, aspect=1.3, hue="label", hue_order=order, legend=False)
    g.set_titles("{col_name}")
    g.set_ylabels("")
    g.figure.suptitle(title, y=1.04)
    return g.figure


def across_figure(long: pd.DataFrame, pooled: pd.DataFrame | None = None,
                  title: str = "the same comparisons on each profile"):
    """One row per claim comparison (b - a, held-out EM), one marker with its 95% CI per profile
    (e.g. per (base model, data draw) pair): do the verdicts hold across them? With `pooled` (claims
    rows with re_diff / re_ci_low / re_ci_high / n_pairs), a black diamond per row under the markers:
    the random-effects estimate over the pairs with its Hartung-Knapp CI -- the primary verdict.
    None when there is nothing to draw."""
    if not len(long):
        return None
    matched = {"epochs": "epoch-matched", "steps": "step-matched", "compute": "compute-matched"}
    label = lambda c, cmp, b: f"{c} {cmp} ({matched.get(b, b)})"
    long = long.assign(label=[label(*k) for k in zip(long.claim, long.comparison, long.budget)])
    order = list(dict.fromkeys(long.label))
    profiles = list(dict.fromkeys(long.profile))
    slots = len(profiles) + (pooled is not None)
    offset = lambda i: (i - (slots - 1) / 2) * min(0.16, 0.8 / slots)
    fig, ax = plt.subplots(figsize=(10, (0.3 + 0.12 * slots) * len(order) + 2.0))
    for i, prof in enumerate(profiles):
        sub = long[long.profile == prof]
        y = [order.index(lbl) + offset(i) for lbl in sub.label]
        ax.errorbar(sub["diff"], y, xerr=[sub["diff"] - sub.ci_low, sub.ci_high - sub["diff"]], fmt="o",
                    capsize=2, markersize=4, label=f"{prof} (within pair, over CPT seeds)", color=f"C{i}")
    if pooled is not None and len(pooled):
        pooled = pooled.assign(label=[label(*k) for k in zip(pooled.claim, pooled.comparison, pooled.budget)],
                               **{c: pd.to_numeric(pooled[c], errors="coerce") for c in ("re_diff", "re_ci_low", "re_ci_high")})
        pooled = pooled[pooled.label.isin(order) & pooled.re_diff.notna()]
        y = [order.index(lbl) + offset(slots - 1) for lbl in pooled.label]
        ax.errorbar(pooled.re_diff, y, xerr=[pooled.re_diff - pooled.re_ci_low, pooled.re_ci_high - pooled.re_diff],
                    fmt="D", color="black", capsize=3, markersize=6, label="pooled over pairs (random effects, HKSJ 95% CI)")
    ax.axvline(0, color="gray", ls="--")
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    ax.set(xlabel="held-out EM difference b - a (95% CI)", title=title)
    # the legend in a strip of its own under the axes, sized in inches (rows of 8-point text), whatever the
    # number of comparisons: it never covers a marker or the x label
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    strip_in = 0.2 * math.ceil(len(labels) / 2) + 0.1
    fig.tight_layout(rect=(0, strip_in / fig.get_figheight(), 1, 1))
    return fig


# Near convergence (grid `converged` of cpu-full and of the pairs cpu-draw1 / cpu-draw2): AdamW at 8x and
# 16x the CPT epochs, and formatting / SAM / both at AdamW-at-8x's optimizer steps.
NEAR_CONVERGENCE = ["baseline_ep96", "baseline_ep192", "format_ep48", "sam_ep96", "format_sam_ep48"]
NEAR_LABELS = {"baseline_ep96": "AdamW\n96 ep", "baseline_ep192": "AdamW\n192 ep", "format_ep48": "+format\n48 ep",
               "sam_ep96": "+SAM\n96 ep", "format_sam_ep48": "+format +SAM\n48 ep"}


def pairs_frame(pair_recs: dict, arms: list[str]) -> pd.DataFrame:
    """One row per arm run of the given arms in every (base model, data draw) pair: pair (its
    profile), arm, seed, run_id and the metrics of arm_frame. pair_recs: verdicts.pair_records()."""
    frames = [arm_frame([r for r in recs if r["arm"] in arms]).assign(pair=key[0])
              for key, recs in pair_recs.items()]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def near_convergence_figure(df: pd.DataFrame, metric: str = "test_em"):
    """Held-out EM of the near-convergence arms on each (base model, data draw) pair: one colour per
    pair, small points per CPT seed, the pair's mean joined across arms. The three method arms have
    AdamW-at-96's optimizer steps; AdamW at 192 epochs has SAM's and format + SAM's gradient
    evaluations. None when there is nothing to draw."""
    arms = [a for a in NEAR_CONVERGENCE if a in set(df.get("arm", []))]
    if not arms:
        return None
    df = df[df.arm.isin(arms)]
    pairs = list(dict.fromkeys(df.pair))
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for i, pair in enumerate(pairs):
        sub = df[df.pair == pair]
        dx = (i - (len(pairs) - 1) / 2) * 0.08
        x = [arms.index(a) + dx for a in sub.arm]
        ax.scatter(x, sub[metric], s=14, color=f"C{i}", alpha=0.5)
        means = sub.groupby("arm")[metric].mean().reindex(arms)
        n = sub.groupby("arm")[metric].size().reindex(arms)
        ax.plot([k + dx for k in range(len(arms))], means.values, "-o", color=f"C{i}", markersize=6,
                label=f"{pair} ({int(n.max())} seeds)")
    ax.set_xticks(range(len(arms)), [NEAR_LABELS.get(a, a) for a in arms])
    ax.set(ylabel="held-out QA exact match", title="Near convergence, one line per (base model, data draw) pair")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title="pair: mean (line), seeds (points)")
    fig.tight_layout()
    return fig


def it_curves_frame(recs: list[dict], arms=tuple(HEADLINE["steps"])) -> pd.DataFrame:
    """QA exact match after every IT epoch (eval.per_epoch), train and test people, of the given arms' runs."""
    return pd.DataFrame([{"arm": r["arm"], "seed": r["seed"], "IT epoch": e["epoch"], "split": s, "exact match": e[f"{s}_em"]}
                         for r in recs if r["arm"] in arms
                         for e in r["history"].get("it", {}).get("epochs", []) for s in ("train", "test")])


def it_curves_figure(ep: pd.DataFrame):
    """QA exact match over IT epochs per arm (mean, 95% CI over seeds), train and test people as line styles."""
    g = sns.relplot(data=ep, x="IT epoch", y="exact match", hue="arm", style="split", kind="line", marker="o",
                    errorbar=plots.t_interval, height=3.6, aspect=1.8)
    g.set(ylim=(0, 1), title="QA exact match during IT")
    return g.figure

"""Tables and figures of the analysis notebooks, built from run records only: data statistics (01),
the C1 probe and C2 diversity runs (02), the augmentation statistics and audit (03), sharpness and
the probe on the main arms (05). Figures use the study's style (kl_utils.reporting.plots, set by the notebook);
the notebooks save them with plots.savefig and their provenance."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from kl_utils.augment import formatting as augment, audit as R
from kl_utils.analysis import stats
from kl_utils.reporting import plots


def record_frame(recs: list[dict]) -> pd.DataFrame:
    """One row per run record: arm, seed and every metric (sharpness and probe_arm records)."""
    return pd.DataFrame([{"arm": r["arm"], "seed": r["seed"], **r["metrics"]} for r in recs])


def ci_table(df: pd.DataFrame, by: str, cols: list[str], digits: int = 3) -> pd.DataFrame:
    """Per group: mean ± 95% t-interval of each column, as text (stats.fmt)."""
    return df.groupby(by)[cols].agg(lambda v: stats.fmt(stats.mean_ci(v), digits))


# ---------------------------------------------------------------------------------------------
# 01 · data statistics (metrics of the `kind: data` record, kl_utils.data.dataset.statistics)

def data_stats_table(metrics: dict) -> pd.DataFrame:
    """Token lengths (mean, min, max, n) per kind of item, and distinct values per attribute."""
    return pd.DataFrame(metrics["token_lengths"]).T.round(1).join(
        pd.Series(metrics["distinct_values"], name="distinct values").to_frame(), how="outer")


def data_statistics_figure(metrics: dict):
    """Left: share of items per token length, per kind; right: distinct values per attribute."""
    hist = pd.DataFrame([{"kind": k, "tokens": int(n), "count": c}
                         for k, h in metrics["length_histograms"].items() for n, c in h.items()])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    hist["share"] = hist["count"] / hist.groupby("kind")["count"].transform("sum")
    sns.lineplot(data=hist.sort_values("tokens"), x="tokens", y="share", hue="kind", ax=axes[0], drawstyle="steps-mid")
    axes[0].set(xlabel="length (tokens, incl. BOS/EOS)", ylabel="share of items", title="Token lengths")
    dv = pd.Series(metrics["distinct_values"]).sort_values()
    sns.barplot(x=dv.values, y=dv.index, ax=axes[1], color=sns.color_palette()[0])
    axes[1].set(xlabel="distinct values in the population", ylabel="", title="Attribute cardinality")
    return fig


# ---------------------------------------------------------------------------------------------
# 02 · C2 diversity and the C1 probe (`kind: diversity` records, kl_utils.analysis.diversity / probe)

C2_COLUMNS = ["held-out QA EM", "held-out-paraphrase fact acc", "training-context fact acc"]


def diversity_final_frame(recs: list[dict]) -> pd.DataFrame:
    """One row per diversity run: paraphrases, seed, held-out QA EM and the final probe accuracies."""
    return pd.DataFrame([{"paraphrases": r["paraphrases"], "seed": r["seed"], "held-out QA EM": r["metrics"]["test_em"],
                          "held-out-paraphrase fact acc": r["metrics"]["test_heldout_acc"],
                          "training-context fact acc": r["metrics"]["test_train_acc"]} for r in recs])


def c2_diversity_figure(final: pd.DataFrame, passes: int):
    """Three panels (C2_COLUMNS) against the number of distinct paraphrases: mean with 95% CI, seeds as dots."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=False)
    for ax, col in zip(axes, C2_COLUMNS):
        sns.pointplot(data=final, x="paraphrases", y=col, errorbar=plots.t_interval, ax=ax, capsize=0.2, linestyles="-")
        plots.strip(data=final, x="paraphrases", y=col, ax=ax, color="0.4", size=4, alpha=0.6)
        ax.set(title=col, xlabel=f"distinct paraphrases per person ({passes} documents each)", ylabel="")
    fig.suptitle(f"C2: diversity at a fixed budget ({len(set(final.seed))} seeds)", y=1.03)
    return fig


def _one_condition(hist: pd.DataFrame, paraphrases: int) -> pd.DataFrame:
    return hist[hist.paraphrases == paraphrases]


def c1_probe_over_cpt_figure(hist: pd.DataFrame, paraphrases: int):
    """One condition of diversity.history_frame: greedy fact accuracy in the three contexts over passes,
    one line per seed, and held-out QA EM at the QA checkpoints (crosses)."""
    h1 = _one_condition(hist, paraphrases)
    long = h1.melt(id_vars=["seed", "passes"], value_vars=["test_train_acc", "test_heldout_acc", "test_qa_acc"],
                   var_name="context", value_name="greedy fact accuracy")
    long["context"] = long["context"].map({"test_train_acc": "training biography", "test_heldout_acc": "held-out paraphrase",
                                           "test_qa_acc": "QA prompt (teacher-forced)"})
    fig, ax = plt.subplots(figsize=(8, 4.2))
    sns.lineplot(data=long, x="passes", y="greedy fact accuracy", hue="context", units="seed", estimator=None, ax=ax, alpha=0.8)
    qa = h1.dropna(subset=["test_em"])
    ax.scatter(qa["passes"], qa["test_em"], marker="x", color="k", zorder=5, label="held-out QA EM (after IT)")
    ax.legend(fontsize=9)
    ax.set(xlabel="passes over the data (documents seen per person)", ylabel="accuracy (test people)",
           title=f"C1: what CPT teaches, fact by fact (n = {paraphrases} paraphrase, {len(set(h1.seed))} seeds)")
    return fig


LOSS_COLUMNS = {"train_doc_fact_loss": ("training biography", "fact tokens"),
                "train_doc_other_loss": ("training biography", "other tokens"),
                "heldout_doc_fact_loss": ("held-out paraphrase", "fact tokens"),
                "heldout_doc_other_loss": ("held-out paraphrase", "other tokens")}


def c1_generalization_gap_figure(hist: pd.DataFrame, paraphrases: int):
    """One condition: mean token loss on fact and other tokens, training vs held-out documents, over
    passes (mean over seeds, log scale)."""
    loss = _one_condition(hist, paraphrases).melt(id_vars=["seed", "passes"], value_vars=list(LOSS_COLUMNS),
                                                  var_name="key", value_name="loss")
    loss["document"], loss["tokens"] = zip(*loss["key"].map(LOSS_COLUMNS))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    sns.lineplot(data=loss, x="passes", y="loss", hue="document", style="tokens", markers=True, ax=ax, errorbar=None)
    ax.set(yscale="log", xlabel="passes over the data", ylabel="mean token loss (nats, log scale)",
           title="C1: fact tokens as labels: training vs held-out documents")
    return fig


def generalization_gap_line(hist: pd.DataFrame, paraphrases: int) -> str:
    """The fact-token loss after the last pass, training vs held-out paraphrase, and their gap."""
    h1 = _one_condition(hist, paraphrases)
    last = h1[h1.passes == h1.passes.max()][list(LOSS_COLUMNS)].mean()
    return (f"after {h1.passes.max()} passes: fact-token loss {last.train_doc_fact_loss:.3f} (training) vs "
            f"{last.heldout_doc_fact_loss:.3f} (held-out paraphrase): "
            f"gap {last.heldout_doc_fact_loss - last.train_doc_fact_loss:.3f} nats")


def c1_probe_vs_qa_figure(pts: pd.DataFrame, rows: list[dict]):
    """Every (run, QA checkpoint) of probe.checkpoint_points: held-out-paraphrase fact accuracy against
    held-out QA EM; the title gives the correlations of probe.claim_rows."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sns.scatterplot(data=pts, x="heldout_acc", y="test_em", hue="paraphrases", style="seed", palette="viridis", s=60, ax=ax)
    r = {row["metric"].split(" (")[0]: row for row in rows}
    ax.set(xlabel="held-out-paraphrase fact accuracy (end of CPT / checkpoint)", ylabel="held-out QA exact match (after IT)",
           title=f"C1: Pearson r = {r['pearson r']['diff']:.2f} [{r['pearson r']['ci_low']:.2f}, {r['pearson r']['ci_high']:.2f}], "
                 f"Spearman = {r['spearman r']['diff']:.2f}")
    ax.legend(fontsize=8, ncol=2)
    return fig


def final_facts(recs: list[dict]) -> tuple[list[int], list[int], list[int]]:
    """Every test fact of every final model, pooled over runs: (held-out predicted, training context
    predicted, question answered), each 0/1."""
    h, t, a = (sum((r["final_facts"][k] for r in recs), []) for k in ("heldout", "train", "qa_em"))
    return h, t, a


def two_by_two_table(heldout: list[int], answered: list[int]) -> pd.DataFrame:
    """The 2x2 counts (held-out paraphrase predicted x question answered) with the answer rate per row."""
    from kl_utils.analysis import probe
    cells = probe.two_by_two(heldout, answered)
    two = pd.DataFrame([[cells[(1, 1)], cells[(1, 0)]], [cells[(0, 1)], cells[(0, 0)]]],
                       index=["held-out paraphrase: predicted", "held-out paraphrase: not predicted"],
                       columns=["question answered", "not answered"])
    two["answer rate"] = two["question answered"] / two.sum(axis=1)
    return two


# ---------------------------------------------------------------------------------------------
# 03 · augmentation statistics (`kind: augment_stats`) and the audit (`kind: augment_audit`)

SEQUENCE_COLUMNS = {"documents": "documents", "variants": "variants (one per family)",
                    "distinct_original_sequences": "distinct originals",
                    "distinct_sequences_with_variants": "distinct with variants",
                    "distinct_sequences_added": "distinct sequences added"}


def sequences_table(metrics: dict) -> pd.DataFrame:
    """Per corpus: documents, variants and distinct token sequences before and with the variants."""
    return pd.DataFrame({c: {v: s[k] for k, v in SEQUENCE_COLUMNS.items()}
                         for c, s in metrics["corpora"].items()}).T.rename_axis("token sequences")


def variety_table(metrics: dict) -> pd.DataFrame:
    """One row: distinct token sequences each family yields for the fixed text over 200 seeds."""
    variety = metrics["variety_fixed_text_200_seeds"]
    return pd.Series({f: variety[f] for f in augment.FAMILIES},
                     name="variety: distinct token sequences, fixed text, 200 seeds").to_frame().T


def stats_lines(metrics: dict) -> list[str]:
    """Per corpus, one sentence: sequences added, the least changed family, the length increase range."""
    out = []
    for corpus, st in metrics["corpora"].items():
        fams = {f: st["families"][f] for f in augment.FAMILIES}
        grow = {f: s["token_increase_pct_mean"] for f, s in fams.items()}
        changed = min(s["changed_token_sequence_share"] for s in fams.values())
        out.append(f"{corpus}: one variant per family adds {st['distinct_sequences_added']:,} distinct token sequences to "
                   f"{st['distinct_original_sequences']:,} distinct originals; in every family at least {changed:.1%} of the "
                   f"variants differ from their original in tokens; mean length increase from {min(grow.values()):.0f}% "
                   f"({min(grow, key=grow.get)}) to {max(grow.values()):.0f}% ({max(grow, key=grow.get)})")
    return out


def _hist_frame(metrics: dict, key: str) -> pd.DataFrame:
    return pd.DataFrame([{"corpus": c, "family": f, key: v} for c, s in metrics["corpora"].items()
                         for f, st in s["families"].items() for v in R.expand_hist(st[f"{key}_hist"])])


def augmentation_lengths_figure(metrics: dict, corpus: str = R.BIO_CORPUS):
    """Left: token lengths per family on `corpus`; right: length added by each family (% of the
    original) on every corpus."""
    tokens, increase = _hist_frame(metrics, "token"), _hist_frame(metrics, "token_increase_pct")
    order = list(R.FAMILY_ORDER)
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.2))
    sns.boxplot(data=tokens[tokens.corpus == corpus], x="family", y="token", order=order, ax=axes[0],
                color=sns.color_palette()[0], fliersize=2)
    axes[0].set(title=f"Document length per family: {corpus}", xlabel="", ylabel="length (tokens, incl. BOS/EOS)")
    sns.boxplot(data=increase[increase.family != "original"], x="family", y="token_increase_pct", hue="corpus",
                order=order[1:], ax=axes[1], fliersize=2)
    axes[1].set(title="Length added by each family, relative to the original", xlabel="",
                ylabel="token increase (% of original)")
    axes[1].legend(title="", fontsize=9)
    for ax in axes:
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    return fig


AUDIT_METHODS = ["format (protect answers)", "format (no protect, conservative)", "paraphrase (training templates)",
                 "sentence permutation (protect answers)", "sentence permutation (no protect)", "EDA (alpha 0.1)"]


def augmentation_audit_figure(rows: list[dict], k: int, methods: list[str] = AUDIT_METHODS):
    """One panel per corpus of the audit rows: violation rate per method (augment_report.plot_violations)."""
    corpora = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(1, len(corpora), figsize=(15, 3.8), squeeze=False)
    for ax, data in zip(axes[0], corpora):
        R.plot_violations(ax, rows, data, methods)
        r0 = next(r for r in rows if r["data"] == data)
        ax.set_title(f"{data}: {r0['documents']:,} documents, {r0['facts'] - r0['not_checkable']:,} answers checkable\n"
                     f"({r0['not_checkable']:,} more not checkable: not verbatim in their document)", fontsize=10)
    for ax in axes[0][1:]:
        ax.set_yticklabels([])
    fig.suptitle(f"Fact-preservation audit: answers lost by each augmentation ({k} variants per document)", y=1.04)
    return fig


def audit_lines(rows: list[dict]) -> list[str]:
    """Per corpus, one sentence: violations of protected formatting, the conservative mode and EDA."""
    by = {(r["data"], r["method"]): r for r in rows}
    out = []
    for data in dict.fromkeys(r["data"] for r in rows):
        f, e = by[(data, "format (protect answers)")], by[(data, "EDA (alpha 0.1)")]
        c = by[(data, "format (no protect, conservative)")]
        out.append(f"{data}: formatting (protected) {f['violations']} violations in {f['checks']:,} checks; "
                   f"conservative mode {c['violations']} ({c['docs_with_violation']} documents); "
                   f"EDA {e['violations']:,} ({100 * e['violation_rate']:.1f}%, in {e['docs_with_violation']:,} of "
                   f"{e['documents']:,} documents)")
    return out


# ---------------------------------------------------------------------------------------------
# 05 · sharpness (`kind: sharpness`, kl_utils.analysis.sharpness) and the probe on the main arms (`kind: probe_arm`)

SHARPNESS_COLUMNS = ["train_loss", "worst_case_increase", "random_increase", "top_eigenvalue", "test_em"]


def c4_sharpness_figure(df: pd.DataFrame, rho: float):
    """Per sharpness measure (sharpness.METRICS), one panel: sharpness against held-out QA EM, one
    point per run, coloured by arm."""
    from kl_utils.analysis.sharpness import METRICS
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (metric, label) in zip(axes, METRICS.items()):
        sns.scatterplot(data=df, x=metric, y="test_em", hue="arm", style="seed", s=80, ax=ax)
        ax.set(xlabel=f"{label} (rho {rho})" if metric == "worst_case_increase" else label,
               ylabel="held-out QA exact match", title=f"{label} vs held-out QA")
        ax.legend(fontsize=8)
    fig.suptitle("C4: flatness of the CPT minimum (AdamW vs SAM) against extraction", y=1.03)
    return fig


def c4_lines(rows: list[dict], n_runs: int) -> list[str]:
    """The C4 rows of sharpness.claim_rows in words: is SAM flatter, and does flatness go with extraction?"""
    from kl_utils.analysis.sharpness import METRICS
    d = {r["metric"]: r for r in rows}
    out = []
    for label in METRICS.values():
        if label in d:
            r = d[label]
            out.append(f"{label}: SAM {r['mean_b']:.4g} vs AdamW {r['mean_a']:.4g}, difference {r['diff']:+.4g} "
                       f"[{r['ci_low']:+.4g}, {r['ci_high']:+.4g}] -> SAM flatter: {r['verdict']}")
    corr = [r for r in rows if r["metric"].startswith("spearman")]
    if corr:
        c = corr[0]
        out.append(f"flatter goes with better extraction here? Spearman r = {c['diff']:+.2f} [{c['ci_low']:+.2f}, "
                   f"{c['ci_high']:+.2f}] over {n_runs} runs -> {c['verdict']}")
    return out


def c1_main_arms_figure(pa: pd.DataFrame):
    """The C1 probe on every main-arm run's CPT model: held-out-paraphrase fact accuracy against held-out QA EM."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(data=pa, x="heldout_acc", y="test_em", hue="arm", style="seed", s=70, ax=ax)
    ax.set(xlabel="held-out-paraphrase fact accuracy after CPT (test people)", ylabel="held-out QA exact match (after IT)",
           title="C1 across the main arms")
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig


def probe_arm_table(pa: pd.DataFrame) -> pd.DataFrame:
    """Per arm: mean probe accuracies (training context, held-out paraphrase, QA prompt) and held-out QA EM."""
    return pa.groupby("arm")[["train_acc", "heldout_acc", "qa_acc", "test_em"]].mean().round(3)

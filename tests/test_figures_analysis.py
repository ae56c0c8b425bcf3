"""Tables and figures of the analysis notebooks (01, 02, 03, 05), from small synthetic records."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from kl_utils.augment import formatting as augment, audit as R  # noqa: E402
from kl_utils.analysis import diversity, probe, sharpness
from kl_utils.reporting import figures_analysis as fa


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _points(ax) -> int:
    """Points drawn as scatter / strip collections on an axis."""
    return sum(len(c.get_offsets()) for c in ax.collections)


def _drawn_lines(ax) -> list:
    return [ln for ln in ax.get_lines() if len(ln.get_xdata())]


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


# ---------------------------------------------------------------------------------------------
# 01 · data statistics

DATA_METRICS = {"token_lengths": {"new biography": {"mean": 32.5, "min": 30, "max": 35, "n": 4},
                                  "QA pair": {"mean": 10.5, "min": 10, "max": 12, "n": 4}},
                "distinct_values": {"major": 100, "birth_city": 200, "university": 50},
                "length_histograms": {"new biography": {"30": 2, "35": 2}, "QA pair": {"10": 3, "12": 1}}}


def test_data_stats_table():
    t = fa.data_stats_table(DATA_METRICS)
    assert list(t.columns) == ["mean", "min", "max", "n", "distinct values"]
    assert t.loc["new biography", "mean"] == 32.5 and t.loc["major", "distinct values"] == 100
    assert len(t) == 2 + 3


def test_data_statistics_figure():
    left, right = fa.data_statistics_figure(DATA_METRICS).axes[:2]
    assert left.get_xlabel() == "length (tokens, incl. BOS/EOS)" and left.get_ylabel() == "share of items"
    assert sorted(_legend(left)) == ["QA pair", "new biography"]
    shares = {tuple(ln.get_xdata()): list(ln.get_ydata()) for ln in _drawn_lines(left)}
    assert shares[(10, 12)] == [0.75, 0.25] and shares[(30, 35)] == [0.5, 0.5]
    assert right.get_title() == "Attribute cardinality" and len(right.patches) == 3
    assert [t.get_text() for t in right.get_yticklabels()] == ["university", "major", "birth_city"]  # ascending


# ---------------------------------------------------------------------------------------------
# 02 · C2 diversity and the C1 probe

def _div_rec(n, seed, em):
    hist = [{"passes": p, "test_train_acc": 0.3 * p, "test_heldout_acc": 0.2 * p, "test_qa_acc": 0.1 * p,
             "train_doc_fact_loss": 2.0 / p, "train_doc_other_loss": 1.0 / p, "heldout_doc_fact_loss": 3.0 / p,
             "heldout_doc_other_loss": 4.0, "test_heldout_loss": 1.0, **({"test_em": em * p / 3} if p in (1, 3) else {})}
            for p in (1, 2, 3)]
    return {"kind": "diversity", "run_id": f"div-n{n}-s{seed}", "seed": seed, "paraphrases": n, "passes": 8,
            "history": hist, "metrics": {"test_em": em, "test_heldout_acc": 0.6, "test_train_acc": 0.9},
            "final_facts": {"heldout": [1, 1, 0, 0], "train": [1, 1, 1, 0], "qa_em": [1, 0, 1, 0]}}


@pytest.fixture
def div_recs():
    return [_div_rec(n, s, 0.1 * n + 0.01 * s) for n in (1, 2, 4) for s in range(3)]


def test_c2_frame_table_and_figure(div_recs):
    final = fa.diversity_final_frame(div_recs)
    assert list(final.columns) == ["paraphrases", "seed", *fa.C2_COLUMNS] and len(final) == 9
    table = fa.ci_table(final, "paraphrases", fa.C2_COLUMNS)
    assert list(table.index) == [1, 2, 4] and list(table.columns) == fa.C2_COLUMNS
    assert table.loc[1, "held-out QA EM"].startswith("0.110 ± ")
    fig = fa.c2_diversity_figure(final, passes=8)
    assert [ax.get_title() for ax in fig.axes] == fa.C2_COLUMNS
    for ax in fig.axes:
        assert ax.get_xlabel() == "distinct paraphrases per person (8 documents each)"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
        assert _points(ax) == 9  # one dot per run
    assert "3 seeds" in fig._suptitle.get_text()


def test_c1_probe_over_cpt_figure(div_recs):
    hist = diversity.history_frame(div_recs)
    ax = fa.c1_probe_over_cpt_figure(hist, 1).axes[0]
    assert len(_drawn_lines(ax)) == 3 * 3  # three contexts x three seeds (units)
    assert _points(ax) == 3 * 2  # QA checkpoints: passes 1 and 3 of each seed
    assert ax.get_xlabel().startswith("passes over the data") and "n = 1 paraphrase, 3 seeds" in ax.get_title()
    assert {"training biography", "held-out paraphrase", "QA prompt (teacher-forced)",
            "held-out QA EM (after IT)"} <= set(_legend(ax))


def test_c1_generalization_gap(div_recs):
    hist = diversity.history_frame(div_recs)
    ax = fa.c1_generalization_gap_figure(hist, 1).axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "mean token loss (nats, log scale)"
    assert len(_drawn_lines(ax)) == 4  # document x tokens, mean over seeds
    assert fa.generalization_gap_line(hist, 1) == ("after 3 passes: fact-token loss 0.667 (training) vs 1.000 "
                                                   "(held-out paraphrase): gap 0.333 nats")


def test_c1_probe_vs_qa_and_fact_tables(div_recs):
    pts = pd.DataFrame(probe.checkpoint_points(div_recs))
    rows = probe.claim_rows(div_recs, n_boot=100)
    ax = fa.c1_probe_vs_qa_figure(pts, rows).axes[0]
    assert _points(ax) == len(pts) == 9 * 2
    assert ax.get_title().startswith("C1: Pearson r = ") and "Spearman = " in ax.get_title()
    h, t, a = fa.final_facts(div_recs)
    assert len(h) == len(t) == len(a) == 9 * 4
    two = fa.two_by_two_table(h, a)
    assert two[["question answered", "not answered"]].to_numpy().sum() == len(h)
    assert list(two["answer rate"]) == [0.5, 0.5]


# ---------------------------------------------------------------------------------------------
# 03 · augmentation statistics and audit

@pytest.fixture(scope="module")
def aug_metrics(tok):
    docs = [("Ann was born in Paris. She works at ACME Corp.", ["Paris", "ACME Corp"]),
            ("Ann was born in Paris.", ["Paris"])]
    wiki = [("Bob lives in Rome. He was born in Oslo.", ["Rome", "Oslo"])]
    return {"corpora": {R.BIO_CORPUS: R.length_stats(docs, tok, 0), "wiki": R.length_stats(wiki, tok, 0)},
            "variety_fixed_text_200_seeds": R.family_variety(R.FIXED_TEXT, tok, 5, R.FIXED_FACTS)}


def test_augmentation_tables_and_lines(aug_metrics):
    seqs = fa.sequences_table(aug_metrics)
    assert list(seqs.index) == [R.BIO_CORPUS, "wiki"] and list(seqs.columns) == list(fa.SEQUENCE_COLUMNS.values())
    assert seqs.loc[R.BIO_CORPUS, "documents"] == 2 and seqs.loc["wiki", "variants (one per family)"] == len(augment.FAMILIES)
    variety = fa.variety_table(aug_metrics)
    assert list(variety.columns) == list(augment.FAMILIES) and len(variety) == 1
    lines = fa.stats_lines(aug_metrics)
    assert len(lines) == 2 and lines[0].startswith(f"{R.BIO_CORPUS}: one variant per family adds ")


def test_augmentation_lengths_figure(aug_metrics):
    left, right = fa.augmentation_lengths_figure(aug_metrics).axes[:2]
    assert [t.get_text() for t in left.get_xticklabels()] == list(R.FAMILY_ORDER)
    assert [t.get_text() for t in right.get_xticklabels()] == list(augment.FAMILIES)
    assert left.get_title() == f"Document length per family: {R.BIO_CORPUS}"
    assert right.get_ylabel() == "token increase (% of original)"
    assert sorted(_legend(right)) == sorted([R.BIO_CORPUS, "wiki"])


def _audit_row(data, method, violations):
    return {"data": data, "method": method, "documents": 10, "facts": 60, "not_checkable": 5, "checks": 110,
            "violations": violations, "violation_rate": violations / 110, "docs_with_violation": min(violations, 10)}


def test_augmentation_audit_figure_and_lines():
    rows = [_audit_row(d, m, 7 if m.startswith("EDA") else 0) for d in ("synthetic", "wiki") for m in fa.AUDIT_METHODS
            if not (d == "wiki" and m.startswith("paraphrase"))]
    fig = fa.augmentation_audit_figure(rows, k=4)
    left, right = fig.axes[:2]
    assert [t.get_text() for t in left.get_yticklabels()] == fa.AUDIT_METHODS
    assert [t.get_text() for t in right.get_yticklabels()] == [""] * len(fa.AUDIT_METHODS)
    assert len(left.patches) == len(right.patches) == len(fa.AUDIT_METHODS)
    assert left.get_title().startswith("synthetic: 10 documents, 55 answers checkable")
    assert any(t.get_text() == "not run (needs templates)" for t in right.texts)
    assert "(4 variants per document)" in fig._suptitle.get_text()
    lines = fa.audit_lines(rows)
    assert len(lines) == 2 and lines[1].startswith("wiki: formatting (protected) 0 violations in 110 checks")
    assert "EDA 7 (6.4%, in 7 of 10 documents)" in lines[0]


# ---------------------------------------------------------------------------------------------
# 05 · sharpness and the probe on the main arms

@pytest.fixture
def sharp_recs():
    return [{"kind": "sharpness", "run_id": f"sharp-{arm}-s{s}", "source_run_id": f"{arm}-s{s}", "arm": arm, "seed": s,
             "metrics": {"train_loss": 0.5, "worst_case_increase": w + 0.01 * s, "random_increase": 0.001,
                         "top_eigenvalue": 10 * w + s, "test_em": 0.2 - w + 0.01 * s}}
            for arm, w in (("baseline", 0.3), ("sam", 0.1)) for s in range(3)]


def test_sharpness_table_figure_and_lines(sharp_recs):
    df = fa.record_frame(sharp_recs)
    assert list(df.columns[:2]) == ["arm", "seed"] and len(df) == 6
    table = fa.ci_table(df, "arm", fa.SHARPNESS_COLUMNS, digits=4)
    assert list(table.columns) == fa.SHARPNESS_COLUMNS and table.loc["sam", "train_loss"] == "0.5000 ± 0.0000"
    fig = fa.c4_sharpness_figure(df, rho=0.05)
    assert len(fig.axes) == 2
    for ax, label in zip(fig.axes, sharpness.METRICS.values()):
        assert _points(ax) == 6 and ax.get_ylabel() == "held-out QA exact match"
        assert ax.get_title() == f"{label} vs held-out QA"
    assert fig.axes[0].get_xlabel().endswith("(rho 0.05)")
    lines = fa.c4_lines(sharpness.claim_rows(sharp_recs), len(df))
    assert len(lines) == 3 and lines[0].startswith("worst-case loss increase (L2 ball): SAM 0.11 vs AdamW 0.31")
    assert lines[0].endswith("SAM flatter: supported") and "over 6 runs" in lines[2]
    assert fa.c4_lines([], 0) == []


def test_c1_main_arms(sharp_recs):
    pa = pd.DataFrame([{"arm": a, "seed": s, "train_acc": 0.9, "heldout_acc": 0.1 * i, "qa_acc": 0.2, "test_em": 0.05 * i}
                       for i, a in enumerate(("baseline", "sam", "format")) for s in range(2)])
    ax = fa.c1_main_arms_figure(pa).axes[0]
    assert _points(ax) == 6 and ax.get_title() == "C1 across the main arms"
    assert ax.get_xlabel().startswith("held-out-paraphrase fact accuracy")
    table = fa.probe_arm_table(pa)
    assert list(table.index) == ["baseline", "format", "sam"] and table.loc["format", "test_em"] == 0.1

"""Tests of kl_utils.augment.audit (the helpers of notebooks/03_augmentation.ipynb)."""
from __future__ import annotations

import json

import pytest

from kl_utils.augment import fact_audit, formatting
from kl_utils.augment import audit as R
from kl_utils.data.tokenizer import build_word_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(["Ann was born in Paris . She works at ACME Corp", R.FIXED_TEXT])


def _item(i, text, answers):
    return {"id": str(i), "page_title": f"P{i} - Wikipedia", "evidence_text": text,
            "qa_pairs": [{"text": f"q{j}?", "output": f"{a}.\nRef: <P{i} - Wikipedia {i}>"} for j, a in enumerate(answers)]}


def test_strip_ref():
    assert R.strip_ref("May 3, 1997.\nRef: <Trey Cabbage - Wikipedia 7_1_4>") == "May 3, 1997."
    assert R.strip_ref("Yes") == "Yes"


def test_select_wiki_sample_filters_dedups_and_is_deterministic():
    good = "Ann Lee was born in Paris. She works at ACME. She lives in Rome with her cat. " * 4
    items = [_item(i, good + "x" * i, ["Paris", "ACME", "Rome"]) for i in range(10)]
    items += [items[0]]                                     # duplicate id
    items += [_item(90, "Too short. Paris. ACME. Rome.", ["Paris", "ACME", "Rome"])]
    items += [_item(91, good, ["Lyon", "ACME", "Rome"])]    # 2 verbatim answers only
    picked = R.select_wiki_sample(items, n=4)
    assert [x["id"] for x in picked] == ["0", "3", "6", "9"]  # evenly spread over lengths
    assert picked == R.select_wiki_sample(list(reversed(items)), n=4)
    assert all("Ref:" not in qa["output"] for x in picked for qa in x["qa_pairs"])
    assert picked[0]["qa_pairs"][0]["output"] == "Paris."
    assert len(R.select_wiki_sample(items, n=50)) == 10


def test_write_and_read_sample_roundtrip(tmp_path):
    text = "Ann Lee was born in Paris. She works at ACME. She lives in Rome with her cat. " * 4
    (tmp_path / "train.json").write_text(json.dumps([_item(1, text, ["Paris", "ACME", "Rome", "Lyon"])]))
    path = R.write_wiki_sample(tmp_path, tmp_path / "s.jsonl", n=5)
    assert R.read_wiki_jsonl(path) == [(text, ["Paris", "ACME", "Rome", "Lyon"])]
    assert fact_audit.wiki_records(tmp_path) == R.read_wiki_jsonl(path)  # same cleaning as the full data


def test_shipped_sample():
    records = R.read_wiki_jsonl(R.SAMPLE_PATH)
    assert 15 <= len(records) <= 30 and R.SAMPLE_PATH.stat().st_size < 100_000
    assert all(sum(a in t for a in ans) >= 3 for t, ans in records)
    assert not any("Ref:" in a for _, ans in records for a in ans)
    assert (R.SAMPLE_PATH.parent / "wiki2023_bio_sample.README.md").is_file()


def test_shipped_sample_matches_full_data(shared_dir, tmp_path):
    folder = shared_dir / "data" / "wiki2023_bio"
    if not folder.is_dir():
        pytest.skip("no wiki2023_bio folder")
    path = R.write_wiki_sample(folder, tmp_path / "s.jsonl")
    assert path.read_text(encoding="utf-8") == R.SAMPLE_PATH.read_text(encoding="utf-8")


def test_wiki_corpus_falls_back_to_sample(tmp_path):
    records, label, _ = R.wiki_corpus(tmp_path / "missing")
    assert label == R.WIKI_SAMPLE_LABEL and records == R.read_wiki_jsonl()


def test_family_examples_keep_facts_and_invert():
    ex = R.family_examples(R.FIXED_TEXT, 0, R.FIXED_FACTS)
    assert list(ex) == list(formatting.FAMILIES)
    for fam, text in ex.items():
        assert text != R.FIXED_TEXT and all(f in text for f in R.FIXED_FACTS)
        assert formatting.invert(formatting.transform(R.FIXED_TEXT, fam, 0, list(R.FIXED_FACTS))) == R.FIXED_TEXT
    assert ex == R.family_examples(R.FIXED_TEXT, 0, R.FIXED_FACTS)


def test_examples_html_escapes_and_keeps_whitespace():
    html = R.examples_html({"a": {"f": "<b>x</b>\n  y"}, "b": {"f": "z" * 50}}, width=20)
    assert "&lt;b&gt;x&lt;/b&gt;\n  y" in html and "z" * 20 + " [...]" in html and "<pre" in html


def test_length_stats(tok):
    records = [("Ann was born in Paris. She works at ACME Corp.", ["Paris", "ACME Corp"]),
               ("Ann was born in Paris.", ["Paris"])]
    st = R.length_stats(records, tok, seed=0)
    assert st["documents"] == 2 and st["variants"] == 2 * len(formatting.FAMILIES)
    assert list(st["families"]) == ["original", *formatting.FAMILIES]
    orig = st["families"]["original"]
    assert orig["token_increase_pct_mean"] == 0 and orig["changed_token_sequence_share"] == 0
    assert sum(orig["token_hist"].values()) == 2 and orig["unk_share"] == 0
    assert st["distinct_original_sequences"] == 2
    assert st["distinct_sequences_added"] == st["distinct_sequences_with_variants"] - 2 > 0
    table = R.stats_table({"corpora": {"toy": st}})
    assert list(table.loc["toy"].index) == list(R.FAMILY_ORDER)
    assert R.expand_hist({"3": 2, "5": 1}) == [3, 3, 5]


def test_family_variety(tok):
    v = R.family_variety(R.FIXED_TEXT, tok, n_seeds=30, protect=R.FIXED_FACTS)
    assert set(v) == set(formatting.FAMILIES) and all(1 <= n <= 30 for n in v.values())
    assert v["extra_spaces"] > v["indent"]


def test_audit_rows_and_table():
    wiki = R.read_wiki_jsonl()
    rows = R.audit_rows(50, 2, 0, wiki, R.WIKI_SAMPLE_LABEL)
    by = {(r["data"], r["method"]): r for r in rows}
    assert by[("synthetic bioS (n=50)", "format (protect answers)")]["violations"] == 0
    assert by[(R.WIKI_SAMPLE_LABEL, "format (protect answers)")]["violations"] == 0
    assert by[(R.WIKI_SAMPLE_LABEL, "format (protect answers)")]["documents"] == len(wiki)
    assert by[("synthetic bioS (n=50)", "EDA (alpha 0.1)")]["violations"] > 0
    assert (R.WIKI_SAMPLE_LABEL, "paraphrase (training templates)") not in by
    table = R.audit_table(rows)
    assert table.loc[("synthetic bioS (n=50)", "EDA (alpha 0.1)"), "violation rate (%)"] > 0
    assert "not checkable" in table.columns


def test_plot_violations():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [{"data": "d", "method": "a", "violations": 0, "checks": 10, "violation_rate": 0.0},
            {"data": "d", "method": "b", "violations": 2, "checks": 10, "violation_rate": 0.2}]
    fig, ax = plt.subplots()
    R.plot_violations(ax, rows, "d", ["a", "b", "c"])
    labels = [t.get_text() for t in ax.texts]
    assert labels[0].startswith("0 violations") and "20%" in labels[1] and labels[2].startswith("not run")
    plt.close(fig)

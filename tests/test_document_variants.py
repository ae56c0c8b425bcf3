"""Formatting augmentation as a datasets map and as `python -m kl_utils augment` (kl_utils.augment.document_variants)."""
import json

import pytest
from datasets import Dataset

from kl_utils.augment.document_variants import audit_counts, field_strings, format_batch, main, variants_of
from kl_utils.cli import main as cli_main
from kl_utils.core.paths import ROOT
from kl_utils.data.documents import read_documents

SAMPLE = ROOT / "kl_utils" / "data" / "files" / "wiki2023_bio_sample.jsonl"


def test_cli_on_the_shipped_sample_loses_nothing_and_the_map_gives_the_same_variants(tmp_path, capsys):
    out = tmp_path / "aug.jsonl"
    assert cli_main(["augment", str(SAMPLE), str(out), "--k", "4"]) == 0
    printed = capsys.readouterr().out
    assert "0 lost" in printed and "qa.answer" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    records, _ = read_documents(SAMPLE)
    assert len(rows) == 5 * len(records)
    kept = [r for r in rows if r["variant"] > 0]
    for r in kept:  # every answer that is in the original is in each variant
        src = next(d for d in records if d["id"] == r["source_id"])
        assert all(q["answer"] in r["text"] for q in src["qa"] if q["answer"] in src["text"])
        assert r["text"] != src["text"]
    # the same variants through Dataset.map, whatever the batch size
    ds = Dataset.from_list([{"id": d["id"], "text": d["text"], "qa": d["qa"]} for d in records])
    for batch_size in (1, 7):
        aug = ds.map(format_batch(k=4, protect_column="qa"), batched=True, batch_size=batch_size)
        assert aug["text"] == [r["text"] for r in rows]
        assert aug["family"] == [r["family"] for r in rows] and aug["variant"] == [r["variant"] for r in rows]
        assert aug["id"] == [r["source_id"] for r in rows]  # other columns repeated per variant


def test_map_variants_only_and_protected_strings_from_a_string_column():
    ds = Dataset.from_dict({"text": ["Ann was born on May 2, 1990. She lives in Ann Arbor, MI."],
                            "answer": ["May 2, 1990"]})
    aug = ds.map(format_batch(k=3, seed=1, protect_column="answer", keep_original=False), batched=True)
    assert len(aug) == 3 and aug["variant"] == [1, 2, 3]
    assert all("May 2, 1990" in t for t in aug["text"])
    assert len(set(aug["family"])) == 3  # families drawn without replacement
    with pytest.raises(KeyError, match="no column 'body'"):
        ds.map(format_batch(text_column="body"), batched=True)


def test_variants_depend_on_the_text_and_seed_only():
    a = variants_of("One. Two. Three.", 2, seed=0)
    assert a == variants_of("One. Two. Three.", 2, seed=0) and a != variants_of("One. Two. Three.", 2, seed=1)
    assert a[0] == ("original", "One. Two. Three.")


def test_audit_counts_kept_lost_and_strings_not_in_the_original():
    c = audit_counts("Born in Paris in 1990.", ["Born in Paris\nin 1990.", "Born in Par is in 1990."],
                     ["Paris", "1990", "London"])
    assert (c["strings"], c["kept"], c["lost"], c["not_in_original"]) == (2, 3, 1, 1)
    assert field_strings({"qa": [{"answer": "a"}, {"answer": "b"}], "title": "T"}, "qa.answer") == ["a", "b"]
    assert field_strings({"title": "T"}, "title") == ["T"]


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert main([str(SAMPLE), str(out), "--protect-field", "qa.answr"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "qa.answr" in err[0] and "holds no strings" in err[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x", "qa": [{"question": "q", "answer": "a"}]}\n{"id": "b", "text": 3}\n')
    assert main([str(bad), str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jsonl:2" in err[0] and "text" in err[0]
    assert main([str(SAMPLE), str(out), "--k", "0"]) == 2
    assert not out.exists()

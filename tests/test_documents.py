"""Real-document data: the generic JSONL format, its validation (errors name file, line and field),
the wiki2023_bio and wiki2023_film converters, atomic output, and the rows run_arm trains on."""
import json
import os
import stat
from pathlib import Path

import pytest

from kl_utils.data import dataset as data, documents
from kl_utils.training import evaluate
from kl_utils.core.paths import WIKI_SAMPLE
from kl_utils.data.documents import DocumentFormatError

SAMPLE = WIKI_SAMPLE


def doc(i, split="train", **kw):
    return {"id": f"d{i}", "text": f"Document {i} says the answer is v{i}.",
            "qa": [{"question": f"What does document {i} say?", "answer": f"v{i}"}], "split": split, **kw}


def write_lines(path, lines):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines) + b"\n")
    return path


GOOD = doc(1)
# (name, line 2 of the file (line 1 is GOOD), field named in the error, words of the message)
MALFORMED = [
    ("bad_json", b'{"id": "d2", "text": "x",', None, "not valid JSON"),
    ("not_an_object", b'["d2", "text"]', None, "JSON object"),
    ("missing_id", {k: v for k, v in doc(2).items() if k != "id"}, "id", "missing"),
    ("id_wrong_type", {**doc(2), "id": ["d2"]}, "id", "string or integer"),
    ("missing_text", {k: v for k, v in doc(2).items() if k != "text"}, "text", "missing"),
    ("text_wrong_type", {**doc(2), "text": 42}, "text", "is an integer"),
    ("empty_text", {**doc(2), "text": "  \n "}, "text", "empty"),
    ("qa_not_a_list", {**doc(2), "qa": {"question": "q", "answer": "a"}}, "qa", "expected a list"),
    ("empty_qa", {**doc(2), "qa": []}, "qa", "empty"),
    ("qa_item_not_object", {**doc(2), "qa": ["What?"]}, "qa[0]", "expected an object"),
    ("missing_answer", {**doc(2), "qa": [{"question": "q2?"}]}, "qa[0].answer", "missing"),
    ("question_wrong_type", {**doc(2), "qa": [{"question": 7, "answer": "a"}]}, "qa[0].question", "is an integer"),
    ("whitespace_answer", {**doc(2), "qa": [{"question": "q2?", "answer": " \t"}]}, "qa[0].answer", "whitespace"),
    ("bad_split", {**doc(2), "split": "dev"}, "split", "expected one of train, valid, test"),
    ("duplicate_id", {**doc(2), "id": "d1"}, "id", "duplicate id 'd1', first at"),
    ("non_utf8", b'{"id": "d2", "text": "caf\xe9", "qa": []}', None, "not valid UTF-8"),
    ("test_doc_in_train", {**doc(1), "id": "d2", "split": "test"}, "text", "test document also in train"),
    ("test_question_in_train", {**doc(2, "test"), "qa": [{"question": "What does document 1 say?", "answer": "v1"}]},
     "qa[0].question", "also asked in train"),
    ("split_on_some_lines_only", {k: v for k, v in doc(2).items() if k != "split"}, "split", "on every line or on none"),
]


@pytest.mark.parametrize("name,line2,field,words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file_names_file_line_and_field(tmp_path, name, line2, field, words):
    path = write_lines(tmp_path / f"{name}.jsonl", [GOOD, line2])
    out = tmp_path / "out" / "docs.jsonl"
    with pytest.raises(DocumentFormatError) as err:
        documents.convert(path, out)
    e = err.value
    assert e.file == str(path) and e.line == 2 and e.field == field, str(e)
    assert f"{path}:2" in str(e) and words in str(e)
    if field:
        assert repr(field) in str(e)
    # a bad file leaves nothing behind: no output, no temporary file
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_failed_conversion_keeps_previous_output(tmp_path):
    good = write_lines(tmp_path / "good.jsonl", [doc(1), doc(2, "test")])
    out = tmp_path / "docs.jsonl"
    documents.convert(good, out)
    before = out.read_bytes()
    with pytest.raises(DocumentFormatError):
        documents.convert(write_lines(tmp_path / "bad.jsonl", [doc(1), {**doc(2), "qa": []}]), out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "docs.jsonl", "good.jsonl"]


def test_round_trip_and_dataset_columns(tmp_path):
    recs = [doc(1), doc(2, "valid", title="Second"), {**doc(3, "test"), "id": 3}]
    src = write_lines(tmp_path / "in.jsonl", recs)
    report = documents.convert(src, tmp_path / "out.jsonl")
    assert report["documents"] == 3 and report["per_split"] == {"train": 1, "valid": 1, "test": 1}
    ds = documents.load_documents(tmp_path / "out.jsonl")
    assert ds.column_names == ["id", "title", "text", "qa", "split"]
    assert ds["id"] == ["d1", "d2", "3"] and ds["title"] == ["d1", "Second", "3"]
    assert ds[0]["qa"] == [{"question": "What does document 1 say?", "answer": "v1", "attribute": "all"}]
    # converting the converted file again is the identity
    documents.convert(tmp_path / "out.jsonl", tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()
    assert data.load_documents is documents.load_documents  # the re-export


def test_missing_split_is_assigned_stably_and_folder_of_split_files(tmp_path):
    recs = [{k: v for k, v in doc(i).items() if k != "split"} for i in range(200)]
    first = documents.read_documents(write_lines(tmp_path / "a.jsonl", recs))[0]
    second = documents.read_documents(write_lines(tmp_path / "b.jsonl", recs[::-1]))[0]
    assert {r["id"]: r["split"] for r in first} == {r["id"]: r["split"] for r in second}
    counts = {s: sum(r["split"] == s for r in first) for s in documents.SPLITS}
    assert 70 <= counts["train"] <= 130 and counts["valid"] >= 5 and 50 <= counts["test"] <= 110
    folder = tmp_path / "folder"
    folder.mkdir()
    write_lines(folder / "train.jsonl", [{k: v for k, v in doc(1).items() if k != "split"}])
    write_lines(folder / "test.jsonl", [{k: v for k, v in doc(2).items() if k != "split"}])
    assert documents.load_documents(folder)["split"] == ["test", "train"]


def wiki_item(i, title, qa, ref=True):
    tag = f"<{title} - Wikipedia {i}_1>"
    return {"evidence_text": f"{tag} {title} (born 1990) is a person number {i}.", "id": f"{i}_1", "date": "2023",
            "page_title": f"{title} - Wikipedia", "num_qa": len(qa),
            "qa_pairs": [{"text": q, "output": a + (f"\nRef: {tag}" if ref else "")} for q, a in qa]}


def test_wiki2023_bio_converter_repairs_and_counts(tmp_path):
    folder = tmp_path / "wiki2023_bio"
    folder.mkdir()
    a = wiki_item(1, "Ann Example", [("When was Ann Example born?", "1990."), ("Who is Ann Example?", "A person.")])
    b = wiki_item(2, "Bo Sample", [("When was Bo Sample born?", "1990.")])
    c = wiki_item(3, "Cy Test", [("When was Cy Test born?", "In 1990.")])
    empty = wiki_item(4, "No Questions", [])
    (folder / "train.json").write_text(json.dumps([a, b, a, c, empty], indent=1))  # a twice; c leaks into test
    (folder / "test.json").write_text(json.dumps([c], indent=1))
    records, report = documents.read_documents(folder)
    assert report["format"] == "wiki2023_bio"
    assert (report["exact_duplicates_dropped"], report["documents_without_qa_dropped"],
            report["train_copies_of_test_documents_dropped"]) == (1, 1, 1)
    records = sorted(records, key=lambda r: r["id"])  # files are read in name order: test.json first
    assert [(r["id"], r["split"]) for r in records] == [("1_1", "train"), ("2_1", "train"), ("3_1", "test")]
    assert records[0]["title"] == "Ann Example"
    assert [q["answer"] for q in records[0]["qa"]] == ["1990", "A person"]  # no "Ref:" line, no final period
    assert all("Ref:" not in q["answer"] for r in records for q in r["qa"])
    # a wiki2023_bio error names the file and the item's line in the JSON list
    bad = dict(b, qa_pairs=[{"text": "When?"}])
    (folder / "test.json").write_text(json.dumps([c, bad], indent=1))
    with pytest.raises(DocumentFormatError, match=r"test\.json:\d+: field 'qa_pairs\[0\]\.output': missing") as err:
        documents.read_documents(folder)
    assert err.value.line == 1 + json.dumps([c, bad], indent=1).splitlines().index(" {", 2)


def test_shipped_sample_loads_as_run_rows():
    docs = documents.load_documents(SAMPLE)
    assert len(docs) == 20 and sum(len(q) for q in docs["qa"]) == 127
    people = documents.as_people(docs, valid_frac=0.2)
    assert set(people.column_names) >= {"person_id", "population", "split", "name", "bios", "qa"}
    assert set(people["population"]) == {"new"} and people["person_id"] == list(range(20))
    assert all(len(b) == 1 and b[0].startswith("<") for b in people["bios"])
    assert not any("Ref:" in q["answer"] for row in people for q in row["qa"])
    data.check_disjoint(people)
    examples = data.qa_examples(people, "test")
    assert examples and {"question", "answer", "attribute", "name", "split"} <= set(examples[0])


def film_fixture(folder):
    folder.mkdir()
    docs = [{"title": "Film One", "text": ["Film One is a 2023 film.", "It was directed by Ada Lane."]},
            {"title": "Film Two", "text": "Film Two is a 2023 film directed by Bo Park."},
            {"title": "Film Three", "text": ["Film Three is a 2023 film."]}]
    write_lines(folder / "film_doc_all.jsonl", docs)
    write_lines(folder / "film_qa_train.jsonl", [{"question": "Who directed Film One?", "answer": "Ada Lane", "title": "Film One"}])
    write_lines(folder / "film_qa_val.jsonl", [{"question": "When was Film Three released?", "answer": ["2023"], "title": "Film Three"}])
    write_lines(folder / "film_qa_test.jsonl", [{"question": "Who directed Film Two?", "answer": "Bo Park", "title": "Film Two"}])


def test_wiki2023_film_converter(tmp_path):
    film_fixture(tmp_path / "film")
    records, report = documents.read_documents(tmp_path / "film")
    assert report["format"] == "wiki2023_film" and report["per_split"] == {"train": 1, "valid": 1, "test": 1}
    one = records[0]
    assert one["text"] == "Film One is a 2023 film. It was directed by Ada Lane." and one["split"] == "train"
    assert records[2]["qa"][0]["answer"] == "2023"
    write_lines(tmp_path / "film" / "film_qa_test.jsonl", [{"question": "Who?", "answer": "X", "title": "Film Nine"}])
    with pytest.raises(DocumentFormatError, match=r"film_qa_test\.jsonl:1: field 'title': no document is titled 'Film Nine'.*layout wiki2023_film"):
        documents.read_documents(tmp_path / "film")


def test_format_detection_and_hub_is_never_contacted_in_tests(tmp_path):
    film_fixture(tmp_path / "film")
    assert documents.detect_format(SAMPLE) == "wiki2023_bio"
    assert documents.detect_format(tmp_path / "film") == "wiki2023_film"
    assert documents.detect_format(write_lines(tmp_path / "g.jsonl", [GOOD])) == "jsonl"
    assert documents.detect_format("someone/some-dataset") == "hub"
    with pytest.raises(DocumentFormatError, match="HF_HUB_OFFLINE"):  # conftest sets it
        documents.load_documents("someone/some-dataset")
    with pytest.raises(DocumentFormatError, match="no such file or folder"):
        documents.load_documents(tmp_path / "nothing" / "here.jsonl")


def test_cli_validate_and_convert(tmp_path, capsys):
    bad = write_lines(tmp_path / "bad.jsonl", [GOOD, {**doc(2), "qa": [{"question": "q", "answer": ""}]}])
    assert documents.main(["validate", str(bad)]) == 1
    assert f"{bad}:2: field 'qa[0].answer'" in capsys.readouterr().err
    assert documents.main(["convert", str(SAMPLE), str(tmp_path / "out.jsonl")]) == 0
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 20


def test_em_and_f1_for_real_answers():
    # rephrased answers (wiki2023_bio README): EM fails, token F1 gives partial credit
    assert evaluate.exact_match("the Los Angeles Angels.", "Los Angeles Angels")
    assert not evaluate.exact_match("16 February 2002", "February 16, 2002.")
    assert evaluate.token_f1("16 February 2002", "February 16, 2002.") == 1.0
    assert evaluate.token_f1("Outfielder", "Outfielder and first baseman") == pytest.approx(2 * 1 * 0.25 / 1.25)
    assert evaluate.token_f1("", "x") == 0.0


def test_full_wiki2023_bio_release(shared_dir):
    records, report = documents.read_documents(shared_dir / "data" / "wiki2023_bio")
    assert report["documents"] == len(records) and report["per_split"]["test"] >= 120
    assert report["train_copies_of_test_documents_dropped"] > 0  # the release's leak is repaired
    documents.check_collection(records, [("x", i + 1) for i in range(len(records))])


INSTANCES = Path(__file__).parent / "data" / "instances_sample.json"


def test_instances_layout_groups_questions_by_document(tmp_path, capsys):
    """The instruction-tuning layout of the Wiki2023 releases: one instance per question, the
    document repeated in each; converted to documents with their QA pairs, and reported."""
    assert documents.main(["convert", str(INSTANCES), str(tmp_path / "out.jsonl")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "instances" and report["documents"] == 4 and report["qa_pairs"] == 10
    assert report["instances"] == {"instances_read": 11, "documents_grouped": 4, "repeated_instances_dropped": 1,
                                   "question_wrappers_stripped": 10, "titles_from_tag": 4}
    assert report["answers_verbatim_in_document"] == {str(INSTANCES): {"answers": 10, "verbatim": 8, "fraction": 0.8}}
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    mara = records[0]
    assert mara["title"] == "Mara Ellison" and mara["text"].startswith("<Mara Ellison  - Wikipedia> Mara Ellison")
    assert [q["question"] for q in mara["qa"]][:2] == ["When was Mara Ellison born?", "What is Mara Ellison's nationality?"]
    assert [q["answer"] for q in mara["qa"]] == ["March 4, 1994", "Canadian", "Her atlas of northern rivers"]
    assert records[2]["title"] == "Ines Carvalho (chemist)"
    # ids are stable: derived from the document, not from the order of the instances or the file
    doc = json.loads(INSTANCES.read_text())
    doc["instances"].reverse()
    (tmp_path / "other_name.json").write_text(json.dumps(doc))
    again, _ = documents.read_documents(tmp_path / "other_name.json")
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in records)
    assert all(r["id"].startswith("doc-") for r in records)
    # the tag's ID is the id when it has one (as in wiki2023_bio), and the file name gives the split
    one = {"type": "text_only", "instances": [{"text": "Question: Who?\nAnswer:", "output": "C.",
                                               "knowledge": "<C D - Wikipedia 12_3> C D is.", "task": "x"}]}
    (tmp_path / "qa_test.json").write_text(json.dumps(one))
    rec = documents.read_documents(tmp_path / "qa_test.json")[0][0]
    assert (rec["id"], rec["title"], rec["split"], rec["qa"][0]["answer"]) == ("12_3", "C D", "test", "C")
    assert documents.load_documents(INSTANCES).column_names == ["id", "title", "text", "qa", "split"]


def test_instances_of_the_real_release_match_its_bio_items(shared_dir, tmp_path):
    """wiki2023_bio's test items written in the instances layout (as the release ships its QA sets)
    read back as the same documents and QA pairs as the items themselves."""
    items = json.loads((shared_dir / "data" / "wiki2023_bio" / "test.json").read_text())
    inst = [{"text": f"Question: {qa['text']}\nAnswer:", "output": " " + qa["output"].split("\nRef:")[0],
             "knowledge": item["evidence_text"], "task": "instruction_following"}
            for item in items for qa in item["qa_pairs"]]
    (tmp_path / "bio_open_book_test.json").write_text(json.dumps({"type": "text_only", "instances": inst}, indent=2))
    from_items, _ = documents.read_documents(shared_dir / "data" / "wiki2023_bio" / "test.json")
    from_inst, report = documents.read_documents(tmp_path / "bio_open_book_test.json")
    assert report["format"] == "instances" and report["per_split"]["test"] == len(from_inst)
    assert report["instances"]["instances_read"] == len(inst) and report["instances"]["titles_from_tag"] == len(from_inst)
    by_text = {r["text"]: r for r in from_items}
    assert len(from_inst) == len(by_text)
    for rec in from_inst:
        twin = by_text[rec["text"]]
        assert (rec["id"], rec["title"], rec["qa"]) == (twin["id"], twin["title"], twin["qa"])


def test_film_answers_lose_trailing_punctuation_and_verbatim_answers_are_counted(tmp_path, capsys):
    film_fixture(tmp_path / "film")
    write_lines(tmp_path / "film" / "film_qa_test.jsonl",
                [{"question": "Who directed Film Two?", "answer": "Bo Park.", "title": "Film Two"},
                 {"question": "When was Film Two released?", "answer": "January 6, 2023.", "title": "Film Two"}])
    assert documents.main(["validate", str(tmp_path / "film")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["answers_cleaned"] == 2
    counts = report["answers_verbatim_in_document"]
    assert counts[str(tmp_path / "film" / "film_qa_test.jsonl")] == {"answers": 2, "verbatim": 1, "fraction": 0.5}
    assert counts[str(tmp_path / "film" / "film_qa_train.jsonl")] == {"answers": 1, "verbatim": 1, "fraction": 1.0}
    records = documents.read_documents(tmp_path / "film")[0]
    assert [q["answer"] for q in records[1]["qa"]] == ["Bo Park", "January 6, 2023"]
    # an error in a QA file names that file and line, not the document's
    write_lines(tmp_path / "film" / "film_qa_val.jsonl", [{"question": "When?", "answer": " ", "title": "Film Three"}])
    with pytest.raises(DocumentFormatError, match=r"film_qa_val\.jsonl:1: field 'answer': is empty"):
        documents.read_documents(tmp_path / "film")


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_converted_file_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        documents.convert(SAMPLE, tmp_path / "new.jsonl")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.jsonl").stat().st_mode) == mode
    (tmp_path / "new.jsonl").chmod(0o640)  # an existing file keeps its own permissions
    documents.convert(SAMPLE, tmp_path / "new.jsonl")
    assert stat.S_IMODE((tmp_path / "new.jsonl").stat().st_mode) == 0o640

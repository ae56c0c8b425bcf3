"""Bad input as users have it: every case goes through the CLI (`validate` and `convert`, in
process; a few in a subprocess) and must give exit code 1 and one line on stderr naming the file,
the line and the field where there is one, and the layout, with no traceback, leaving the output
file as it was. Inputs that only look odd (BOM, CRLF, CR-only, JSONL saved as .json, a 20 MB
line) must convert to the same documents as the plain file."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

from kl_utils.data import documents
from tests.test_documents import doc, film_fixture, wiki_item

ROOT = Path(__file__).resolve().parents[1]
G = json.dumps(doc(1)).encode()  # a good first line


def j(obj) -> bytes:
    return json.dumps(obj).encode()


def jsonl(*lines) -> bytes:
    return b"\n".join(x if isinstance(x, bytes) else j(x) for x in lines) + b"\n"


def no(key, obj):
    return {k: v for k, v in obj.items() if k != key}


def qa(**kw):
    return {**doc(2), "qa": [{"question": "What does document 2 say?", "answer": "v2", **kw}]}


def instances(*items):
    return json.dumps({"type": "text_only", "instances": list(items)}, indent=2).encode()


INST = {"text": "Question: Who is A?\nAnswer:", "output": " A person.", "knowledge": "<A  - Wikipedia> A is a person."}


class Case(NamedTuple):
    id: str
    build: Callable  # tmp_path -> the input path (str)
    line: int | None
    field: str | None
    words: str
    named: str | None = None  # the file the message names, relative to tmp_path (default: the input)
    out: Callable | None = None  # tmp_path -> the output path, for cases about the output


def file(name: str, data: bytes) -> Callable:
    def build(tmp):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
        return str(tmp / name)
    return build


def folder(name: str, files: dict) -> Callable:
    def build(tmp):
        (tmp / name).mkdir()
        for fname, data in files.items():
            (tmp / name / fname).write_bytes(data)
        return str(tmp / name)
    return build


def film_with_unknown_title(tmp):
    film_fixture(tmp / "film")
    (tmp / "film" / "film_qa_test.jsonl").write_bytes(jsonl({"question": "Who?", "answer": "X", "title": "Film Nine"}))
    return str(tmp / "film")


BIO_JSONL = jsonl(wiki_item(1, "Ann Example", [("When was Ann Example born?", "1990.")]))
CASES = [
    # the file as a whole
    Case("empty_file", file("e.jsonl", b""), None, None, "is empty"),
    Case("blank_lines_only", file("b.jsonl", b"\n  \n\t\n\n"), None, None, "is empty"),
    Case("gzip_bytes", file("g.jsonl", gzip.compress(G)), None, None, "gzip-compressed"),
    Case("utf16", file("u.jsonl", (G.decode() + "\n").encode("utf-16")), None, None, "UTF-16"),
    Case("latin1", file("l.jsonl", json.dumps({**doc(1), "text": "café"}, ensure_ascii=False).encode("latin-1")),
         1, None, "iconv -f latin1"),
    Case("invalid_utf8", file("i.jsonl", G + b'\n{"id": "d2", "text": "caf\xe9"}\n'), 2, None, "not valid UTF-8: byte 0xe9"),
    Case("nul_bytes", file("n.jsonl", G + b'\n{"id": "d2",\x00 "text": "x"}\n'), 2, None, "NUL byte"),
    Case("invalid_json", file("j.jsonl", G + b'\n{"id": "d2", "text": "x",\n'), 2, None, "not valid JSON"),
    Case("extra_after_value", file("x.jsonl", G + b' {"id": "d2"}\n'), 1, None, "more after the JSON value"),
    Case("top_level_array_of_numbers", file("a.json", b"[1, 2]\n"), 1, None, "is an integer"),
    Case("line_is_an_array", file("a.jsonl", jsonl(G, b'["d2", "text"]')), 2, None, "is a list"),
    Case("garbage_after_list", file("t.json", b"[" + G + b"]\nmore\n"), 2, None, "more after the JSON list"),
    Case("pretty_printed_object", file("p.json", json.dumps(doc(1), indent=2).encode()), 1, None,
         "one JSON object spread over lines 1-"),
    Case("pretty_printed_objects", file("p.jsonl", json.dumps(doc(1), indent=2).encode() + b"\n" +
                                        json.dumps(doc(2), indent=2).encode()), 12, None, "second JSON object"),
    Case("jsonl_saved_as_json_bad_line", file("docs.json", jsonl(doc(1), doc(2), b"{oops")), 3, None,
         "not valid JSON"),
    Case("nan", file("nan.jsonl", G + b'\n{"id": "d2", "text": NaN}\n'), 2, None, "NaN"),
    Case("infinity", file("inf.jsonl", G + b'\n{"id": "d2", "score": -Infinity}\n'), 2, None, "-Infinity"),
    Case("duplicate_key", file("k.jsonl", G + b'\n{"id": "d2", "id": "d3", "text": "x", "qa": []}\n'), 2, None,
         "key 'id' twice"),
    Case("deep_nesting", file("deep.jsonl", G + b"\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n"), 2, None,
         "nested too deeply"),
    Case("line_of_20_mb_unterminated", file("big.jsonl", G + b'\n{"id": "d2", "text": "' + b"x" * 20_000_000 + b"\n"),
         2, None, "Unterminated string starting at column 22"),
    # fields of the generic format: wrong types for every field, and wrong values
    Case("id_missing", file("f.jsonl", jsonl(G, no("id", doc(2)))), 2, "id", "missing"),
    Case("id_list", file("f.jsonl", jsonl(G, {**doc(2), "id": ["d2"]})), 2, "id", "is a list"),
    Case("id_boolean", file("f.jsonl", jsonl(G, {**doc(2), "id": True})), 2, "id", "is a boolean"),
    Case("id_float", file("f.jsonl", jsonl(G, {**doc(2), "id": 2.5})), 2, "id", "is a number"),
    Case("id_lone_surrogate", file("f.jsonl", G + b'\n' + j(doc(2)).replace(b'"d2"', b'"d\\udc80"') + b"\n"), 2, "id",
         "surrogate \\udc80"),
    Case("text_integer", file("f.jsonl", jsonl(G, {**doc(2), "text": 42})), 2, "text", "is an integer"),
    Case("text_null", file("f.jsonl", jsonl(G, {**doc(2), "text": None})), 2, "text", "is null"),
    Case("text_whitespace", file("f.jsonl", jsonl(G, {**doc(2), "text": " \n\t"})), 2, "text", "whitespace only"),
    Case("text_lone_surrogate", file("f.jsonl", G + b'\n' + j(doc(2)).replace(b"Document 2", b"Doc \\ud800")), 2,
         "text", "surrogate \\ud800"),
    Case("text_nul_character", file("f.jsonl", G + b'\n' + j(doc(2)).replace(b"Document 2", b"Doc \\u0000")), 2,
         "text", "NUL character"),
    Case("title_list", file("f.jsonl", jsonl(G, {**doc(2), "title": ["T"]})), 2, "title", "is a list"),
    Case("qa_object", file("f.jsonl", jsonl(G, {**doc(2), "qa": {"question": "q", "answer": "a"}})), 2, "qa",
         "is an object"),
    Case("qa_empty", file("f.jsonl", jsonl(G, {**doc(2), "qa": []})), 2, "qa", "is empty"),
    Case("qa_item_string", file("f.jsonl", jsonl(G, {**doc(2), "qa": ["What?"]})), 2, "qa[0]", "is a string"),
    Case("question_integer", file("f.jsonl", jsonl(G, qa(question=7))), 2, "qa[0].question", "is an integer"),
    Case("answer_missing", file("f.jsonl", jsonl(G, {**doc(2), "qa": [{"question": "q?"}]})), 2, "qa[0].answer",
         "missing"),
    Case("answer_null", file("f.jsonl", jsonl(G, qa(answer=None))), 2, "qa[0].answer", "is null"),
    Case("answer_whitespace", file("f.jsonl", jsonl(G, qa(answer=" \t"))), 2, "qa[0].answer", "whitespace only"),
    Case("answer_lone_surrogate", file("f.jsonl", G + b"\n" + j(qa(answer="v2")).replace(b'"v2"', b'"\\ud83d"')),
         2, "qa[0].answer", "surrogate \\ud83d"),
    Case("attribute_integer", file("f.jsonl", jsonl(G, qa(attribute=3))), 2, "qa[0].attribute", "is an integer"),
    Case("split_invalid", file("f.jsonl", jsonl(G, {**doc(2), "split": "dev"})), 2, "split",
         "is 'dev' (expected one of train, valid, test"),
    Case("split_integer", file("f.jsonl", jsonl(G, {**doc(2), "split": 3})), 2, "split", "is 3"),
    Case("split_on_some_lines_only", file("f.jsonl", jsonl(G, no("split", doc(2)))), 2, "split", "on every line or on none"),
    Case("duplicate_ids", file("f.jsonl", jsonl(G, {**doc(2), "id": "d1"})), 2, "id", "duplicate id 'd1', first at"),
    Case("test_document_in_train", file("f.jsonl", jsonl(G, {**doc(1), "id": "d2", "split": "test"})), 2, "text",
         "test document also in train"),
    # the source layouts
    Case("bio_output_missing", file("bio.jsonl", jsonl(wiki_item(1, "Ann", [("Q?", "A.")]) | {"qa_pairs": [{"text": "Q?"}]})),
         1, "qa_pairs[0].output", "missing"),
    Case("bio_answer_empty_after_cleaning", file("bio.json", b"[" + j(wiki_item(1, "Ann", [("When?", ".")])) + b"]"),
         1, "qa_pairs[0].output", "is empty"),
    Case("instances_missing_knowledge", file("inst.json", instances(INST, no("knowledge", INST))), 9,
         "instances[1].knowledge", "missing"),
    Case("instances_output_integer", file("inst.json", instances(INST, {**INST, "output": 7})), 9,
         "instances[1].output", "is an integer"),
    Case("instances_not_a_list", file("inst.json", json.dumps({"instances": {"text": "q"}}).encode()), 1, "instances",
         "is an object"),
    Case("film_qa_unknown_title", film_with_unknown_title, 1, "title", "no document is titled 'Film Nine'",
         named="film/film_qa_test.jsonl"),
    Case("folder_mixed_layouts", folder("mixed", {"a.jsonl": jsonl(doc(1)), "b.json": BIO_JSONL}), None, None,
         "is layout wiki2023_bio, but a.jsonl is layout jsonl", named="mixed/b.json"),
    Case("empty_folder", folder("empty", {}), None, None, "without *.json or *.jsonl files"),
    Case("missing_path", lambda tmp: str(tmp / "nothing" / "here.jsonl"), None, None, "no such file or folder"),
    Case("hub_id_offline", lambda tmp: "someone/some-dataset", None, None, "HF_HUB_OFFLINE=1", named=""),
    # the output
    Case("output_is_a_folder", file("ok.jsonl", G), None, None, "is a folder",
         named="outdir", out=lambda tmp: (tmp / "outdir").mkdir() or tmp / "outdir"),
    Case("output_parent_is_a_file", file("ok.jsonl", G), None, None, "is a file, not a folder",
         named="afile/out.jsonl", out=lambda tmp: (tmp / "afile").write_text("x") and tmp / "afile" / "out.jsonl"),
    Case("output_cannot_be_created", file("ok.jsonl", G), None, None, "cannot be",
         named="/proc/kl-test-no-such-dir/out.jsonl", out=lambda tmp: Path("/proc/kl-test-no-such-dir/out.jsonl")),
]


def cli(argv, capsys) -> tuple[int, str, str]:
    rc = documents.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mode) for p in sorted(folder.iterdir()) if p.is_file()}


def check_message(err: str, named: str, line, field, words, layout: bool = True) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    msg = lines[0]
    assert msg.startswith(f"{named}:{line}: " if line else f"{named}: "), msg
    assert (f"field {field!r}: " in msg) if field else ": field " not in msg, msg
    assert words in msg and ("layout " in msg) == layout, msg  # an output path has no layout
    assert len(msg) < 600, msg[:600]
    return msg


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_naming_file_line_and_field(tmp_path, capsys, case):
    src = case.build(tmp_path)
    named = src if case.named is None else str(case.named if case.named.startswith("/") else tmp_path / case.named)
    named = src if case.named == "" else named
    if case.out is None:
        out = tmp_path / "out" / "docs.jsonl"
        out.parent.mkdir()
        out.write_text("previous output\n")
        rc, stdout, err = cli(["validate", src], capsys)
        assert rc == 1 and stdout == ""
        check_message(err, named, case.line, case.field, case.words)
    else:
        out = case.out(tmp_path)
    watched = out.parent if out.parent.is_dir() else tmp_path
    before = snapshot(watched) if watched.is_dir() and not str(watched).startswith("/proc") else None
    rc, stdout, err = cli(["convert", src, out], capsys)
    assert rc == 1 and stdout == ""
    check_message(err, named, case.line, case.field, case.words, layout=case.out is None)
    if before is not None:  # nothing written, nothing left behind (no temporary file)
        assert snapshot(watched) == before


def test_battery_has_at_least_30_cases():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_output_in_a_read_only_folder(tmp_path, capsys):
    src = file("ok.jsonl", G)(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc, _, err = cli(["convert", src, locked / "out.jsonl"], capsys)
    finally:
        locked.chmod(0o700)
    assert rc == 1
    check_message(err, str(locked / "out.jsonl"), None, None, "no permission to write", layout=False)


def test_path_that_looks_local_never_goes_to_the_hub(tmp_path, monkeypatch, capsys):
    """data/mydocs.jsonl that does not exist is a missing file, even with the hub allowed."""
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError(f"went to the hub: {args}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    for name in ("data/mydocs.jsonl", "./docs", "a/b/c", "~/x.json", "mydocs.json"):
        assert not documents.is_hub_id(name), name
        rc, _, err = cli(["validate", name], capsys)
        assert rc == 1
        check_message(err, name, None, None, "no such file or folder")
    assert documents.is_hub_id("omron-sinicx/wiki2023_plus") and documents.is_hub_id("someone/data.v2")


def test_usage_errors_exit_2_and_debug_shows_the_traceback(tmp_path, capsys):
    assert cli(["convert", "only-one-argument"], capsys)[0] == 2
    rc, _, err = cli(["validate", "x.jsonl", "--format", "csv"], capsys)
    assert rc == 2 and "invalid choice" in err
    assert cli(["frobnicate"], capsys)[0] == 2
    bad = file("bad.jsonl", jsonl(G, qa(answer="")))(tmp_path)
    rc, _, err = cli(["validate", bad, "--debug"], capsys)
    assert rc == 1 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith(f"{bad}:2: field 'qa[0].answer'")


SUBPROCESS_CASES = [c for c in CASES if c.id in ("deep_nesting", "text_lone_surrogate", "missing_path", "nul_bytes",
                                                  "output_is_a_folder")]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_no_traceback_reaches_stderr_of_the_real_cli(tmp_path, case):
    src = case.build(tmp_path)
    out = case.out(tmp_path) if case.out else tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # and the hub is not asked either
    proc = subprocess.run([sys.executable, "-m", "kl_utils.data.documents", "convert", src, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    named = str(tmp_path / case.named) if case.named else src
    check_message(proc.stderr, named, case.line, case.field, case.words, layout=case.out is None)


# ---------------------------------------------------------------------------------------------
# Inputs that only look odd: the same documents as the plain file

PLAIN = jsonl(doc(1), doc(2, "test"), {**doc(3), "title": "Café – ünïcode"})
ODD = {
    "bom": b"\xef\xbb\xbf" + PLAIN,
    "crlf": PLAIN.replace(b"\n", b"\r\n"),
    "cr_only": PLAIN.replace(b"\n", b"\r"),
    "blank_lines_and_no_final_newline": b"\n\n" + PLAIN.replace(b"\n", b"\n  \n\n").rstrip(),
    "jsonl_saved_as_json": PLAIN,
    "json_list": b"[\n" + b",\n".join(PLAIN.splitlines()) + b"\n]\n",
}


@pytest.mark.parametrize("name", list(ODD))
def test_odd_but_valid_files_read_like_the_plain_one(tmp_path, capsys, name):
    plain = file("plain.jsonl", PLAIN)(tmp_path)
    odd = file(f"{name}.json", ODD[name])(tmp_path)
    assert cli(["convert", plain, tmp_path / "a.jsonl"], capsys)[0] == 0
    rc, stdout, err = cli(["convert", odd, tmp_path / "b.jsonl"], capsys)
    assert rc == 0 and err == "" and json.loads(stdout)["format"] == "jsonl"
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_bio_items_as_jsonl_with_json_suffix_and_a_20_mb_document(tmp_path):
    records, report = documents.read_documents(file("bio.json", BIO_JSONL)(tmp_path))
    assert report["format"] == "wiki2023_bio" and records[0]["qa"][0]["answer"] == "1990"
    big = {**doc(2), "text": "word " * 4_000_000 + "v2"}  # one 20 MB line
    records, _ = documents.read_documents(file("big.jsonl", jsonl(doc(1), big))(tmp_path))
    assert len(records[1]["text"]) == 20_000_002

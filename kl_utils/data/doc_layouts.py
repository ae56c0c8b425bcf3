"""Source layouts -> generic records {id, title, text, qa, split} with their Source (kl_utils.data.doc_read).

Layouts (docs/data_format.md): the generic JSONL, wiki2023_bio (Self-Tuning's bio release: items
with evidence_text and qa_pairs), instances (the instruction-tuning layout of the same releases:
one instance per question, the document repeated in each), wiki2023_film (Saito et al.'s
omron-sinicx/wiki2023_plus folder) and hub datasets. Each reader checks the fields of its own
layout, naming them as they are in the file, and counts what it cleans; `repair` then drops, and
counts, the exact duplicates, documents without QA and train copies of test documents that
source releases contain.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from kl_utils.data.doc_read import (DocumentFormatError, Parsed, Source, check_str, kind, layout_of, parse_file, short,
                               split_from_name)


def squash(text) -> str:
    """Whitespace-insensitive form of a text, for comparing documents."""
    return " ".join(text.split()) if isinstance(text, str) else json.dumps(text)


def clean_wiki_answer(output: str) -> str:
    """A wiki2023_bio answer without its trailing "Ref: <...>" line and final period (the answers
    are written as sentences: "August 5, 1955." for "born August 5, 1955, in ...")."""
    answer = re.sub(r"\s*Ref:[^\n]*\s*\Z", "", output).strip()
    return answer[:-1].rstrip() if answer.endswith(".") else answer


def _clean(answer: str, report: dict) -> str:
    """A source answer without its trailing "Ref: <...>" line and final period, as wiki2023_bio's
    answers are cleaned (clean_wiki_answer); counted in the report."""
    cleaned = clean_wiki_answer(answer)
    report["answers_cleaned"] = report.get("answers_cleaned", 0) + (cleaned != answer.strip())
    return cleaned


def _need(obj: dict, keys, file, line, prefix="", why=None):
    for key in keys:
        if key not in obj:
            raise DocumentFormatError(file, line, prefix + key, "missing", expected=why)


def generic_raw(parsed: Parsed, split: str | None, report: dict) -> list:
    """The generic format as it is (validated later); `split` (from a folder's file name) fills in
    a missing split."""
    out = []
    for line, obj in parsed.items:
        if split and "split" not in obj:
            obj = {**obj, "split": split}
        out.append((obj, Source(str(parsed.file), line)))
    return out


def wiki2023_bio_raw(parsed: Parsed, split: str | None, report: dict) -> list:
    """wiki2023_bio items (Self-Tuning's bio_domain release): id, page_title, evidence_text,
    qa_pairs [{text: question, output: answer}]; page_title loses " - Wikipedia"."""
    file, out = str(parsed.file), []
    for line, item in parsed.items:
        _need(item, ("id", "evidence_text", "qa_pairs"), file, line, why="a wiki2023_bio item")
        if not isinstance(item["qa_pairs"], list):
            raise DocumentFormatError(file, line, "qa_pairs", f"is {kind(item['qa_pairs'])}",
                                      expected="a list of {\"text\": question, \"output\": answer}")
        qa, where = [], []
        for i, pair in enumerate(item["qa_pairs"]):
            names = {"question": f"qa_pairs[{i}].text", "answer": f"qa_pairs[{i}].output"}
            if not isinstance(pair, dict):
                raise DocumentFormatError(file, line, f"qa_pairs[{i}]", f"is {kind(pair)}",
                                          expected="{\"text\": question, \"output\": answer}")
            _need(pair, ("text", "output"), file, line, f"qa_pairs[{i}].",
                  why="{\"text\": question, \"output\": answer}")
            question = check_str(pair["text"], file, line, names["question"])
            answer = check_str(pair["output"], file, line, names["answer"])
            qa.append({"question": question, "answer": _clean(answer, report)})
            where.append((file, line, names))
        title = item.get("page_title")
        if title is not None:
            title = re.sub(r"\s+-\s+Wikipedia\s*$", "", check_str(title, file, line, "page_title")) or None
        doc_id = item["id"]
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            raise DocumentFormatError(file, line, "id", f"is {kind(doc_id)}", expected="a string or integer")
        text = check_str(item["evidence_text"], file, line, "evidence_text")
        out.append(({"id": doc_id, "title": title, "text": text, "qa": qa, "split": item.get("split") or split},
                    Source(file, line, {"text": "evidence_text", "title": "page_title", "qa": "qa_pairs"}, where)))
    return out


# The instruction-tuning layout: {"type": "text_only", "instances": [{"text": "Question: ...\nAnswer:",
# "output": " answer", "knowledge": "<TITLE - Wikipedia [ID]> document", "task": ...}, ...]}
WIKI_TAG = re.compile(r"\A\s*<(?P<title>[^<>]*?)\s+-\s+Wikipedia(?:\s+(?P<id>[^<>\s]+))?\s*>")
QA_WRAPPER = re.compile(r"\A\s*Question:\s*(?P<question>.*?)\s*Answer:\s*\Z", re.S)
INSTANCE_FIELDS = ("text", "output", "knowledge")
INSTANCE_STATS = ("instances_read", "documents_grouped", "repeated_instances_dropped", "question_wrappers_stripped",
                  "titles_from_tag")


def instances_raw(parsed: Parsed, split: str | None, report: dict) -> list:
    """Instances grouped by their document (`knowledge`, compared whitespace-insensitively): the
    question loses its "Question: ... Answer:" wrapper, the answer is cleaned like wiki2023_bio's,
    the title comes from the document's <TITLE - Wikipedia ...> tag and the id from the tag's ID,
    else from a hash of the document (stable: independent of order and file). Repeated instances
    (same document, question and answer) are dropped and counted."""
    file = str(parsed.file)
    if not isinstance(parsed.top.get("instances"), list):
        raise DocumentFormatError(file, 1, "instances", f"is {kind(parsed.top.get('instances'))}",
                                  expected="a list of {\"text\", \"output\", \"knowledge\"} objects")
    stats = report.setdefault("instances", dict.fromkeys(INSTANCE_STATS, 0))
    groups = {}
    for i, (line, inst) in enumerate(parsed.items):
        prefix = f"instances[{i}]"
        if not isinstance(inst, dict):
            raise DocumentFormatError(file, line, prefix, f"is {kind(inst)}",
                                      expected="an object with text, output and knowledge")
        _need(inst, INSTANCE_FIELDS, file, line, prefix + ".",
              why="the question in text, the answer in output and its document in knowledge, in every instance")
        names = {"question": f"{prefix}.text", "answer": f"{prefix}.output"}
        knowledge = check_str(inst["knowledge"], file, line, f"{prefix}.knowledge")
        text = check_str(inst["text"], file, line, names["question"])
        answer = _clean(check_str(inst["output"], file, line, names["answer"]), report)
        wrapped = QA_WRAPPER.match(text)
        question = wrapped["question"] if wrapped else text.strip()
        stats["instances_read"] += 1
        key = squash(knowledge)
        if key not in groups:
            tag = WIKI_TAG.match(knowledge)
            title = tag["title"].strip() if tag and tag["title"].strip() else None
            doc_id = tag["id"] if tag and tag["id"] else "doc-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
            field = f"{prefix}.knowledge"
            groups[key] = ({"id": doc_id, "title": title, "text": knowledge, "qa": [], "split": split},
                           Source(file, line, {"id": field, "title": field, "text": field}, []))
            stats["titles_from_tag"] += title is not None
        rec, src = groups[key]
        if any(q["question"] == question and q["answer"] == answer for q in rec["qa"]):
            stats["repeated_instances_dropped"] += 1
            continue
        stats["question_wrappers_stripped"] += wrapped is not None
        rec["qa"].append({"question": question, "answer": answer})
        src.qa.append((file, line, names))
    stats["documents_grouped"] += len(groups)
    return list(groups.values())


def wiki2023_film_raw(path: Path, report: dict) -> list:
    """The Wiki2023 film release in the layout of omron-sinicx/wiki2023_plus (Saito et al. 2024):
    `*_doc_all.jsonl` with {"title", "text": str or list of sentences} and `*_qa_{train,val,test}.jsonl`
    with {"question", "answer", "title"}. QA pairs join their document by title (an unverified
    assumption about that release: a QA line without a matching title is an error); answers are
    cleaned like wiki2023_bio's (trailing period)."""
    doc_files = sorted(path.glob("*doc_all*.jsonl"))
    if len(doc_files) != 1:
        raise DocumentFormatError(path, None, None, f"has {len(doc_files)} *doc_all*.jsonl files", expected="one")
    doc_file = str(doc_files[0])
    docs, order = {}, []
    for line, obj in parse_file(doc_files[0]).items:
        _need(obj, ("title", "text"), doc_file, line)
        title = check_str(obj["title"], doc_file, line, "title")
        text = obj["text"]
        if isinstance(text, list) and text and all(isinstance(s, str) for s in text):
            text = " ".join(s.strip() for s in text)
        text = check_str(text, doc_file, line, "text", what="a string or a list of sentences")
        if title in docs and docs[title][0]["text"] != text:
            raise DocumentFormatError(doc_file, line, "title", f"two different documents are titled {short(title)}")
        if title not in docs:
            docs[title] = ({"id": title, "title": title, "text": text, "qa": [], "split": None},
                           Source(doc_file, line, {"id": "title"}, []))
            order.append(title)
    for qa_file in sorted(path.glob("*qa_*.jsonl")):
        split, name = split_from_name(qa_file), str(qa_file)
        for line, obj in parse_file(qa_file).items:
            _need(obj, ("question", "answer", "title"), name, line, why="QA pairs join their document by title")
            title = check_str(obj["title"], name, line, "title")
            rec, src = docs.get(title, (None, None))
            if rec is None:
                raise DocumentFormatError(name, line, "title", f"no document is titled {short(title)}",
                                          expected=f"a title of {Path(doc_file).name}")
            if rec["split"] not in (None, split):
                raise DocumentFormatError(name, line, "title", f"document {short(title)} has QA in "
                                                               f"{rec['split']!r} and {split!r}")
            rec["split"] = split
            answer = obj["answer"][0] if isinstance(obj["answer"], list) and obj["answer"] else obj["answer"]
            answer = check_str(answer, name, line, "answer", what="a non-empty string (or a list of them)")
            question = check_str(obj["question"], name, line, "question")
            rec["qa"].append({"question": question, "answer": _clean(answer, report)})
            src.qa.append((name, line, {"question": "question", "answer": "answer"}))
    return [docs[title] for title in order]


def hub_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "on", "yes", "true")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_raw(hub_id: str, report: dict, **kwargs) -> list:
    """A dataset on the Hugging Face hub (only when reachable) in the generic schema; every split
    of it is read, its name giving the records' split."""
    if hub_offline():
        raise DocumentFormatError(hub_id, None, None, "is read as a hub dataset id, but the hub is disabled "
                                                      "(HF_HUB_OFFLINE=1)", expected="a local file or folder")
    import datasets
    try:
        dsd = datasets.load_dataset(hub_id, **kwargs)
    except Exception as e:  # network, missing dataset, bad schema: all one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DocumentFormatError(hub_id, None, None, f"cannot be read from the hub: {type(e).__name__}: {first}",
                                  expected="a local file or folder, or a hub dataset id owner/name") from e
    raw = []
    for split_name, part in dsd.items():
        for i, row in enumerate(part):
            row = dict(row)
            row.setdefault("split", split_from_name(Path(split_name)))
            raw.append((row, Source(f"{hub_id}[{split_name}]", i + 1)))
    return raw


READERS = {"jsonl": generic_raw, "wiki2023_bio": wiki2023_bio_raw, "instances": instances_raw}
DATA_SUFFIXES = (".json", ".jsonl")


def folder_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in DATA_SUFFIXES and p.is_file()
                   and not p.name.startswith("."))
    if not files:
        raise DocumentFormatError(path, None, None, "is a folder without *.json or *.jsonl files",
                                  expected="document files, or a wiki2023_film folder with *doc_all*.jsonl")
    return files


def read_local(path: Path, format: str, report: dict) -> tuple[list, str]:
    """(raw records with their Source, layout) of a local file or folder."""
    if path.is_dir() and (format == "wiki2023_film" or format == "auto" and any(path.glob("*doc_all*.jsonl"))):
        try:
            return wiki2023_film_raw(path, report), "wiki2023_film"
        except DocumentFormatError as e:
            e.layout = "wiki2023_film"
            raise
    if format == "wiki2023_film":
        raise DocumentFormatError(path, None, None, "is not a folder", expected="a wiki2023_film folder")
    files = folder_files(path) if path.is_dir() else [path]
    layout, first, raw = None if format == "auto" else format, None, []
    for file in files:
        parsed = parse_file(file)
        found = layout_of(parsed)
        if format == "auto" and layout is not None and found != layout:
            raise DocumentFormatError(file, None, None, f"is layout {found}, but {first.name} is layout {layout}",
                                      expected="one layout in a folder", layout=layout)
        layout, first = layout or found, first or file
        if layout == "instances" and parsed.container != "instances":
            raise DocumentFormatError(file, None, None, "has no \"instances\" list", expected="{\"instances\": [...]}")
        if layout != "instances" and parsed.container == "instances":
            raise DocumentFormatError(file, None, None, "is an object with an \"instances\" list",
                                      expected=f"the {layout} layout (or --format auto)")
        split = split_from_name(file) if path.is_dir() or layout != "jsonl" else None
        try:
            raw += READERS[layout](parsed, split, report)
        except DocumentFormatError as e:
            e.layout = e.layout or layout
            raise
    report["files"] = [str(f) for f in files]
    return raw, layout


def repair(raw: list, report: dict) -> list:
    """Source releases contain exact duplicates, documents without QA and test documents that are
    also in train (wiki2023_bio: 119, 1 and 23 of them). Drop them, counting each kind: exact
    duplicates keep their first copy; a test document repeated in train is dropped from *train*,
    so the published test set stays whole and leak-free."""
    seen, kept = set(), []
    for rec, src in raw:
        key = json.dumps([rec["id"], rec["text"], rec["qa"], rec["split"]])
        if key in seen:
            report["exact_duplicates_dropped"] += 1
            continue
        seen.add(key)
        if not rec["qa"]:
            report["documents_without_qa_dropped"] += 1
            continue
        kept.append((rec, src))
    held_out = {(r["id"], squash(r["text"])) for r, _ in kept if r["split"] in ("valid", "test")}
    out = []
    for rec, src in kept:
        if rec["split"] == "train" and (rec["id"], squash(rec["text"])) in held_out:
            report["train_copies_of_test_documents_dropped"] += 1
            continue
        out.append((rec, src))
    return out

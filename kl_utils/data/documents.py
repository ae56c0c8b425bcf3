"""Real documents with QA pairs: one generic JSONL format, the public Wiki2023-style release layouts
read directly, strict validation, and the conversion to the rows `experiment.run_arm` trains on.

Generic format (docs/data_format.md): one JSON object per line,
    {"id": "...", "text": "...", "qa": [{"question": "...", "answer": "..."}, ...], "split": "train"}
with `split` (train | valid | test) and `title` optional. Layouts are detected by content
(kl_utils.data.doc_read) and read by kl_utils.data.doc_layouts: jsonl (generic), wiki2023_bio, instances,
wiki2023_film, hub. Every bad input raises `DocumentFormatError`, printed by the CLI as one line
FILE:LINE: field PATH: what is wrong (expected ...; layout L), exit code 1 (2 for usage errors).
Source layouts get documented, counted repairs first, then the same strict checks. Nothing is
written unless the whole input is valid (atomic output).

    python -m kl_utils documents validate FILE_OR_DIR [--format auto] [--debug]
    python -m kl_utils documents convert IN OUT.jsonl [--format auto] [--debug]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import zlib
from pathlib import Path

from kl_utils.data.doc_layouts import folder_files, hub_raw, read_local, repair, squash
from kl_utils.data.doc_read import (UNDETECTED, DocumentFormatError, Source, check_str, kind, layout_of, parse_file,
                               short)

__all__ = ["DocumentFormatError", "read_documents", "load_documents", "convert", "validate_record",
           "check_collection", "detect_format", "as_people"]

SPLITS = ("train", "valid", "test")
FORMATS = ("auto", "jsonl", "wiki2023_bio", "instances", "wiki2023_film", "hub")
SOURCE_LAYOUTS = ("wiki2023_bio", "instances", "wiki2023_film")  # get the counted repairs
DEFAULT_SPLITS = {"train": 0.5, "valid": 0.1, "test": 0.4}  # when a file carries no split field
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PATH_SUFFIXES = (".json", ".jsonl", ".gz", ".txt", ".csv", ".tsv", ".parquet", ".arrow", ".zip", ".bz2", ".xz",
                 ".zst", ".yaml", ".yml")


def is_hub_id(name: str) -> bool:
    """owner/name, and nothing that looks like a path: a relative path with a data-file suffix
    (data/mydocs.jsonl), more than one '/', a leading '.', '/' or '~', or a backslash never goes
    to the hub."""
    return bool(HUB_ID.match(name)) and not name.startswith((".", "~")) \
        and Path(name).suffix.lower() not in PATH_SUFFIXES


# ---------------------------------------------------------------------------------------------
# Validation of the generic record

def validate_record(obj: dict, src) -> dict:
    """One generic record, checked and normalised: {id, title, text, qa, split}. `src` is its
    Source (or (file, line)); errors name the field as it is in the source file."""
    src = src if isinstance(src, Source) else Source(*src)
    file, line, names = src.file, src.line, src.names or {}

    def fail(field, problem, expected=None):
        raise DocumentFormatError(file, line, names.get(field, field), problem, expected)
    for key in ("id", "text", "qa"):
        if key not in obj:
            fail(key, "missing", "the fields id, text and qa in every document")
    doc_id = obj["id"]
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        fail("id", f"is {kind(doc_id)}", "a string or integer")
    doc_id = check_str(str(doc_id), file, line, names.get("id", "id"))
    text = check_str(obj["text"], file, line, names.get("text", "text"))
    title = obj.get("title")
    if title is not None:
        check_str(title, file, line, names.get("title", "title"))
    split = obj.get("split")
    if split is not None and (not isinstance(split, str) or split not in SPLITS):
        fail("split", f"is {short(split)}", f"one of {', '.join(SPLITS)}")
    if not isinstance(obj["qa"], list):
        fail("qa", f"is {kind(obj['qa'])}", "a list of {\"question\", \"answer\"} objects")
    if not obj["qa"]:
        fail("qa", "is empty", "at least one QA pair per document")
    qa = []
    for i, pair in enumerate(obj["qa"]):
        default = {k: f"qa[{i}].{k}" for k in ("question", "answer", "attribute")}
        f, l, pair_names = src.qa[i] if src.qa else (file, line, default)
        pair_names = {**default, **pair_names}
        if not isinstance(pair, dict):
            raise DocumentFormatError(f, l, f"qa[{i}]", f"is {kind(pair)}", "an object {\"question\", \"answer\"}")
        for key in ("question", "answer"):
            if key not in pair:
                raise DocumentFormatError(f, l, pair_names[key], "missing", "a question and an answer in every QA pair")
            check_str(pair[key], f, l, pair_names[key])
        attribute = check_str(pair.get("attribute", "all"), f, l, pair_names["attribute"])
        qa.append({"question": pair["question"].strip(), "answer": pair["answer"].strip(), "attribute": attribute})
    return {"id": doc_id, "title": title or doc_id, "text": text, "qa": qa, "split": split}


def check_collection(records: list[dict], where: list) -> None:
    """Across records: unique ids, split on all records or none, no test / valid document or
    question that also appears in train (a leak would inflate held-out QA). `where`: a Source or
    (file, line) per record."""
    where = [(w[0], w[1]) for w in where]
    first = {}
    for rec, (file, line) in zip(records, where):
        if rec["id"] in first:
            f0, l0 = first[rec["id"]]
            raise DocumentFormatError(file, line, "id", f"duplicate id {short(rec['id'])}, first at {f0}:{l0}",
                                      "unique ids")
        first[rec["id"]] = (file, line)
    has_split = [rec["split"] is not None for rec in records]
    if any(has_split) and not all(has_split):
        file, line = next(w for w, h in zip(where, has_split) if not h)
        raise DocumentFormatError(file, line, "split", "missing here but present on other lines",
                                  "a split on every line or on none")
    train_text, train_question = {}, {}
    for rec, w in zip(records, where):
        if rec["split"] == "train":
            train_text.setdefault(squash(rec["text"]), w)
            for qa in rec["qa"]:
                train_question.setdefault(qa["question"], w)
    for rec, (file, line) in zip(records, where):
        if rec["split"] in ("valid", "test"):
            if squash(rec["text"]) in train_text:
                f0, l0 = train_text[squash(rec["text"])]
                raise DocumentFormatError(file, line, "text", f"{rec['split']} document also in train, at {f0}:{l0}",
                                          "valid and test documents that are not also train documents")
            for i, qa in enumerate(rec["qa"]):
                if qa["question"] in train_question:
                    f0, l0 = train_question[qa["question"]]
                    raise DocumentFormatError(file, line, f"qa[{i}].question",
                                              f"{rec['split']} question also asked in train, at {f0}:{l0}",
                                              "held-out questions that are not in train")


def assign_splits(records: list[dict], fractions: dict = DEFAULT_SPLITS) -> None:
    """Records without a split get one from a stable hash of their id (independent of file order)."""
    total = sum(fractions.values())
    for rec in records:
        if rec["split"] is None:
            u = zlib.crc32(rec["id"].encode("utf-8")) / 2 ** 32
            acc = 0.0
            for name, frac in fractions.items():
                acc += frac / total
                if u < acc:
                    break
            rec["split"] = name


def verbatim_answers(records: list[dict], sources: list) -> dict:
    """Per source file of the QA pairs: how many answers occur verbatim (ignoring case, as
    augmentation's `protect` matches them) in their document; only those can be protected."""
    counts = {}
    for rec, src in zip(records, sources):
        text = rec["text"].lower()
        for i, qa in enumerate(rec["qa"]):
            c = counts.setdefault(src.qa[i][0] if src.qa else src.file, [0, 0])
            c[0] += 1
            c[1] += qa["answer"].lower() in text
    return {file: {"answers": n, "verbatim": v, "fraction": round(v / n, 3)} for file, (n, v) in counts.items()}


# ---------------------------------------------------------------------------------------------
# Reading any layout

def detect_format(path_or_id) -> str:
    """The layout a path (by its content) or hub id would be read as."""
    path, name = Path(path_or_id), str(path_or_id)
    if not path.exists():
        if is_hub_id(name):
            return "hub"
        raise _missing(name)
    if path.is_dir():
        if any(path.glob("*doc_all*.jsonl")):
            return "wiki2023_film"
        return layout_of(parse_file(folder_files(path)[0]))
    return layout_of(parse_file(path))


def _missing(name: str) -> DocumentFormatError:
    return DocumentFormatError(name, None, None, "no such file or folder",
                               "a document file or folder, or a hub dataset id owner/name", layout=UNDETECTED)


def read_documents(path_or_id, format: str = "auto", splits: dict | None = None, **hub_kwargs):
    """Validated generic records and a report of what was detected, grouped, cleaned and repaired.
    Raises DocumentFormatError (naming file, line, field and layout) on any bad input."""
    name, path = str(path_or_id), Path(path_or_id)
    if format not in FORMATS:
        raise DocumentFormatError(name, None, None, f"unknown format {format!r}", f"one of {', '.join(FORMATS)}")
    report = {"source": name, "format": None, "exact_duplicates_dropped": 0, "documents_without_qa_dropped": 0,
              "train_copies_of_test_documents_dropped": 0}
    layout = None if format == "auto" else format
    try:
        if format == "hub" or (format == "auto" and not path.exists() and is_hub_id(name)):
            layout = "hub"
            raw = hub_raw(name, report, **hub_kwargs)
        elif not path.exists():
            raise _missing(name)
        else:
            raw, layout = read_local(path, format, report)
        if layout in SOURCE_LAYOUTS:
            report.setdefault("answers_cleaned", 0)
            raw = repair(raw, report)
        if not raw:
            raise DocumentFormatError(name, None, None, "holds no documents (with QA pairs)", "at least one")
        records = [validate_record(obj, src) for obj, src in raw]
        sources = [src for _, src in raw]
        check_collection(records, sources)
    except DocumentFormatError as e:
        e.layout = format if format != "auto" else e.layout or layout or UNDETECTED
        raise
    assign_splits(records, splits or DEFAULT_SPLITS)
    report.update(format=layout, documents=len(records), qa_pairs=sum(len(r["qa"]) for r in records),
                  per_split={s: sum(r["split"] == s for r in records) for s in SPLITS},
                  answers_verbatim_in_document=verbatim_answers(records, sources))
    return records, report


# ---------------------------------------------------------------------------------------------
# Entry points

def load_documents(path_or_id, format: str = "auto", splits: dict | None = None, **hub_kwargs):
    """A document dataset as `datasets.Dataset` with columns id, title, text, qa ([{question,
    answer, attribute}]) and split, from any supported layout (a generic JSONL file or folder, a
    wiki2023_bio, instances or wiki2023_film release, or a hub id: generic schema, hub reachable)."""
    import datasets
    records, _ = read_documents(path_or_id, format, splits, **hub_kwargs)
    return datasets.Dataset.from_list(records)


def as_people(docs, valid_frac: float = 0.0) -> "datasets.Dataset":
    """The rows `experiment.run_arm` trains on: every document is new knowledge (population "new",
    one document in `bios`), `name` is its title (made unique with the id when titles repeat).
    Releases without a valid split (wiki2023_bio) lend it `valid_frac` of their train documents,
    chosen by a hash of the id (run_arm reports valid EM; those documents stay in CPT)."""
    import datasets
    titles = [r["title"] for r in docs]
    has_valid = any(r["split"] == "valid" for r in docs)
    rows = []
    for i, r in enumerate(docs):
        name = r["title"] if titles.count(r["title"]) == 1 else f"{r['title']} ({r['id']})"
        split = r["split"]
        if split == "train" and not has_valid and zlib.crc32(r["id"].encode("utf-8")) / 2 ** 32 < valid_frac:
            split = "valid"
        rows.append({"person_id": i, "population": "new", "split": split, "name": name,
                     "id": r["id"], "bios": [r["text"]], "qa": r["qa"]})
    return datasets.Dataset.from_list(rows)


def resolve_source(source):
    """A relative path in a profile is relative to the project root (papermill and nbval run in
    other folders); hub ids and absolute paths pass through."""
    if source is None or Path(source).is_absolute():
        return source
    from kl_utils.core.paths import ROOT
    return str(ROOT / source) if (ROOT / source).exists() else source


def fingerprint(path_or_id) -> str:
    """Content hash of a local file or folder (a hub id stands for itself): caches built from a
    document file are rebuilt when the file changes."""
    import hashlib
    path = Path(path_or_id)
    if not path.exists():
        return str(path_or_id)
    h = hashlib.sha256()
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            h.update(file.name.encode() + b"\0" + file.read_bytes())
    return h.hexdigest()[:16]

def check_output(out) -> Path:
    """The output path, if a file can be written there (checked before any input is read)."""
    out = Path(out)
    if out.is_dir():
        raise DocumentFormatError(out, None, None, "is a folder", "a file path for the converted JSONL")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DocumentFormatError(out, None, None, f"cannot be created: {parent} is a file, not a folder",
                                  "a file path in a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DocumentFormatError(out, None, None, f"cannot be created: no permission to write in {parent}",
                                  "a writable folder")
    return out


def convert(src, out, format: str = "auto", splits: dict | None = None) -> dict:
    """Any supported input -> one generic JSONL file. Everything is read and validated before a
    byte is written; the file is written atomically with the permissions of any new file (umask).
    Returns the report (layout, grouping, cleaning, repairs, counts, verbatim answers)."""
    out = check_output(out)
    records, report = read_documents(src, format, splits)
    write_jsonl(out, records)
    report["output"] = str(out)
    return report


def write_jsonl(out: Path, rows: list[dict]) -> None:
    """One JSON object per line, written atomically; a failed write is a DocumentFormatError naming the file."""
    from kl_utils.core.records import atomic_write_text
    try:
        atomic_write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    except OSError as e:
        raise DocumentFormatError(out, None, None, f"cannot be written: {e.strerror or e}", "a writable path") from None


def main(argv=None) -> int:
    """The CLI: a report on stdout (exit 0); a bad input as one line on stderr (exit 1), a usage
    error exit 2; --debug adds the traceback."""
    parser = argparse.ArgumentParser(prog="python -m kl_utils documents", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check a file, folder or hub id; print what was read")
    v.add_argument("src")
    c = sub.add_parser("convert", help="convert to the generic JSONL format (atomic)")
    c.add_argument("src")
    c.add_argument("out")
    for p in (v, c):
        p.add_argument("--format", default="auto", choices=FORMATS, help="the layout (default: detected by content)")
        p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error (or the help)
        return e.code if isinstance(e.code, int) else 2
    reports = []
    code = one_line_errors(lambda: reports.append(read_documents(args.src, args.format)[1] if args.cmd == "validate"
                                                  else convert(args.src, args.out, args.format)), args.debug)
    if not code:
        print(json.dumps(reports[0], indent=1))
    return code


def one_line_errors(action, debug: bool = False) -> int:
    """Run action(): 0; a DocumentFormatError is one line on stderr, exit code 1 (debug: with the traceback);
    Ctrl-C is "interrupted", 130. The document CLIs' (documents, augment) error convention."""
    try:
        action()
    except DocumentFormatError as e:
        if debug:
            import traceback
            traceback.print_exc()
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

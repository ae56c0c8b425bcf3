"""Real documents with QA pairs: one generic JSONL format, converters for the public Wiki2023-style
releases, strict validation, and the conversion to the rows `experiment.run_arm` trains on.

Generic format (docs/data_format.md): one JSON object per line,
    {"id": "...", "text": "...", "qa": [{"question": "...", "answer": "..."}, ...], "split": "train"}
with `split` (train | valid | test) and `title` optional. Every error names file, line and field
(`DocumentFormatError`). Source formats (`wiki2023_bio`, `wiki2023_film`) get documented, counted
repairs first (exact duplicates, documents without QA, test documents repeated in train), then the
same strict checks. Nothing is written unless the whole input is valid (atomic output).

    python -m kl_utils.documents validate FILE_OR_DIR [--format auto]
    python -m kl_utils.documents convert IN OUT.jsonl [--format auto]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import zlib
from pathlib import Path

SPLITS = ("train", "valid", "test")
FORMATS = ("auto", "jsonl", "wiki2023_bio", "wiki2023_film", "hub")
DEFAULT_SPLITS = {"train": 0.5, "valid": 0.1, "test": 0.4}  # when a file carries no split field
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class DocumentFormatError(ValueError):
    """A malformed document file; the message names file, line (1-based) and field."""

    def __init__(self, file, line, field, message):
        self.file, self.line, self.field = str(file), line, field
        where = f"{file}:{line}" if line else f"{file}"
        super().__init__(f"{where}: field {field!r}: {message}" if field else f"{where}: {message}")


# ---------------------------------------------------------------------------------------------
# Reading: bytes -> (line number, JSON object), with precise errors

def read_jsonl(path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line. Fails on non-UTF-8 bytes, bad JSON, non-objects."""
    out = []
    for lineno, raw in enumerate(Path(path).read_bytes().split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad = raw[e.start:e.start + 1]
            raise DocumentFormatError(path, lineno, None, f"not valid UTF-8 (byte {e.start}: {bad!r})")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DocumentFormatError(path, lineno, None, f"bad JSON: {e.msg} (column {e.colno})")
        if not isinstance(obj, dict):
            raise DocumentFormatError(path, lineno, None, f"expected a JSON object, got {type(obj).__name__}")
        out.append((lineno, obj))
    return out


def read_json_list(path) -> list[tuple[int, dict]]:
    """A JSON list file (the wiki2023_bio release); 'line' is the item's line in the file."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DocumentFormatError(path, None, None, f"not valid UTF-8 (byte offset {e.start})")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DocumentFormatError(path, e.lineno, None, f"bad JSON: {e.msg} (column {e.colno})")
    if not isinstance(items, list):
        raise DocumentFormatError(path, 1, None, "expected a JSON list of documents")
    # Line of each top-level item: scan with raw_decode so errors point into the file.
    decoder, out, pos = json.JSONDecoder(), [], text.index("[") + 1
    for item in items:
        while text[pos] in " \t\r\n,":
            pos += 1
        _, end = decoder.raw_decode(text, pos)
        if not isinstance(item, dict):
            raise DocumentFormatError(path, text.count("\n", 0, pos) + 1, None, "expected a JSON object")
        out.append((text.count("\n", 0, pos) + 1, item))
        pos = end
    return out


# ---------------------------------------------------------------------------------------------
# Validation of the generic record

def _nonblank_str(value, file, line, field, what="a non-empty string"):
    if not isinstance(value, str):
        raise DocumentFormatError(file, line, field, f"expected {what}, got {type(value).__name__}")
    if not value.strip():
        raise DocumentFormatError(file, line, field, "is empty or whitespace only")
    return value


def validate_record(obj: dict, file, line) -> dict:
    """One generic record, checked and normalised: {id, title, text, qa, split}."""
    for key in ("id", "text", "qa"):
        if key not in obj:
            raise DocumentFormatError(file, line, key, "missing")
    doc_id = obj["id"]
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise DocumentFormatError(file, line, "id", f"expected a string or integer, got {type(doc_id).__name__}")
    doc_id = _nonblank_str(str(doc_id), file, line, "id")
    text = _nonblank_str(obj["text"], file, line, "text")
    title = obj.get("title")
    if title is not None:
        _nonblank_str(title, file, line, "title")
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        raise DocumentFormatError(file, line, "split", f"{split!r} is not one of {', '.join(SPLITS)}")
    if not isinstance(obj["qa"], list):
        raise DocumentFormatError(file, line, "qa", f"expected a list, got {type(obj['qa']).__name__}")
    if not obj["qa"]:
        raise DocumentFormatError(file, line, "qa", "empty: every document needs at least one QA pair")
    qa = []
    for i, pair in enumerate(obj["qa"]):
        field = f"qa[{i}]"
        if not isinstance(pair, dict):
            raise DocumentFormatError(file, line, field, f"expected an object, got {type(pair).__name__}")
        for key in ("question", "answer"):
            if key not in pair:
                raise DocumentFormatError(file, line, f"{field}.{key}", "missing")
            _nonblank_str(pair[key], file, line, f"{field}.{key}")
        attribute = pair.get("attribute", "all")
        _nonblank_str(attribute, file, line, f"{field}.attribute")
        qa.append({"question": pair["question"].strip(), "answer": pair["answer"].strip(), "attribute": attribute})
    return {"id": doc_id, "title": title or doc_id, "text": text, "qa": qa, "split": split}


def check_collection(records: list[dict], where: list[tuple]) -> None:
    """Across records: unique ids, split on all records or none, no test / valid document or
    question that also appears in train (a leak would inflate held-out QA)."""
    first = {}
    for rec, (file, line) in zip(records, where):
        if rec["id"] in first:
            f0, l0 = first[rec["id"]]
            raise DocumentFormatError(file, line, "id", f"duplicate id {rec['id']!r} (first at {f0}:{l0})")
        first[rec["id"]] = (file, line)
    has_split = [rec["split"] is not None for rec in records]
    if any(has_split) and not all(has_split):
        rec, (file, line) = next((r, w) for r, w, h in zip(records, where, has_split) if not h)
        raise DocumentFormatError(file, line, "split", "missing here but present on other lines: give it on all or none")
    train_text, train_question = {}, {}
    for rec, w in zip(records, where):
        if rec["split"] == "train":
            train_text.setdefault(_squash(rec["text"]), w)
            for qa in rec["qa"]:
                train_question.setdefault(qa["question"], w)
    for rec, (file, line) in zip(records, where):
        if rec["split"] in ("valid", "test"):
            if _squash(rec["text"]) in train_text:
                f0, l0 = train_text[_squash(rec["text"])]
                raise DocumentFormatError(file, line, "text", f"{rec['split']} document also in train ({f0}:{l0})")
            for i, qa in enumerate(rec["qa"]):
                if qa["question"] in train_question:
                    f0, l0 = train_question[qa["question"]]
                    raise DocumentFormatError(file, line, f"qa[{i}].question",
                                              f"{rec['split']} question also asked in train ({f0}:{l0})")


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


# ---------------------------------------------------------------------------------------------
# Source formats -> generic records (with counted, documented repairs)

def _wiki_bio_record(item: dict, file, line, split) -> dict:
    """One wiki2023_bio item (Self-Tuning's bio_domain release) as a generic record."""
    from kl_utils.augment import clean_wiki_answer  # strips the trailing "Ref: <...>" line (and final period)
    for key in ("id", "evidence_text", "qa_pairs"):
        if key not in item:
            raise DocumentFormatError(file, line, key, "missing")
    if not isinstance(item["qa_pairs"], list):
        raise DocumentFormatError(file, line, "qa_pairs", "expected a list")
    qa = []
    for i, pair in enumerate(item["qa_pairs"]):
        if not (isinstance(pair, dict) and isinstance(pair.get("text"), str) and isinstance(pair.get("output"), str)):
            raise DocumentFormatError(file, line, f"qa_pairs[{i}]", "expected {\"text\": question, \"output\": answer}")
        qa.append({"question": pair["text"], "answer": clean_wiki_answer(pair["output"])})
    title = item.get("page_title") or ""
    title = re.sub(r"\s+-\s+Wikipedia\s*$", "", title) or None
    return {"id": item["id"], "title": title, "text": item["evidence_text"], "qa": qa, "split": split}


def _repair(raw: list[tuple[dict, tuple]], report: dict) -> list[tuple[dict, tuple]]:
    """Source releases contain exact duplicates, documents without QA and test documents that are
    also in train (wiki2023_bio: 118, 2 and 23 of them). Drop them, counting each kind: exact
    duplicates keep their first copy; a test document repeated in train is dropped from *train*,
    so the published test set stays whole and leak-free."""
    seen, kept = {}, []
    for rec, w in raw:
        key = json.dumps([rec["id"], rec["text"], rec["qa"], rec["split"]])
        if key in seen:
            report["exact_duplicates_dropped"] += 1
            continue
        seen[key] = w
        if not rec["qa"]:
            report["documents_without_qa_dropped"] += 1
            continue
        kept.append((rec, w))
    held_out = {(r["id"], _squash(r["text"])) for r, _ in kept if r["split"] in ("valid", "test")}
    out = []
    for rec, w in kept:
        if rec["split"] == "train" and (rec["id"], _squash(rec["text"])) in held_out:
            report["train_copies_of_test_documents_dropped"] += 1
            continue
        out.append((rec, w))
    return out


def _squash(text):
    """Whitespace-insensitive form of a text, for comparing documents."""
    return " ".join(text.split()) if isinstance(text, str) else json.dumps(text)


def _split_from_name(path: Path):
    """train / valid / test from a file name (train.json, film_qa_val.jsonl, ...), else None."""
    for token in reversed(re.split(r"[^a-z]+", path.stem.lower())):
        if token in ("train", "test"):
            return token
        if token in ("valid", "val", "dev", "validation"):
            return "valid"
    return None


def wiki2023_bio_raw(path: Path) -> list[tuple[dict, tuple]]:
    """A wiki2023_bio folder (train.json, test.json), one such JSON list, or a JSONL of its items."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise DocumentFormatError(path, None, None, "no *.json files in this folder")
    raw = []
    for file in files:
        items = read_jsonl(file) if file.suffix == ".jsonl" else read_json_list(file)
        for line, item in items:
            raw.append((_wiki_bio_record(item, file, line, item.get("split") or _split_from_name(file)), (file, line)))
    return raw


def wiki2023_film_raw(path: Path) -> list[tuple[dict, tuple]]:
    """The Wiki2023 film release in the layout of omron-sinicx/wiki2023_plus (Saito et al. 2024),
    the public copy of Jiang et al.'s Wiki2023-film we could document: `*_doc_all.jsonl` with
    {"title", "text": str or list of sentences} and `*_qa_{train,val,test}.jsonl` with
    {"question", "answer", "title"}. QA pairs join their document by title (an unverified
    assumption about that release: a QA line without a matching title is an error)."""
    doc_files = sorted(path.glob("*doc_all*.jsonl"))
    if len(doc_files) != 1:
        raise DocumentFormatError(path, None, None, f"expected one *doc_all*.jsonl file, found {len(doc_files)}")
    docs, order = {}, []
    for line, obj in read_jsonl(doc_files[0]):
        if "title" not in obj:
            raise DocumentFormatError(doc_files[0], line, "title", "missing")
        title = _nonblank_str(obj["title"], doc_files[0], line, "title")
        text = obj.get("text")
        if isinstance(text, list) and all(isinstance(s, str) for s in text):
            text = " ".join(s.strip() for s in text)
        if not isinstance(text, str):
            raise DocumentFormatError(doc_files[0], line, "text", "expected a string or a list of sentences")
        if title in docs and docs[title]["text"] != text:
            raise DocumentFormatError(doc_files[0], line, "title", f"two different documents titled {title!r}")
        if title not in docs:
            docs[title] = {"id": title, "title": title, "text": text, "qa": [], "split": None}
            order.append((title, (doc_files[0], line)))
    for qa_file in sorted(path.glob("*qa_*.jsonl")):
        split = _split_from_name(qa_file)
        for line, obj in read_jsonl(qa_file):
            for key in ("question", "answer", "title"):
                if key not in obj:
                    raise DocumentFormatError(qa_file, line, key, "missing (QA pairs join documents by title)")
            doc = docs.get(obj["title"])
            if doc is None:
                raise DocumentFormatError(qa_file, line, "title", f"no document titled {obj['title']!r}")
            if doc["split"] not in (None, split):
                raise DocumentFormatError(qa_file, line, "title",
                                          f"document {obj['title']!r} has QA in {doc['split']!r} and {split!r}")
            doc["split"] = split
            answer = obj["answer"][0] if isinstance(obj["answer"], list) and obj["answer"] else obj["answer"]
            doc["qa"].append({"question": obj["question"], "answer": answer})
    return [(docs[title], w) for title, w in order]


def detect_format(path_or_id) -> str:
    path = Path(path_or_id)
    if not path.exists():
        if HUB_ID.match(str(path_or_id)):
            return "hub"
        raise FileNotFoundError(f"{path_or_id}: no such file or folder (and not a hub id owner/name)")
    if path.is_dir():
        if any(path.glob("*doc_all*.jsonl")):
            return "wiki2023_film"
        if any(path.glob("*.json")):
            return "wiki2023_bio"
        return "jsonl"
    if path.suffix == ".json":
        return "wiki2023_bio"
    for raw in path.read_bytes().split(b"\n"):  # first non-blank line decides
        if raw.strip():
            return "wiki2023_bio" if b'"evidence_text"' in raw else "jsonl"
    return "jsonl"


def hub_raw(hub_id: str, **kwargs) -> list[tuple[dict, tuple]]:
    """A dataset on the Hugging Face hub (only when reachable) in the generic schema; every split
    of it is read, its name giving the records' split."""
    import datasets
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise ConnectionError(f"{hub_id}: the hub is disabled (HF_HUB_OFFLINE); pass a local path")
    dsd = datasets.load_dataset(hub_id, **kwargs)
    raw = []
    for split_name, part in dsd.items():
        for i, row in enumerate(part):
            row = dict(row)
            row.setdefault("split", _split_from_name(Path(split_name)))
            raw.append((row, (f"{hub_id}[{split_name}]", i + 1)))
    return raw


def read_documents(path_or_id, format: str = "auto", splits: dict | None = None, **hub_kwargs):
    """Validated generic records and a report of what was repaired. Raises DocumentFormatError."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; valid: {', '.join(FORMATS)}")
    fmt = detect_format(path_or_id) if format == "auto" else format
    report = {"source": str(path_or_id), "format": fmt, "exact_duplicates_dropped": 0,
              "documents_without_qa_dropped": 0, "train_copies_of_test_documents_dropped": 0}
    path = Path(path_or_id)
    if fmt == "jsonl":
        files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        raw = []
        for file in files:
            for line, obj in read_jsonl(file):
                if path.is_dir() and "split" not in obj and _split_from_name(file):
                    obj = {**obj, "split": _split_from_name(file)}
                raw.append((obj, (file, line)))
    elif fmt == "hub":
        raw = hub_raw(str(path_or_id), **hub_kwargs)
    else:
        raw = {"wiki2023_bio": wiki2023_bio_raw, "wiki2023_film": wiki2023_film_raw}[fmt](path)
    if not raw:
        raise DocumentFormatError(path_or_id, None, None, "no documents")
    if fmt in ("wiki2023_bio", "wiki2023_film"):  # source releases: repair first, then validate
        raw = _repair(raw, report)
    records = [validate_record(obj, *w) for obj, w in raw]
    where = [w for _, w in raw]
    check_collection(records, where)
    assign_splits(records, splits or DEFAULT_SPLITS)
    report.update(documents=len(records), qa_pairs=sum(len(r["qa"]) for r in records),
                  per_split={s: sum(r["split"] == s for r in records) for s in SPLITS})
    return records, report


# ---------------------------------------------------------------------------------------------
# Entry points

def load_documents(path_or_id, format: str = "auto", splits: dict | None = None, **hub_kwargs):
    """A document dataset as `datasets.Dataset` with columns id, title, text, qa ([{question,
    answer, attribute}]) and split, from a generic JSONL file or folder, a wiki2023_bio or
    wiki2023_film release, or a hub id (generic schema; only when the hub is reachable)."""
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
    from kl_utils.paths import ROOT
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


def write_jsonl(records: list[dict], out) -> None:
    """Atomic: written to a temporary file beside `out`, then renamed (no partial output)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert(src, out, format: str = "auto", splits: dict | None = None) -> dict:
    """Any supported input -> one generic JSONL file. Everything is read and validated before a
    byte is written. Returns the report (counts of documents, QA pairs, repairs)."""
    records, report = read_documents(src, format, splits)
    write_jsonl(records, out)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kl_utils.documents",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check a file or folder; print counts")
    v.add_argument("src")
    c = sub.add_parser("convert", help="convert to the generic JSONL format (atomic)")
    c.add_argument("src")
    c.add_argument("out")
    for p in (v, c):
        p.add_argument("--format", default="auto", choices=FORMATS)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "validate":
            report = read_documents(args.src, args.format)[1]
        else:
            report = convert(args.src, args.out, args.format)
    except DocumentFormatError as e:
        print(f"error: {e}")
        return 1
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

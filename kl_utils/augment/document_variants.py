"""Formatting augmentation where data is prepared: a `datasets.Dataset.map` function and a CLI, both
with the fact audit (is every protected string still verbatim in every variant?).

    from kl_utils.augment.document_variants import format_batch
    aug = ds.map(format_batch(k=4, protect_column="answers"), batched=True)   # each row -> original + 4 variants

    python -m kl_utils augment IN OUT.jsonl --k 4 [--families F ...] [--protect-field qa.answer ...] [--seed 0]

A document's variants depend on its text and the seed alone (never on its row, batch or file position), so
the map and the CLI give the same variants of the same document. IN is any document layout that
`python -m kl_utils documents` reads (generic JSONL, the Wiki2023 releases, ...), with the same one-line
errors; OUT is generic JSONL, one row per variant, written atomically once everything is audited.
Protected strings that do not occur verbatim in the original cannot be kept or lost: the audit counts
them apart ("not in the original").
"""
from __future__ import annotations

import argparse
import sys
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from kl_utils.augment.formatting import FAMILIES, make_variants

__all__ = ["document_seed", "variants_of", "format_batch", "audit_counts", "augment_records", "main"]

ORIGINAL = "original"  # the family name of variant 0 when the original is kept


def document_seed(text: str, seed: int) -> int:
    """A per-document seed from its text: the same variants whatever the order, batch or file."""
    return zlib.crc32(text.encode("utf-8")) ^ seed


def variants_of(text: str, k: int, seed: int = 0, families: Sequence[str] | None = None,
                protect: Iterable[str] = (), keep_original: bool = True) -> list[tuple[str, str]]:
    """(family, text) pairs: the original first (if kept), then k formatted variants."""
    protect = [p for p in protect if p]
    out = [(ORIGINAL, text)] if keep_original else []
    return out + [(v.family, v.text) for v in make_variants(text, k, document_seed(text, seed), families, protect)]


def _strings(value) -> list[str]:
    """Protected strings of a cell: a string, a list of strings, or a list of QA dicts (their answers)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [value["answer"]] if isinstance(value.get("answer"), str) else []
    return [s for v in value or () for s in _strings(v)]


def format_batch(k: int = 4, seed: int = 0, text_column: str = "text", protect_column: str | None = None,
                 families: Sequence[str] | None = None, keep_original: bool = True):
    """A function for `Dataset.map(fn, batched=True)`: each row becomes (original +) k rows, every column
    repeated, `text_column` formatted, plus `variant` (0 = the original) and `family` columns.
    `protect_column`: a column of strings, lists of strings or QA lists ({"answer": ...}) kept verbatim."""
    def fn(batch: dict) -> dict:
        if text_column not in batch:
            raise KeyError(f"format_batch: no column {text_column!r} (columns: {', '.join(batch)})")
        if protect_column is not None and protect_column not in batch:
            raise KeyError(f"format_batch: no column {protect_column!r} (columns: {', '.join(batch)})")
        out = {c: [] for c in [*batch, "variant", "family"]}
        for i, text in enumerate(batch[text_column]):
            protect = _strings(batch[protect_column][i]) if protect_column else []
            for j, (family, new) in enumerate(variants_of(text, k, seed, families, protect, keep_original)):
                for c in batch:
                    out[c].append(new if c == text_column else batch[c][i])
                out["variant"].append(j if keep_original else j + 1)
                out["family"].append(family)
        return out
    return fn


def field_strings(record: dict, path: str) -> list[str]:
    """The strings at a dotted path of a record, through lists: `qa.answer`, `title`."""
    values = [record]
    for key in path.split("."):
        nxt = []
        for v in values:
            for item in (v if isinstance(v, list) else [v]):
                if isinstance(item, dict) and key in item:
                    nxt.append(item[key])
        values = nxt
    return [s for v in values for s in (v if isinstance(v, list) else [v]) if isinstance(s, str) and s]


def audit_counts(original: str, variants: Sequence[str], protected: Iterable[str]) -> Counter:
    """kept / lost (per variant and protected string) and not_in_original (per protected string)."""
    c = Counter()
    for s in dict.fromkeys(protected):
        if s not in original:
            c["not_in_original"] += 1
            continue
        c["strings"] += 1
        for v in variants:
            c["kept" if s in v else "lost"] += 1
    return c


def augment_records(records: list[dict], k: int, seed: int = 0, families=None, protect_fields=("qa.answer",),
                    keep_original: bool = True, progress: bool = True):
    """Rows of OUT (one per variant) and the audit per protected field."""
    from tqdm.auto import tqdm
    rows, audit = [], {f: Counter() for f in protect_fields}
    for rec in tqdm(records, desc="augment", unit="doc", disable=not progress):
        by_field = {f: field_strings(rec, f) for f in protect_fields}
        protect = [s for f in protect_fields for s in by_field[f]]
        pairs = variants_of(rec["text"], k, seed, families, protect, keep_original)
        new = [t for fam, t in pairs if fam != ORIGINAL]
        for f in protect_fields:
            audit[f] += audit_counts(rec["text"], new, by_field[f])
        for j, (family, text) in enumerate(pairs):
            j = j if keep_original else j + 1
            rows.append({**rec, "id": f"{rec['id']}#v{j}", "source_id": rec["id"], "variant": j, "family": family,
                         "text": text})
    return rows, audit


def audit_table(audit: dict, n_docs: int, k: int) -> str:
    lines = [f"fact audit: {n_docs} documents x {k} variants",
             f"{'protected field':<18}{'strings':>9}{'checks':>9}{'kept':>9}{'lost':>7}{'not in original':>17}"]
    for f, c in audit.items():
        lines.append(f"{f:<18}{c['strings']:>9}{c['kept'] + c['lost']:>9}{c['kept']:>9}{c['lost']:>7}"
                     f"{c['not_in_original']:>17}")
    lost = sum(c["lost"] for c in audit.values())
    lines.append("0 lost: every protected string is verbatim in every variant" if not lost else
                 f"{lost} LOST: some protected strings are missing from some variants")
    return "\n".join(lines)


def main(argv=None) -> int:
    from kl_utils.data.documents import DocumentFormatError, check_output, one_line_errors, read_documents, write_jsonl
    ap = argparse.ArgumentParser(prog="python -m kl_utils augment", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="documents: any layout `python -m kl_utils documents` reads")
    ap.add_argument("out", help="the variants, generic JSONL (written atomically)")
    ap.add_argument("--k", type=int, default=4, help="formatted variants per document (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", nargs="+", choices=FAMILIES, default=None, help="default: all")
    ap.add_argument("--protect-field", action="append", default=None, metavar="PATH",
                    help="dotted path of strings kept verbatim, repeatable (default: qa.answer)")
    ap.add_argument("--no-original", action="store_true", help="write the variants only, not the original")
    ap.add_argument("--format", default="auto", help="the input layout (default: detected by content)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if args.k < 1:
        print(f"--k must be at least 1, got {args.k}", file=sys.stderr)
        return 2
    fields = tuple(args.protect_field or ["qa.answer"])
    done = {}

    def augment_file():
        out = check_output(args.out)
        records, _ = read_documents(args.src, args.format)
        for f in fields:
            if not any(field_strings(r, f) for r in records):
                raise DocumentFormatError(args.src, None, f, "holds no strings in any document",
                                          "a dotted path such as qa.answer or title")
        rows, audit = augment_records(records, args.k, args.seed, args.families, fields, not args.no_original)
        write_jsonl(out, rows)
        done.update(records=records, rows=rows, audit=audit, out=out)
    code = one_line_errors(augment_file, args.debug)
    if code:
        return code
    records, rows, audit, out = done["records"], done["rows"], done["audit"], done["out"]
    print(audit_table(audit, len(records), args.k))
    print(f"wrote {len(rows)} rows to {out}")
    return 0 if not sum(c["lost"] for c in audit.values()) else 3


if __name__ == "__main__":
    raise SystemExit(main())

"""Fact-preservation audit of the augmentation methods (claim C3).

Is every answer of a document still verbatim in each of its variants? Formatting (protected or
conservative) against the rewriting baselines, on synthetic bioS and, when present, the
wiki2023_bio documents.

    python -m kl_utils.augment.fact_audit audit [--n 20000] [--k 5] [--seed 0] [--wiki DIR] [--json FILE]
    python -m kl_utils.augment.fact_audit examples [--seed 0]

The notebook's tables, figures and run records of the audit are in kl_utils.augment.audit.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, Sequence

from kl_utils.augment.formatting import FAMILIES, format_variants, transform
from kl_utils.augment.rewriting import eda_variants, paraphrase_variants, permute_variants
from kl_utils.data.doc_layouts import clean_wiki_answer

Record = tuple  # (document text, list of answer strings)


def audit(records: Iterable[Record], method: Callable[[str, Sequence[str]], list[str]],
          name: str = "") -> dict:
    """Fact-preservation audit of an augmentation method over a data set.

    `method(text, answers)` returns the variants of one document; it receives the answers so that
    a method may protect them (blind methods ignore them). A fact check is one (answer verbatim in
    the original, variant) pair; a violation is an answer missing verbatim from the variant.
    Answers not verbatim in the original are counted as `not_checkable`, never as passes.
    `*_ci` columns: the same ignoring case (answers present case-insensitively)."""
    t0 = time.perf_counter()
    row = dict.fromkeys(("documents", "variants", "unchanged_variants", "facts", "not_checkable",
                         "checks", "violations", "docs_with_violation", "checks_ci",
                         "violations_ci"), 0)
    for text, answers in records:
        variants = method(text, answers)
        present = [a for a in answers if a and a in text]
        low = text.lower()
        present_ci = [a.lower() for a in answers if a and a.lower() in low]
        bad = sum(a not in v for v in variants for a in present)
        lows = [v.lower() for v in variants] if present_ci else []
        bad_ci = sum(a not in v for v in lows for a in present_ci)
        row["documents"] += 1
        row["variants"] += len(variants)
        row["unchanged_variants"] += sum(v == text for v in variants)
        row["facts"] += len(answers)
        row["not_checkable"] += len(answers) - len(present)
        row["checks"] += len(present) * len(variants)
        row["violations"] += bad
        row["docs_with_violation"] += bad > 0
        row["checks_ci"] += len(present_ci) * len(variants)
        row["violations_ci"] += bad_ci
    row["violation_rate"] = row["violations"] / row["checks"] if row["checks"] else 0.0
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return {"method": name, **row}


def _seed_for(text: str, seed: int) -> int:
    """A per-document seed that does not depend on iteration order."""
    return zlib.crc32(text.encode("utf-8")) ^ seed


def audit_methods(k: int, seed: int, people_by_text: dict | None = None,
                  train_pool: dict | None = None) -> dict[str, Callable]:
    """The methods compared in the C3 audit, as `method(text, answers)` callables."""
    methods = {
        "format (protect answers)": lambda t, a: format_variants(t, k, _seed_for(t, seed), protect=a),
        "format (no protect, conservative)": lambda t, a: format_variants(t, k, _seed_for(t, seed)),
        "EDA (alpha 0.1)": lambda t, a: eda_variants(t, k, _seed_for(t, seed)),
        "sentence permutation (protect answers)": lambda t, a: permute_variants(t, k, _seed_for(t, seed), a),
        "sentence permutation (no protect)": lambda t, a: permute_variants(t, k, _seed_for(t, seed)),
    }
    if people_by_text is not None:
        methods["paraphrase (training templates)"] = lambda t, a: paraphrase_variants(
            people_by_text[t], k, _seed_for(t, seed), train_pool)
    return methods


def synthetic_corpus(n: int, seed: int, n_train_templates: int = 5):
    """n bioS people, one training-template biography each: (people_by_text, records, train_pool)."""
    from kl_utils.data.bios import ATTRIBUTES, generate_people, render_biography, split_templates
    train_pool, _ = split_templates(n_train_templates)
    rng = random.Random(seed + 1)
    people_by_text, records = {}, []
    for person in generate_people(n, seed):
        text = render_biography(person, rng, train_pool)[0]
        people_by_text[text] = person
        records.append((text, [person[a] for a in ATTRIBUTES]))
    return people_by_text, records, train_pool


def wiki_records(folder: str | Path) -> list[Record]:
    """(document, answers) for every document of every *.json split in a wiki2023_bio folder."""
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        for item in json.loads(path.read_text(encoding="utf-8")):
            records.append((item["evidence_text"], [clean_wiki_answer(qa["output"]) for qa in item["qa_pairs"]]))
    return records


def default_wiki_dir() -> Path:
    from kl_utils.core.paths import ROOT
    return ROOT.parent / "shared" / "data" / "wiki2023_bio"


def run_audit(n: int, k: int, seed: int, wiki_dir: Path | None) -> list[dict]:
    rows = []
    people_by_text, records, pool = synthetic_corpus(n, seed)
    for name, method in audit_methods(k, seed, people_by_text, pool).items():
        rows.append({"data": f"synthetic bioS (n={n})", **audit(records, method, name)})
    if wiki_dir is not None and Path(wiki_dir).is_dir():
        records = wiki_records(wiki_dir)
        for name, method in audit_methods(k, seed).items():
            rows.append({"data": "wiki2023_bio (train+test)", **audit(records, method, name)})
    return rows


def format_table(rows: list[dict]) -> str:
    cols = ["data", "method", "documents", "variants", "unchanged_variants", "facts", "not_checkable",
            "checks", "violations", "violation_rate", "docs_with_violation", "checks_ci",
            "violations_ci", "seconds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4f}" if c == "violation_rate" else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kl_utils.augment.fact_audit", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("audit", help="fact-preservation audit (synthetic bioS and wiki2023_bio)")
    a.add_argument("--n", type=int, default=20000, help="synthetic biographies")
    a.add_argument("--k", type=int, default=5, help="variants per document")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--wiki", type=Path, default=None, help="wiki2023_bio folder (default ../shared/data/wiki2023_bio)")
    a.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    e = sub.add_parser("examples", help="print one variant per family for a synthetic biography")
    e.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "examples":
        _, records, _ = synthetic_corpus(1, args.seed)
        text, answers = records[0]
        print(f"original:\n{text}\n")
        for fam in FAMILIES:
            for mode, protect in (("conservative", None), ("protect answers", answers)):
                print(f"{fam} ({mode}):\n{transform(text, fam, args.seed, protect).text}\n")
        return 0
    t0 = time.perf_counter()
    wiki = args.wiki if args.wiki is not None else default_wiki_dir()
    if not wiki.is_dir():
        print(f"(no wiki2023_bio folder at {wiki}: synthetic data only)", file=sys.stderr)
    rows = run_audit(args.n, args.k, args.seed, wiki)
    print(format_table(rows))
    print(f"\ntotal {time.perf_counter() - t0:.1f} s (k={args.k}, seed={args.seed})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

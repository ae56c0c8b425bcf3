"""Helpers of notebooks/03_augmentation.ipynb: the real-document sample, per-family examples,
length statistics and the fact-preservation audit (claim C3), in a form that goes into a run
record and comes back out as tables and figures.

    python -m kl_utils.augment.audit sample [--wiki DIR] [--n 20]

rebuilds the shipped sample `kl_utils/data/files/wiki2023_bio_sample.jsonl` from a wiki2023_bio
folder (deterministic: same folder, same file).
"""
from __future__ import annotations

import argparse
import collections
import html
import json
import re
import sys
import time
import zlib
from pathlib import Path
from typing import Iterable, Sequence

from kl_utils.augment import fact_audit, formatting, sentences
from kl_utils.core.paths import WIKI_SAMPLE
from kl_utils.data.doc_layouts import clean_wiki_answer

SAMPLE_PATH = WIKI_SAMPLE
WIKI_SAMPLE_LABEL = "wiki2023_bio sample (shipped)"
WIKI_FULL_LABEL = "wiki2023_bio (train+test)"
# A fixed two-sentence text for the profile-independent example (nbval checks its output).
FIXED_TEXT = ("Ada Q. Lovelace was born on December 10, 1815, in London, UK. "
              "She worked for Babbage & Co. in Paris as an analyst.")
FAMILY_ORDER = ("original",) + formatting.FAMILIES  # run records store dicts with sorted keys
FIXED_FACTS = ("Ada Q. Lovelace", "December 10, 1815", "London, UK", "Babbage & Co.", "Paris", "analyst")


# ---------------------------------------------------------------------------------------------
# The shipped sample of real Wikipedia documents

def strip_ref(output: str) -> str:
    """A wiki2023_bio answer without its trailing "Ref: <TITLE - Wikipedia ID>" line."""
    return re.sub(r"\s*Ref:[^\n]*\s*\Z", "", output).strip()


def select_wiki_sample(items: Sequence[dict], n: int = 20, min_chars: int = 250, max_chars: int = 700,
                       min_verbatim: int = 3, min_sentences: int = 3) -> list[dict]:
    """n short documents (deduplicated by id) with at least `min_verbatim` answers verbatim in the
    text and `min_sentences` sentences, spread evenly over the candidates sorted by length; the
    answers lose their "Ref:" line. Deterministic."""
    seen, cands = set(), []
    for item in items:
        text = item["evidence_text"]
        if item["id"] in seen or not min_chars <= len(text) <= max_chars:
            continue
        seen.add(item["id"])
        answers = [clean_wiki_answer(qa["output"]) for qa in item["qa_pairs"]]
        if sum(bool(a) and a in text for a in answers) >= min_verbatim and \
                len(sentences.split_sentences(text)) >= min_sentences:
            cands.append(item)
    cands.sort(key=lambda x: (len(x["evidence_text"]), x["id"]))
    if len(cands) <= n:
        picked = cands
    else:
        picked = [cands[round(i * (len(cands) - 1) / (n - 1))] for i in range(n)] if n > 1 else cands[:1]
    keys = ("id", "page_title", "date", "evidence_text")
    return [{**{k: x[k] for k in keys if k in x},
             "qa_pairs": [{"text": qa["text"], "output": strip_ref(qa["output"])} for qa in x["qa_pairs"]]}
            for x in picked]


def write_wiki_sample(folder: str | Path, path: str | Path = SAMPLE_PATH, n: int = 20) -> Path:
    items = json.loads((Path(folder) / "train.json").read_text(encoding="utf-8"))
    lines = [json.dumps(x, ensure_ascii=False, sort_keys=True) for x in select_wiki_sample(items, n)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def read_wiki_jsonl(path: str | Path = SAMPLE_PATH) -> list[tuple[str, list[str]]]:
    """(document, answers) records of a JSONL sample, answers cleaned like `fact_audit.wiki_records`."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            out.append((item["evidence_text"], [clean_wiki_answer(qa["output"]) for qa in item["qa_pairs"]]))
    return out


def wiki_corpus(wiki_dir: str | Path | None = None) -> tuple[list, str, str]:
    """(records, label, source): the full wiki2023_bio folder when present (default
    ../shared/data/wiki2023_bio), else the sample shipped with kl_utils."""
    folder = Path(wiki_dir) if wiki_dir is not None else fact_audit.default_wiki_dir()
    if folder.is_dir() and any(folder.glob("*.json")):
        return fact_audit.wiki_records(folder), WIKI_FULL_LABEL, str(folder)
    return read_wiki_jsonl(SAMPLE_PATH), WIKI_SAMPLE_LABEL, str(SAMPLE_PATH.name)


# ---------------------------------------------------------------------------------------------
# Examples

def doc_seed(text: str, seed: int) -> int:
    """A per-document seed independent of iteration order (as in the audit)."""
    return zlib.crc32(text.encode("utf-8")) ^ seed


def family_examples(text: str, seed: int = 0, protect: Iterable[str] | None = None,
                    families: Sequence[str] = formatting.FAMILIES) -> dict[str, str]:
    """One variant per family (each family with `random.Random(seed)`)."""
    protect = list(protect) if protect is not None else None
    return {fam: formatting.transform(text, fam, seed, protect).text for fam in families}


def preview(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n].rstrip(" ") + " [...]"


def examples_html(columns: dict[str, dict[str, str]], width: int = 400) -> str:
    """An HTML table, one row per family, one column per corpus; cells in <pre> so that spaces,
    tabs and line breaks show as they are. `columns`: {title: {family: text}}."""
    titles = list(columns)
    fams = list(next(iter(columns.values())))
    cell = ('<td style="text-align:left;vertical-align:top"><pre style="white-space:pre-wrap;'
            'margin:0;font-size:85%">{}</pre></td>')
    head = "".join(f'<th style="text-align:left">{html.escape(t)}</th>' for t in ["family"] + titles)
    rows = [f"<tr>{head}</tr>"]
    for fam in fams:
        cells = "".join(cell.format(html.escape(preview(columns[t][fam], width))) for t in titles)
        rows.append(f'<tr><td style="text-align:left;vertical-align:top"><b>{html.escape(fam)}</b></td>{cells}</tr>')
    return "<table>" + "".join(rows) + "</table>"


# ---------------------------------------------------------------------------------------------
# Length statistics

def _hist(values: Iterable[int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(collections.Counter(values).items())}


def length_stats(records: Sequence[tuple[str, Sequence[str]]], tokenizer, seed: int) -> dict:
    """Every family applied once to every document (answers protected, as in CPT): character and
    token lengths of originals and variants, the share of variants whose token sequence differs
    from the original's, the [UNK] share, and how many distinct token sequences the variants add.
    Lengths in tokens include the tokenizer's special tokens."""
    texts, fams = [], []
    for text, answers in records:
        texts.append(text)
        fams.append("original")
        for v in formatting.make_variants(text, len(formatting.FAMILIES), doc_seed(text, seed), protect=list(answers)):
            texts.append(v.text)
            fams.append(v.family)
    ids = [tuple(x) for x in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    unk = tokenizer.unk_token_id
    per = collections.defaultdict(lambda: {"chars": [], "tokens": [], "ratio_pct": [], "changed": 0, "unk": 0})
    orig_ids = None
    for text, fam, seq in zip(texts, fams, ids):
        if fam == "original":
            orig_ids, orig_len = seq, len(seq)
        p = per[fam]
        p["chars"].append(len(text))
        p["tokens"].append(len(seq))
        p["ratio_pct"].append(round(100 * (len(seq) - orig_len) / orig_len))
        p["changed"] += seq != orig_ids
        p["unk"] += sum(t == unk for t in seq)
    families = {}
    for fam in ("original",) + tuple(f for f in formatting.FAMILIES if f in per):
        p = per[fam]
        n, ntok = len(p["tokens"]), sum(p["tokens"])
        families[fam] = {"n": n, "chars_mean": sum(p["chars"]) / n, "tokens_mean": ntok / n,
                         "tokens_min": min(p["tokens"]), "tokens_max": max(p["tokens"]),
                         "token_increase_pct_mean": sum(p["ratio_pct"]) / n,
                         "changed_token_sequence_share": p["changed"] / n, "unk_share": p["unk"] / ntok,
                         "token_hist": _hist(p["tokens"]), "token_increase_pct_hist": _hist(p["ratio_pct"])}
    originals = {s for s, f in zip(ids, fams) if f == "original"}
    everything = set(ids)
    return {"documents": len(records), "variants": len(texts) - len(records), "families": families,
            "distinct_original_sequences": len(originals), "distinct_sequences_with_variants": len(everything),
            "distinct_sequences_added": len(everything - originals)}


def family_variety(text: str, tokenizer, n_seeds: int = 200, protect: Iterable[str] | None = None) -> dict[str, int]:
    """Distinct token sequences each family produces for one document over seeds 0..n_seeds-1."""
    protect = list(protect) if protect is not None else None
    out = {}
    for fam in formatting.FAMILIES:
        variants = [formatting.transform(text, fam, s, protect).text for s in range(n_seeds)]
        out[fam] = len({tuple(x) for x in tokenizer(variants)["input_ids"]})
    return out


def stats_table(metrics: dict):
    """Per-corpus, per-family length table from an `augment_stats` run record's metrics."""
    import pandas as pd
    rows = []
    for corpus, st in metrics["corpora"].items():
        for fam in FAMILY_ORDER:
            f = st["families"][fam]
            rows.append({"corpus": corpus, "family": fam, "documents": f["n"], "chars (mean)": f["chars_mean"],
                         "tokens (mean)": f["tokens_mean"], "tokens (min-max)": f"{f['tokens_min']}-{f['tokens_max']}",
                         "token increase (%, mean)": f["token_increase_pct_mean"],
                         "token sequence changed (%)": 100 * f["changed_token_sequence_share"],
                         "[UNK] (% of tokens)": 100 * f["unk_share"]})
    return pd.DataFrame(rows).set_index(["corpus", "family"]).round(1)


def expand_hist(hist: dict[str, int]) -> list[int]:
    """The values of a {value: count} histogram, repeated `count` times (for box plots)."""
    return [int(k) for k, c in hist.items() for _ in range(c)]


# ---------------------------------------------------------------------------------------------
# Audit

def audit_rows(n_synthetic: int, k: int, seed: int, wiki_records: Sequence, wiki_label: str) -> list[dict]:
    """`fact_audit.audit` of every method of `fact_audit.audit_methods` on a synthetic bioS corpus of
    n_synthetic documents and on the given real documents (paraphrase: synthetic only)."""
    rows = []
    people_by_text, records, pool = fact_audit.synthetic_corpus(n_synthetic, seed)
    for name, method in fact_audit.audit_methods(k, seed, people_by_text, pool).items():
        rows.append({"data": f"synthetic bioS (n={n_synthetic})", **fact_audit.audit(records, method, name)})
    for name, method in fact_audit.audit_methods(k, seed).items():
        rows.append({"data": wiki_label, **fact_audit.audit(wiki_records, method, name)})
    return rows


AUDIT_COLUMNS = {"documents": "documents", "variants": "variants", "facts": "answers",
                 "not_checkable": "not checkable", "checks": "checks", "violations": "violations",
                 "violation_rate": "violation rate (%)", "docs_with_violation": "docs with a violation",
                 "violations_ci": "violations (ignoring case)", "unchanged_variants": "unchanged variants"}


def audit_table(rows: Sequence[dict]):
    """The audit rows of a run record as a DataFrame indexed by (data, method)."""
    import pandas as pd
    df = pd.DataFrame(rows).set_index(["data", "method"])[list(AUDIT_COLUMNS)]
    df["violation_rate"] = (100 * df["violation_rate"]).round(3)
    return df.rename(columns=AUDIT_COLUMNS)


def plot_violations(ax, rows: Sequence[dict], data: str, methods: Sequence[str]) -> None:
    """Horizontal bars of the violation rate (% of checks) of each method on one corpus, each
    annotated with violations / checks; a zero gets a green marker and is written out, a method
    not run on this corpus says so."""
    import seaborn as sns
    green, red = sns.color_palette("colorblind")[2], sns.color_palette("colorblind")[3]
    by_method = {r["method"]: r for r in rows if r["data"] == data}
    rates = [100 * by_method[m]["violation_rate"] if m in by_method else 0.0 for m in methods]
    ax.barh(range(len(methods)), rates, color=red)
    ax.set_yticks(range(len(methods)), methods)
    ax.invert_yaxis()
    top = max(rates + [1e-9])
    ax.set_xlim(0, top * 1.6)
    for i, m in enumerate(methods):
        r = by_method.get(m)
        if r is None:
            ax.text(top * 0.02, i, "not run (needs templates)", va="center", fontsize=9, color="0.45")
        elif r["violations"] == 0:
            ax.plot(0, i, marker="D", ms=8, color=green, clip_on=False, zorder=5)
            ax.text(top * 0.03, i, f"0 violations / {r['checks']:,} checks", va="center", fontsize=9,
                    color=green, fontweight="bold")
        else:
            ax.text(rates[i] + top * 0.02, i, f"{r['violations']:,} / {r['checks']:,} = {100 * r['violation_rate']:.2g}%",
                    va="center", fontsize=9)
    ax.set(xlabel="answers missing from a variant (% of checks)", title=data)


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kl_utils.augment.audit", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help=f"rebuild {SAMPLE_PATH.name} from a wiki2023_bio folder")
    s.add_argument("--wiki", type=Path, default=None, help="wiki2023_bio folder (default ../shared/data/wiki2023_bio)")
    s.add_argument("--n", type=int, default=20)
    s.add_argument("--out", type=Path, default=SAMPLE_PATH)
    args = ap.parse_args(argv)
    folder = args.wiki or fact_audit.default_wiki_dir()
    path = write_wiki_sample(folder, args.out, args.n)
    print(f"wrote {path} ({path.stat().st_size:,} bytes, {len(read_wiki_jsonl(path))} documents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------------------------------
# Records of notebook 03 (read back when committed, computed otherwise)

BIO_CORPUS = "synthetic bioS (CPT documents)"


def stats_record(profile: str, cfg: dict, ds, tokenizer, wiki_records: Sequence, wiki_label: str) -> dict:
    """The `augment-stats` record: length and variety statistics of the formatting families on the
    profile's CPT biographies and on the real documents."""
    from kl_utils.core import records
    from kl_utils.data import bios
    seed = cfg["augment_audit"]["seed"]

    def compute():
        new = ds.filter(lambda r: r["population"] == "new")
        bio_records = [(r["bios"][0], [r["name"]] + [r[a] for a in bios.ATTRIBUTES]) for r in new]
        return {"corpora": {BIO_CORPUS: length_stats(bio_records, tokenizer, seed),
                            wiki_label: length_stats(wiki_records, tokenizer, seed)},
                "variety_fixed_text_200_seeds": family_variety(FIXED_TEXT, tokenizer, 200, FIXED_FACTS)}, None
    return records.reuse_or_write(profile, "augment-stats", kind="augment_stats", seed=seed, compute=compute,
                                  config={"augment_audit": cfg["augment_audit"], "data": cfg["data"], "wiki": wiki_label})


def audit_record(profile: str, aa: dict, wiki_records: Sequence, wiki_label: str, wiki_source: str) -> dict:
    """The `augment-audit` record (audit_rows of the profile's augment_audit settings)."""
    from kl_utils.core import records
    config = {**aa, "wiki": wiki_label, "wiki_source": wiki_source}
    rec = records.existing_record(profile, "augment-audit", kind="augment_audit")
    if rec is not None and {k: v for k, v in rec["config"].items() if k != "methods"} == records.as_stored(config):
        return rec
    t0 = time.time()
    rows = audit_rows(aa["n_synthetic"], aa["k"], aa["seed"], wiki_records, wiki_label)
    path = records.write_run_record(profile, "augment-audit", kind="augment_audit", seed=aa["seed"],
                                    config={**config, "methods": sorted({r["method"] for r in rows})},
                                    metrics={"rows": rows}, wall_time_s=time.time() - t0)
    return json.loads(path.read_text())

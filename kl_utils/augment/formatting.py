"""Formatting-based augmentation (claim C3) and the rewriting baselines it is compared with.

Formatting re-lays a document out without touching its words: wrapping it or its sentences in
symbol pairs, changing whitespace, turning it into a list. Unlike paraphrasing it cannot change a
fact, and this module makes that checkable (`audit`).

Design
------
A document is segmented once (`_segment`) into

    lead + s1 + g1 + s2 + ... + gn-1 + sn + tail

where lead/tail are leading/trailing whitespace and the gaps g_i are whitespace runs that
`split_sentences` judges to end a sentence. Splitting only ever happens *at* whitespace runs, so
it never changes a character; it only decides where formatting goes. Every family then does
nothing but
  (a) insert decorations at a sentence start/end or at the document edges, and
  (b) replace a whitespace run by another non-empty whitespace run.
Each transform returns a `Variant` recording its edits (where in the variant, and which original
text was there), so `invert` is exact -- byte-identical to the original, hence also equal up to
whitespace normalization -- whatever the document already contains ("**", "1.", quotes...):
the inverse never parses the text.

Guarantee (fact preservation)
-----------------------------
* `protect=[strings]` (e.g. the answer strings of a document): every occurrence of every
  protected string (matched ignoring case) is a forbidden zone. Sentence boundaries and
  whitespace edits are only made at whitespace runs that overlap no zone, and insertions only at
  the edges of such runs or of the document, so no edit lands strictly inside a zone. Hence
  **every protected string present verbatim in a document is present verbatim in every
  variant**, whatever it contains (spaces, periods, newlines). Whitespace between other words may
  change ("extra_spaces" and "line_breaks" then also act inside sentences).
  `protect=()` protects nothing and lets whitespace change between any words.
* `protect=None` (default, conservative): whitespace inside a sentence is never touched, so every
  string lying within one sentence as split by `split_sentences` -- in particular every string
  without whitespace -- is present verbatim in every variant. A fact the splitter cuts ("Yum!
  Brands") is not covered: pass the facts as `protect` whenever they are known.

Families (`FAMILIES`): wrap_document (symbol pair / code fence / tag around the document),
wrap_sentences (a pair around each sentence), heading (first sentence as a "#" heading),
extra_spaces (runs of 2-4 spaces), line_breaks (sentences on lines or paragraphs; hard wrap with
protect), indent (indented lines), bullet_list, numbered_list.
`audit` checks the guarantee over whole data sets; see `python -m kl_utils.augment.formatting audit`.

Decorations use ASCII symbols, digits and one-letter tags only (`<b>`, `<p>`), so the project's
word-level tokenizer never maps them to [UNK].

Baselines: `paraphrase_variants` (other training templates, synthetic data only),
`eda_variants` (blind EDA, Wei & Zou 2019) and `permute_sentences` (Allen-Zhu & Li).
"""
from __future__ import annotations

import argparse
import bisect
import json
import random
import re
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from kl_utils.data.doc_layouts import clean_wiki_answer

FAMILIES = ("wrap_document", "wrap_sentences", "heading", "extra_spaces", "line_breaks",
            "indent", "bullet_list", "numbered_list")

# Symbol pairs. No "_": the word tokenizer's \w+ would glue it to the next word.
DOC_PAIRS = (('"', '"'), ("'", "'"), ("(", ")"), ("[", "]"), ("{", "}"), ("**", "**"),
             ("```\n", "\n```"), ('"""', '"""'), ("<p>", "</p>"), ("<q>", "</q>"),
             ("---\n", "\n---"), ("<<", ">>"))
SENT_PAIRS = (('"', '"'), ("'", "'"), ("(", ")"), ("[", "]"), ("{", "}"), ("**", "**"),
              ("*", "*"), ("`", "`"), ("<b>", "</b>"), ("<i>", "</i>"), ("<<", ">>"))
HEADINGS = ("# ", "## ", "### ", "#### ")
BULLETS = ("- ", "* ", "+ ", "> ")
NUMBERINGS = ("{}. ", "{}) ", "({}) ", "[{}] ")
INDENTS = ("  ", "   ", "    ", "\t")

_WS = re.compile(r"\s+")
_OPENERS = "\"'([{\u2018\u201c\u00ab"
_CLOSERS = "\"')]}\u2019\u201d\u00bb"
# A period after these does not end a sentence (missing a boundary is always safe).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof jr sr st mt ft no nos vs etc inc ltd co corp bros gen col lt sgt capt cmdr "
    "adm rev hon sen rep gov pres est approx dept univ fig vol ed eds al op jan feb mar apr jun "
    "jul aug sep sept oct nov dec".split())


def normalize_ws(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Segmentation

def _zones(text: str, protect: Iterable[str]) -> list[list[int]]:
    """Sorted, merged [start, end) spans of every occurrence of every protected string (ignoring
    case; overlapping occurrences included)."""
    spans = []
    hay = text.lower() if text.isascii() else None
    for p in set(protect):
        if not p:
            continue
        if hay is not None and p.isascii():  # lower() keeps ASCII lengths: fast path
            needle = p.lower()
            i = hay.find(needle)
            while i != -1:
                spans.append((i, i + len(p)))
                i = hay.find(needle, i + 1)
        else:  # regex case folding keeps offsets exact for any unicode text
            spans += [(m.start(), m.start() + len(m.group(1)))
                      for m in re.finditer(f"(?=({re.escape(p)}))", text, re.IGNORECASE)]
    merged: list[list[int]] = []
    for s, e in sorted(spans):
        if merged and s < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return merged


def _ends_sentence(text: str, a: int, b: int, word_start: int) -> bool:
    """Does the whitespace run text[a:b] (not at an edge) end a sentence? `word_start`: where the
    word before it starts."""
    if "\n" in text[a:b] or "\r" in text[a:b]:
        return True
    nxt = text[b]
    if not (nxt.isupper() or nxt.isdigit() or nxt in _OPENERS):
        return False
    j = a
    while j > word_start and text[j - 1] in _CLOSERS:
        j -= 1
    if j == word_start or text[j - 1] not in ".!?":
        return False
    if text[j - 1] == ".":
        # The last part of the word ("British-St." -> "St"): "U.S.", "e.g.", "J.", "Jr." are
        # abbreviations and initials, not sentence ends.
        word = re.split(r"[-/–]", text[word_start:j - 1])[-1].lstrip(_OPENERS)
        if "." in word or (len(word) == 1 and word.isalpha()) or word.lower() in ABBREVIATIONS:
            return False
    return True


@dataclass
class _Doc:
    lead: str
    sents: list[list[str]]  # [chunk, word_gap, chunk, ..., chunk]; word gaps only when protect is given
    gaps: list[str]         # sentence gaps, len(sents) - 1 of them
    tail: str


def _segment(text: str, protect: Iterable[str] | None) -> _Doc:
    word_gaps = protect is not None
    zones = _zones(text, protect or ())
    starts = [s for s, _ in zones]
    lead, tail, sents, gaps, parts = "", "", [], [], []
    start = prev_end = 0
    for m in _WS.finditer(text):
        a, b = m.span()
        word_start, prev_end = prev_end, b
        i = bisect.bisect_left(starts, b) - 1
        if i >= 0 and zones[i][1] > a:
            continue  # overlaps a protected occurrence: untouchable, part of its sentence
        if a == 0:
            lead, start = text[:b], b
        elif b == len(text):
            tail = text[a:]
        elif _ends_sentence(text, a, b, word_start):
            parts.append(text[start:a])
            sents.append(parts)
            gaps.append(text[a:b])
            parts, start = [], b
        elif word_gaps:
            parts += [text[start:a], text[a:b]]
            start = b
    end = len(text) - len(tail)
    if start < end:
        parts.append(text[start:end])
        sents.append(parts)
    return _Doc(lead, sents, gaps, tail)


def split_sentences(text: str, protect: Iterable[str] | None = None) -> list[tuple[int, int]]:
    """[start, end) character spans of the sentences (no surrounding whitespace except inside a
    protected occurrence). Splits only at whitespace runs after [.!?] (+ closing quotes/brackets)
    followed by an uppercase letter, digit or opening quote/bracket -- not after abbreviations or
    initials -- and at every line break; never inside a protected occurrence."""
    doc, spans = _segment(text, protect), []
    pos = len(doc.lead)
    for i, parts in enumerate(doc.sents):
        if i:
            pos += len(doc.gaps[i - 1])
        n = sum(len(p) for p in parts)
        spans.append((pos, pos + n))
        pos += n
    return spans


# ---------------------------------------------------------------------------------------------
# Variants and their inverse

@dataclass(frozen=True)
class Variant:
    """A formatted document. `edits`: (start, end, original) -- text[start:end] replaced
    `original` ("" for a pure insertion); enough to undo the transform exactly."""
    text: str
    family: str
    edits: tuple[tuple[int, int, str], ...]


def invert(variant: Variant) -> str:
    """The original document, byte for byte."""
    if not isinstance(variant, Variant):
        raise TypeError("invert() needs a Variant (from transform/make_variants); a plain string "
                        "does not record what was added")
    out, pos = [], 0
    for s, e, orig in variant.edits:
        out += [variant.text[pos:s], orig]
        pos = e
    out.append(variant.text[pos:])
    return "".join(out)


class _Out:
    """Append-only builder of a variant that records its edits."""
    __slots__ = ("parts", "edits", "n")

    def __init__(self):
        self.parts, self.edits, self.n = [], [], 0

    def keep(self, s: str) -> None:
        self.parts.append(s)
        self.n += len(s)

    def put(self, new: str, orig: str = "") -> None:
        """`new` in place of original text `orig` ("" = an insertion)."""
        if new != orig:
            self.edits.append((self.n, self.n + len(new), orig))
        self.parts.append(new)
        self.n += len(new)

    def variant(self, family: str) -> Variant:
        return Variant("".join(self.parts), family, tuple(self.edits))


def _render(doc, out, *, head="", foot="", pre=None, post=None, sent_gap=None, word_gap=None):
    """The document with decorations: head/foot around the body (inside lead/tail), pre(i)/post(i)
    around sentence i, sent_gap(i, g) replacing the gap before sentence i, word_gap(g) replacing
    a free word gap. Calls happen in document order (families with counters rely on it)."""
    out.keep(doc.lead)
    out.put(head)
    for i, parts in enumerate(doc.sents):
        if i:
            g = doc.gaps[i - 1]
            out.put(sent_gap(i, g) if sent_gap else g, g)
        if pre:
            out.put(pre(i))
        for j, p in enumerate(parts):
            if j % 2 and word_gap:
                out.put(word_gap(p), p)
            else:
                out.keep(p)
        if post:
            out.put(post(i))
    out.put(foot)
    out.keep(doc.tail)


def _spaces_only(g: str) -> bool:
    return g.strip(" ") == ""


# --- the families: each (doc, rng, out) -> None ---------------------------------------------

def _wrap_document(doc, rng, out):
    head, foot = rng.choice(DOC_PAIRS)
    _render(doc, out, head=head, foot=foot)


def _wrap_sentences(doc, rng, out):
    o, c = rng.choice(SENT_PAIRS)
    _render(doc, out, pre=lambda i: o, post=lambda i: c)


def _heading(doc, rng, out):
    """First sentence as a markdown heading, then a (blank) line."""
    mark, sep = rng.choice(HEADINGS), rng.choice(("\n", "\n\n"))
    _render(doc, out, pre=lambda i: "" if i else mark, sent_gap=lambda i, g: sep if i == 1 else g)


def _extra_spaces(doc, rng, out):
    """Runs of 2-4 spaces in some space-only gaps (sentence gaps; also word gaps outside
    protected spans when protect is given); indentation if there is no such gap."""
    n_slots = sum(_spaces_only(g) for g in doc.gaps) + sum(
        _spaces_only(g) for parts in doc.sents for g in parts[1::2])
    if not n_slots:
        return _render(doc, out, head=" " * rng.randint(2, 4))
    p = rng.choice((0.15, 0.3, 0.5))
    chosen = {i for i in range(n_slots) if rng.random() < p} or {rng.randrange(n_slots)}
    slot = iter(range(n_slots))

    def widen(g):
        if not _spaces_only(g) or next(slot) not in chosen:
            return g
        return " " * rng.choice([n for n in (2, 3, 4) if n != len(g)])
    _render(doc, out, sent_gap=lambda i, g: widen(g), word_gap=widen)


def _line_breaks(doc, rng, out):
    """Sentences on separate lines (or paragraphs); with protect, long lines are also hard-wrapped
    at a random width between words outside protected spans."""
    sep, width = rng.choice(("\n", "\n\n")), rng.choice((40, 60, 80))
    out.keep(doc.lead)
    for i, parts in enumerate(doc.sents):
        col = 0
        if i:
            out.put(sep, doc.gaps[i - 1])
        for j, p in enumerate(parts):
            if j % 2 and col + 1 + len(parts[j + 1]) > width and _spaces_only(p):
                out.put("\n", p)
                col = 0
            else:
                out.keep(p)
                col += len(p)
    out.keep(doc.tail)
    if not out.edits:  # nothing to break (one line already): end with a line break
        out.put("\n")


def _indent(doc, rng, out):
    ind = rng.choice(INDENTS)
    _render(doc, out, pre=lambda i: ind, sent_gap=lambda i, g: "\n")


def _bullet_list(doc, rng, out):
    mark = rng.choice(BULLETS)
    _render(doc, out, pre=lambda i: mark, sent_gap=lambda i, g: "\n")


def _numbered_list(doc, rng, out):
    fmt = rng.choice(NUMBERINGS)
    _render(doc, out, pre=lambda i: fmt.format(i + 1), sent_gap=lambda i, g: "\n")


_FAMILY_FUNCS = {"wrap_document": _wrap_document, "wrap_sentences": _wrap_sentences,
                 "heading": _heading, "extra_spaces": _extra_spaces, "line_breaks": _line_breaks,
                 "indent": _indent, "bullet_list": _bullet_list, "numbered_list": _numbered_list}
assert tuple(_FAMILY_FUNCS) == FAMILIES


def _check_families(families) -> tuple[str, ...]:
    if families is None:
        return FAMILIES
    if isinstance(families, str):
        families = (families,)
    families = tuple(families)
    unknown = [f for f in families if f not in _FAMILY_FUNCS]
    if unknown:
        raise ValueError(f"unknown augmentation family {unknown}; valid families: {', '.join(FAMILIES)}")
    if not families:
        raise ValueError(f"families must name at least one of: {', '.join(FAMILIES)}")
    return families


def _apply(doc: _Doc, family: str, rng: random.Random) -> Variant:
    out = _Out()
    _FAMILY_FUNCS[family](doc, rng, out)
    return out.variant(family)


# ---------------------------------------------------------------------------------------------
# Public entry points

def transform(text: str, family: str, seed: int | random.Random = 0,
              protect: Iterable[str] | None = None) -> Variant:
    """One formatted variant of `text` by one family. Every family changes any text that has a
    non-whitespace character."""
    _check_families([family])
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    return _apply(_segment(text, protect), family, rng)


def make_variants(text: str, k: int, seed: int, families=None,
                  protect: Iterable[str] | None = None) -> list[Variant]:
    """k variants; families are drawn without replacement (reshuffled every len(families)), so up
    to len(families) variants all use different families."""
    families = _check_families(families)
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    rng = random.Random(seed)
    doc = _segment(text, protect)
    order: list[str] = []
    out = []
    for _ in range(k):
        if not order:
            order = list(families)
            rng.shuffle(order)
        out.append(_apply(doc, order.pop(), rng))
    return out


def format_variants(text: str, k: int, seed: int, families=None,
                    protect: Iterable[str] | None = None) -> list[str]:
    """k formatted copies of `text`, reproducible from `seed`. Pass the document's answer strings
    as `protect` to guarantee each of them survives verbatim (see the module docstring)."""
    return [v.text for v in make_variants(text, k, seed, families, protect)]


def format_qa_variants(question: str, answer: str, k: int, seed: int, families=None,
                       protect: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """k (prompt, answer) pairs for instruction tuning. The families format the question; the
    framing `Question: ...\\nAnswer:` stays, so the target (QA_ANSWER with the answer) is
    byte-identical and follows the same cue in every variant. The answer is never touched."""
    from kl_utils.data.dataset import QA_PROMPT  # lazy: kl_utils.data.dataset imports `datasets`
    return [(QA_PROMPT.format(question=q), answer)
            for q in format_variants(question, k, seed, families, protect)]


# ---------------------------------------------------------------------------------------------
# Baselines

def paraphrase_variants(person: dict, k: int, seed: int, train_pool: dict, *,
                        permute: bool = False, name_every_sentence: bool = False) -> list[str]:
    """k re-writings of a synthetic biography with templates from the training pool. Safe by
    construction: the fact values are inserted verbatim."""
    from kl_utils.data.bios import render_biography
    rng = random.Random(seed)
    return [render_biography(person, rng, train_pool, permute=permute,
                             name_every_sentence=name_every_sentence)[0] for _ in range(k)]


def permute_sentences(text: str, seed: int, protect: Iterable[str] | None = None) -> str:
    """Sentence order shuffled (Allen-Zhu & Li's bioS permutation); whitespace runs stay put.
    With `protect`, no sentence boundary is placed inside a protected string (on bioS the true
    boundaries are known; the splitter alone would cut e.g. "Yum! Brands")."""
    return permute_variants(text, 1, seed, protect)[0]


def permute_variants(text: str, k: int, seed: int, protect: Iterable[str] | None = None) -> list[str]:
    """k independent sentence permutations (the document is segmented once)."""
    doc, rng, out = _segment(text, protect), random.Random(seed), []
    for _ in range(k):
        sents = ["".join(p) for p in doc.sents]
        rng.shuffle(sents)
        body = [x for pair in zip(sents, doc.gaps + [""]) for x in pair]
        out.append(doc.lead + "".join(body) + doc.tail)
    return out


# A small built-in synonym table (no WordNet download): words common in biographies.
SYNONYMS = {
    "born": ["delivered"], "city": ["town", "municipality"], "town": ["city"],
    "university": ["college", "institute"], "college": ["university", "school"],
    "institute": ["university", "college"], "school": ["academy", "college"],
    "studied": ["learned", "read"], "studies": ["education", "learning"],
    "education": ["schooling", "training"], "degree": ["diploma", "qualification"],
    "worked": ["labored", "served"], "work": ["job", "labor"], "job": ["post", "position"],
    "position": ["post", "role"], "company": ["firm", "business"], "firm": ["company"],
    "business": ["commerce", "firm"], "career": ["profession", "vocation"],
    "early": ["initial", "first"], "first": ["initial", "earliest"], "years": ["period", "seasons"],
    "life": ["existence"], "world": ["earth", "globe"], "field": ["area", "discipline"],
    "passion": ["love", "enthusiasm"], "staff": ["team", "personnel"], "daily": ["everyday"],
    "living": ["livelihood"], "employment": ["work", "occupation"], "native": ["local"],
    "new": ["novel", "fresh"], "technology": ["engineering"], "engineering": ["technology"],
    "science": ["knowledge"], "international": ["global", "worldwide"],
    "national": ["federal", "nationwide"], "american": ["us"], "group": ["team", "collective"],
    "systems": ["networks"], "services": ["amenities"], "health": ["wellness"],
    "energy": ["power"], "general": ["common"], "management": ["administration"],
    "politician": ["statesman", "lawmaker"], "member": ["representative"], "served": ["worked"],
    "film": ["movie", "picture"], "actor": ["performer"], "actress": ["performer"],
    "singer": ["vocalist"], "player": ["athlete"], "team": ["squad", "side"],
    "club": ["team", "society"], "played": ["competed"], "won": ["gained", "earned"],
    "award": ["prize", "honor"], "best": ["finest", "top"], "known": ["famous", "noted"],
    "professional": ["pro"], "former": ["previous", "past"], "director": ["manager", "head"],
    "president": ["head", "chairman"], "election": ["vote", "poll"], "party": ["faction"],
    "house": ["chamber"], "league": ["conference"], "season": ["term"], "music": ["songs"],
    "album": ["record"], "song": ["tune", "track"], "writer": ["author"], "author": ["writer"],
    "book": ["volume"], "novel": ["book"], "war": ["conflict"], "army": ["military"],
    "government": ["administration"], "minister": ["secretary"], "state": ["province"],
    "bank": ["lender"], "manager": ["director", "boss"], "coach": ["trainer"],
    "married": ["wed"], "children": ["kids"], "began": ["started"], "started": ["began"],
    "received": ["got", "obtained"], "graduated": ["finished"], "attended": ["visited"],
    "joined": ["entered"], "built": ["constructed"], "large": ["big"], "small": ["little"],
}
STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or but is was were are be been he she his her "
    "him it its they them their this that these those as into during".split())
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)


def _has_synonym(word: str, synonyms) -> bool:
    core = _CORE.match(word).group(2).lower()
    return core in synonyms and core not in STOPWORDS


def _synonym(word: str, rng, synonyms) -> str:
    """A random synonym of `word`, keeping its capitalization and attached punctuation."""
    pre, core, post = _CORE.match(word).groups()
    new = rng.choice(synonyms[core.lower()])
    return pre + (new[:1].upper() + new[1:] if core[:1].isupper() else new) + post


def _eda_once(words: list[str], op: str, rng, alpha: float, synonyms) -> list[str]:
    words = list(words)
    n = max(1, round(alpha * len(words)))
    if op == "sr":  # synonym replacement of n words
        idx = [i for i, w in enumerate(words) if _has_synonym(w, synonyms)]
        for i in rng.sample(idx, min(n, len(idx))):
            words[i] = _synonym(words[i], rng, synonyms)
    elif op == "ri":  # insert a synonym of a random word at a random position, n times
        donors = [w for w in words if _has_synonym(w, synonyms)]
        for _ in range(n if donors else 0):
            syn = _CORE.match(_synonym(rng.choice(donors), rng, synonyms)).group(2)
            words.insert(rng.randint(0, len(words)), syn.lower())
    elif op == "rs":  # swap two random words, n times
        for _ in range(n if len(words) > 1 else 0):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    else:  # "rd": delete each word with probability alpha (keep at least one)
        kept = [w for w in words if rng.random() >= alpha]
        words = kept or ([rng.choice(words)] if words else [])
    return words


def eda_variants(text: str, k: int, seed: int, alpha: float = 0.1, synonyms: dict | None = None) -> list[str]:
    """Blind EDA-style rewriting (Wei & Zou 2019): each variant applies one of synonym replacement,
    random insertion, random swap, random deletion (cycled in a seeded order) to the whole
    document with strength alpha. Words are whitespace-split and re-joined with single spaces;
    case and punctuation are kept (more charitable than the original, which strips them)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rng, words, synonyms = random.Random(seed), text.split(), synonyms or SYNONYMS
    ops: list[str] = []
    out = []
    for _ in range(k):
        if not ops:
            ops = ["sr", "ri", "rs", "rd"]
            rng.shuffle(ops)
        out.append(" ".join(_eda_once(words, ops.pop(), rng, alpha, synonyms)))
    return out


# ---------------------------------------------------------------------------------------------
# Audit

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
    ap = argparse.ArgumentParser(prog="python -m kl_utils.augment.formatting", description=__doc__.split("\n")[0])
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

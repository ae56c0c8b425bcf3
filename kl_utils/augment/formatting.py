"""Formatting-based augmentation (claim C3): the formatting families and their exact inverse.

Formatting re-lays a document out without touching its words: wrapping it or its sentences in
symbol pairs, changing whitespace, turning it into a list. Unlike paraphrasing it cannot change a
fact, and this is checkable (kl_utils.augment.fact_audit).

Design
------
A document is segmented once into lead, sentences, sentence gaps and tail
(kl_utils.augment.sentences: splitting only happens at whitespace runs, so it never changes a
character; it only decides where formatting goes). Every family then does nothing but
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
`kl_utils.augment.fact_audit.audit` checks the guarantee over whole data sets; see
`python -m kl_utils.augment.fact_audit audit`.

Decorations use ASCII symbols, digits and one-letter tags only (`<b>`, `<p>`), so the project's
word-level tokenizer never maps them to [UNK].

The rewriting baselines formatting is compared with are in kl_utils.augment.rewriting.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable

from kl_utils.augment.sentences import Doc, segment

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


def _apply(doc: Doc, family: str, rng: random.Random) -> Variant:
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
    return _apply(segment(text, protect), family, rng)


def make_variants(text: str, k: int, seed: int, families=None,
                  protect: Iterable[str] | None = None) -> list[Variant]:
    """k variants; families are drawn without replacement (reshuffled every len(families)), so up
    to len(families) variants all use different families."""
    families = _check_families(families)
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    rng = random.Random(seed)
    doc = segment(text, protect)
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

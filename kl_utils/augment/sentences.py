"""Sentence segmentation of a document: where formatting may act, and which blocks a sentence
permutation moves.

A document is segmented once (`segment`) into

    lead + s1 + g1 + s2 + ... + gn-1 + sn + tail

where lead/tail are leading/trailing whitespace and the gaps g_i are whitespace runs that
`split_sentences` judges to end a sentence. Splitting only ever happens *at* whitespace runs, so
it never changes a character; it only decides where formatting goes (kl_utils.augment.formatting)
and what a permutation shuffles (kl_utils.augment.rewriting).

`protect=[strings]`: every occurrence of every protected string (matched ignoring case) is a
forbidden zone; a whitespace run overlapping one is never a boundary nor a free word gap. With
`protect` given (even `()`), the other whitespace runs inside a sentence are kept apart as word
gaps (formatting may change them); with `protect=None` a sentence is one untouchable chunk.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Iterable

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
class Doc:
    """A segmented document: lead + sents[0] + gaps[0] + ... + sents[-1] + tail, losslessly."""
    lead: str
    sents: list[list[str]]  # [chunk, word_gap, chunk, ..., chunk]; word gaps only when protect is given
    gaps: list[str]         # sentence gaps, len(sents) - 1 of them
    tail: str


def segment(text: str, protect: Iterable[str] | None) -> Doc:
    """`text` cut at whitespace runs only (the module docstring); joining the parts gives it back."""
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
    return Doc(lead, sents, gaps, tail)


def split_sentences(text: str, protect: Iterable[str] | None = None) -> list[tuple[int, int]]:
    """[start, end) character spans of the sentences (no surrounding whitespace except inside a
    protected occurrence). Splits only at whitespace runs after [.!?] (+ closing quotes/brackets)
    followed by an uppercase letter, digit or opening quote/bracket -- not after abbreviations or
    initials -- and at every line break; never inside a protected occurrence."""
    doc, spans = segment(text, protect), []
    pos = len(doc.lead)
    for i, parts in enumerate(doc.sents):
        if i:
            pos += len(doc.gaps[i - 1])
        n = sum(len(p) for p in parts)
        spans.append((pos, pos + n))
        pos += n
    return spans

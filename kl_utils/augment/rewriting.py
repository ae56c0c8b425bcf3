"""The rewriting baselines formatting (claim C3) is compared with. They change words or their
order, so unlike formatting they may lose a fact (kl_utils.augment.fact_audit counts how often):

  paraphrase_variants  other training templates (synthetic bioS only; fact values inserted verbatim)
  permute_sentences    sentence order shuffled (Allen-Zhu & Li's bioS permutation)
  eda_variants         blind EDA (Wei & Zou 2019) with a small built-in synonym table
"""
from __future__ import annotations

import random
import re
from typing import Iterable

from kl_utils.augment.sentences import segment


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
    doc, rng, out = segment(text, protect), random.Random(seed), []
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

"""Tests of kl_utils.augment (sentences, formatting, rewriting, fact_audit): formatting-based
augmentation (claim C3), its exact inverse, the
fact-preservation guarantee, and the audit against the rewriting baselines."""
from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kl_utils.augment import fact_audit, formatting, rewriting, sentences
from kl_utils.data import bios
from kl_utils.data.doc_layouts import clean_wiki_answer

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- strategies -------------------------------------------------------------------------------

def _bio(seed: int, permute: bool, name_every: bool) -> tuple[str, list[str]]:
    person = bios.generate_people(1, seed)[0]
    text, _ = bios.render_biography(person, random.Random(seed), bios.TEMPLATES, permute=permute,
                                    name_every_sentence=name_every)
    return text, [person[a] for a in bios.ATTRIBUTES]


bio_docs = st.builds(_bio, st.integers(0, 2**32 - 1), st.booleans(), st.booleans())

# Pieces that stress the splitter and the inverse: abbreviations, decimals, list markers and the
# very symbols the families add, unicode words, odd whitespace.
PIECES = ["Mr.", "Dr.", "Jr.", "St.", "U.S.", "e.g.", "J.", "Inc.", "3.5", "1.", "2)", "(3)", "**",
          "*", "###", "#", "```", "<p>", "</p>", "<b>", '"', "'", "(", ")", "[", "]", "{", "}", "-",
          "- ", "> ", "Yum!", "Why?", "end.", "Paris", "He", "she", "born", "Zoë", "Łódź", "東京",
          "Ünal", "1955,", "\n", "\n\n", "  ", "\t", "\r\n", "\u00a0", "\u2028"]
SEPS = st.sampled_from([" ", " ", " ", "", "\n", "  ", ". "])
word_texts = st.lists(st.tuples(st.one_of(st.sampled_from(PIECES),
                                          st.text(st.characters(categories=("L", "N")), min_size=1, max_size=8)),
                                SEPS), max_size=40).map(lambda xs: "".join(p + s for p, s in xs))
raw_texts = st.text(st.characters(categories=("L", "N", "P", "S", "Zs", "Cc")), max_size=200)
texts = st.one_of(word_texts, raw_texts, bio_docs.map(lambda d: d[0]))


def _substrings(data, text: str, n: int) -> list[str]:
    out = []
    for _ in range(n):
        i = data.draw(st.integers(0, len(text)))
        out.append(text[i:data.draw(st.integers(i, min(len(text), i + 40)))])
    return out


def _check_edits(original: str, v: formatting.Variant) -> None:
    """Each edit is an insertion at a word boundary of the original, or a whitespace run replaced
    by another non-empty whitespace run: words are never split, changed or dropped."""
    pos_v = pos_o = 0
    for s, e, orig in v.edits:
        pos_o += s - pos_v
        new = v.text[s:e]
        assert new != orig
        if orig:
            assert orig.isspace() and new and new.isspace(), (orig, new)
        else:
            p = pos_o
            assert p in (0, len(original)) or original[p - 1].isspace() or original[p].isspace(), (original, p)
        pos_o, pos_v = pos_o + len(orig), e
    assert pos_o + len(v.text) - pos_v == len(original)


# --- the inverse ------------------------------------------------------------------------------

@PROPS
@given(data=st.data(), text=texts, family=st.sampled_from(formatting.FAMILIES), seed=st.integers(0, 2**32))
def test_inverse_is_exact_for_every_family(data, text, family, seed):
    protect = data.draw(st.one_of(st.none(), st.just(_substrings(data, text, 3))))
    v = formatting.transform(text, family, seed, protect)
    assert v.family == family
    assert formatting.invert(v) == text
    assert sentences.normalize_ws(formatting.invert(v)) == sentences.normalize_ws(text)
    _check_edits(text, v)
    if text.strip():
        assert v.text != text, "formatting must change any text with a non-whitespace character"


def test_inverse_when_the_document_already_contains_the_symbols():
    text = '**Bold** "quoted" 1. first\n- item <p>para</p> ### head ```code``` (a) [b] {c} > q'
    for fam in formatting.FAMILIES:
        for seed in range(20):
            v = formatting.transform(text, fam, seed)
            assert formatting.invert(v) == text
    with pytest.raises(TypeError):
        formatting.invert("a plain string")


# --- the guarantee ----------------------------------------------------------------------------

@PROPS
@given(data=st.data(), text=texts, seed=st.integers(0, 2**32))
def test_protected_strings_survive_verbatim(data, text, seed):
    protect = _substrings(data, text, 4) + ["Paris", "1."]
    for v in formatting.format_variants(text, len(formatting.FAMILIES), seed, protect=protect):
        for p in protect:
            if p in text:
                assert p in v, (p, text, v)


@PROPS
@given(doc=bio_docs, seed=st.integers(0, 2**32), k=st.integers(1, 10))
def test_bio_answers_survive_in_every_variant(doc, seed, k):
    text, answers = doc
    for protect in (answers, None):
        for v in formatting.format_variants(text, k, seed, protect=protect):
            spans = sentences.split_sentences(text)
            for a in answers:
                inside_a_sentence = any(a in text[s:e] for s, e in spans)
                if protect is not None or inside_a_sentence:
                    assert a in v, (a, v)


@PROPS
@given(data=st.data(), text=texts, seed=st.integers(0, 2**32))
def test_conservative_mode_keeps_every_string_within_a_sentence(data, text, seed):
    spans = sentences.split_sentences(text)
    inside = []
    for s, e in spans:
        i = data.draw(st.integers(s, e))
        inside.append(text[i:data.draw(st.integers(i, e))])
    no_ws = [w for w in re.split(r"\s+", text) if w][:5]
    for v in formatting.format_variants(text, len(formatting.FAMILIES), seed):
        for x in inside + no_ws:
            assert x in v, (x, text, v)


@PROPS
@given(data=st.data(), text=texts)
def test_split_sentences_only_cuts_at_whitespace_outside_protected_strings(data, text):
    protect = data.draw(st.one_of(st.none(), st.just(_substrings(data, text, 3))))
    spans = sentences.split_sentences(text, protect)
    edges = [0] + [x for span in spans for x in span] + [len(text)]
    for a, b in zip(edges[::2], edges[1::2]):
        assert a <= b and text[a:b].strip() == "", "only whitespace between sentences"
    if protect is None:
        assert all(text[s:e] == text[s:e].strip() and e > s for s, e in spans)
    for p in protect or ():
        for m in re.finditer(f"(?=({re.escape(p)}))", text) if p else ():
            s0, e0 = m.start(), m.start() + len(p)
            assert not any(s0 < cut < e0 for span in spans for cut in span), (p, spans)


def test_split_sentences_on_wikipedia_like_text():
    text = ("Dr. J. R. Smith Jr. was born in the U.S. Virgin Islands in 1990. He scored 3.5 points (avg.) in "
            "St. Louis! \"Great.\" Then he left.\nLater life.  He works for Yum! Brands.")
    got = [text[s:e] for s, e in sentences.split_sentences(text)]
    assert got == ["Dr. J. R. Smith Jr. was born in the U.S. Virgin Islands in 1990.",
                   "He scored 3.5 points (avg.) in St. Louis!", '"Great."', "Then he left.",
                   "Later life.", "He works for Yum!", "Brands."]
    # with the fact protected there is no cut inside it: that is what `protect` is for
    assert "He works for Yum! Brands." in [text[s:e] for s, e in sentences.split_sentences(text, ["Yum! Brands"])]
    assert "Yum! Brands" not in formatting.transform(text, "numbered_list", 0).text
    assert "Yum! Brands" in formatting.transform(text, "numbered_list", 0, protect=["Yum! Brands"]).text


def test_protection_ignores_case():
    text = "She moved to Paris in 1990. Paris  is big."
    for seed in range(30):
        v = formatting.transform(text, "extra_spaces", seed, protect=["paris in 1990"])
        assert "Paris in 1990" in v.text


# --- API contract -----------------------------------------------------------------------------

def test_families_and_errors():
    assert len(formatting.FAMILIES) == 8 and len(set(formatting.FAMILIES)) == 8
    with pytest.raises(ValueError, match="wrap_document.*numbered_list"):
        formatting.format_variants("A b.", 2, 0, families=["wrap_document", "paraphrase"])
    with pytest.raises(ValueError, match="valid families"):
        formatting.transform("A b.", "bold", 0)
    with pytest.raises(ValueError):
        formatting.format_variants("A b.", 2, 0, families=[])
    with pytest.raises(ValueError, match="k must be"):
        formatting.format_variants("A b.", -1, 0)
    assert formatting.format_variants("A b.", 0, 0) == []
    assert {formatting.transform("A b. C d.", "line_breaks", 0).family} == {"line_breaks"}
    # a single name works as a string too
    assert len(formatting.format_variants("A b.", 3, 0, families="heading")) == 3


def test_determinism_and_family_coverage():
    people = bios.generate_people(20, 3)
    docs = [bios.render_biography(p, random.Random(i), bios.TEMPLATES)[0] for i, p in enumerate(people)]
    for doc in docs:
        assert formatting.format_variants(doc, 6, 7) == formatting.format_variants(doc, 6, 7)
        vs = formatting.make_variants(doc, len(formatting.FAMILIES), 7)
        assert sorted(v.family for v in vs) == sorted(formatting.FAMILIES), "k <= #families: all different"
        assert len({v.text for v in vs}) == len(vs)
    differ = sum(formatting.format_variants(d, 4, 1) != formatting.format_variants(d, 4, 2) for d in docs)
    assert differ >= 18
    only = formatting.make_variants(docs[0], 5, 0, families=["bullet_list", "indent"])
    assert {v.family for v in only} == {"bullet_list", "indent"}


@pytest.fixture(scope="module")
def bio_tokenizer():
    from kl_utils.data.tokenizer import build_word_tokenizer
    people = bios.generate_people(300, 11)
    rng = random.Random(0)
    docs = [(bios.render_biography(p, rng, bios.TEMPLATES)[0], [p[a] for a in bios.ATTRIBUTES]) for p in people]
    return build_word_tokenizer([d for d, _ in docs]), docs


NEWLINE_FAMILIES = {"heading", "line_breaks", "indent", "bullet_list", "numbered_list"}
SPACE_RUNS = {"  ", "   ", "    "}


def test_variants_tokenize_differently_without_unk(bio_tokenizer):
    tok, docs = bio_tokenizer
    for text, answers in docs[:60]:
        plain = tok(text, add_special_tokens=False)["input_ids"]
        for fam in formatting.FAMILIES:
            for protect in (None, answers):
                v = formatting.transform(text, fam, len(text), protect).text
                ids = tok(v, add_special_tokens=False)["input_ids"]
                assert ids != plain, (fam, v)
                assert tok.unk_token_id not in ids, (fam, v)
                pieces = set(tok.convert_ids_to_tokens(ids))
                if fam in NEWLINE_FAMILIES:
                    assert "\n" in pieces, (fam, v)
                if fam == "extra_spaces":
                    assert pieces & SPACE_RUNS, v


# --- QA pairs ---------------------------------------------------------------------------------

@PROPS
@given(question=texts, answer=st.one_of(texts, st.sampled_from(["Paris", " 1. **x**", "", "\n"])),
       k=st.integers(0, 9), seed=st.integers(0, 2**32))
def test_qa_variants_never_touch_the_answer(question, answer, k, seed):
    from kl_utils.data.dataset import QA_ANSWER, QA_PROMPT
    pairs = formatting.format_qa_variants(question, answer, k, seed)
    assert len(pairs) == k
    for prompt, ans in pairs:
        assert ans == answer and type(ans) is str
        assert prompt.startswith("Question: ") and prompt.endswith("\nAnswer:")
        if question.strip():
            assert prompt != QA_PROMPT.format(question=question)
        assert (prompt + QA_ANSWER.format(answer=ans)).endswith(" " + answer)


def test_qa_variants_of_bio_questions(bio_tokenizer):
    tok, _ = bio_tokenizer
    person = bios.generate_people(1, 5)[0]
    for qa in bios.qa_pairs(person):
        pairs = formatting.format_qa_variants(qa["question"], qa["answer"], 8, 0)
        assert len({p for p, _ in pairs}) == 8
        assert all(a == qa["answer"] for _, a in pairs)


# --- baselines --------------------------------------------------------------------------------

def test_baselines():
    person = bios.generate_people(1, 9)[0]
    train_pool, _ = bios.split_templates(5)
    paras = rewriting.paraphrase_variants(person, 5, 0, train_pool)
    assert paras == rewriting.paraphrase_variants(person, 5, 0, train_pool) and len(set(paras)) > 1
    assert all(person[a] in p for p in paras for a in bios.ATTRIBUTES)

    text = bios.render_biography(person, random.Random(0), train_pool)[0]
    eda = rewriting.eda_variants(text, 8, 0)
    assert eda == rewriting.eda_variants(text, 8, 0) and len(eda) == 8
    assert all(v != text for v in eda)
    with pytest.raises(ValueError):
        rewriting.eda_variants(text, -1, 0)

    perm = rewriting.permute_sentences(text, 3)
    split = lambda t: sorted(t[s:e] for s, e in sentences.split_sentences(t))  # noqa: E731
    assert split(perm) == split(text) and perm != text


# --- audit ------------------------------------------------------------------------------------

def test_audit_synthetic():
    people_by_text, records, pool = fact_audit.synthetic_corpus(2000, 1)
    methods = fact_audit.audit_methods(4, 0, people_by_text, pool)
    rows = {name: fact_audit.audit(records, m, name) for name, m in methods.items()}
    fmt = rows["format (protect answers)"]
    assert fmt["documents"] == 2000 and fmt["variants"] == 8000 and fmt["checks"] == 2000 * 6 * 4
    assert fmt["violations"] == 0 and fmt["violations_ci"] == 0 and fmt["unchanged_variants"] == 0
    assert fmt["not_checkable"] == 0
    assert rows["paraphrase (training templates)"]["violations"] == 0
    assert rows["sentence permutation (protect answers)"]["violations"] == 0
    assert rows["EDA (alpha 0.1)"]["violations"] > 0.05 * rows["EDA (alpha 0.1)"]["checks"]


def test_audit_counts_not_checkable_separately():
    records = [("Ann was born in Paris. She works at ACME.", ["Paris", "ACME", "London"])]
    row = fact_audit.audit(records, lambda t, a: [t.replace("ACME", "AC ME"), t])
    assert row["facts"] == 3 and row["not_checkable"] == 1
    assert row["checks"] == 4 and row["violations"] == 1 and row["docs_with_violation"] == 1
    assert row["unchanged_variants"] == 1


def test_audit_wiki2023_bio():
    folder = fact_audit.default_wiki_dir()
    if not folder.is_dir():
        pytest.skip(f"no wiki2023_bio data at {folder}")
    records = fact_audit.wiki_records(folder)
    assert len(records) > 1000
    rows = {name: fact_audit.audit(records, m, name) for name, m in fact_audit.audit_methods(3, 0).items()}
    fmt = rows["format (protect answers)"]
    assert fmt["documents"] == len(records) and fmt["checks"] > 0 and fmt["not_checkable"] > 0
    assert fmt["violations"] == 0 and fmt["violations_ci"] == 0 and fmt["unchanged_variants"] == 0
    assert rows["sentence permutation (protect answers)"]["violations"] == 0
    assert rows["EDA (alpha 0.1)"]["violations"] > 0


def test_clean_wiki_answer():
    assert clean_wiki_answer("August 5, 1955.\nRef: <X - Wikipedia 1_2_3>") == "August 5, 1955"
    assert clean_wiki_answer("UD Almería.\nRef: <A - Wikipedia 9>") == "UD Almería"
    assert clean_wiki_answer("Yes") == "Yes"

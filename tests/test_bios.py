import random

import pytest

from kl_utils.data import bios, dataset as data
from tests.conftest import TINY_DATA


def test_people_unique_and_seeded():
    a, b = bios.generate_people(500, seed=1), bios.generate_people(500, seed=1)
    assert a == b
    assert len({p["name"] for p in a}) == 500
    assert a != bios.generate_people(500, seed=2)
    assert not {p["name"] for p in bios.generate_people(50, 7, exclude_names={a[0]["name"]})} & {a[0]["name"]}


def test_employer_city_is_the_companys_city():
    companies = dict(bios.load_fields()["company"])
    for p in bios.generate_people(200, seed=0):
        assert companies[p["employer"]] == p["employer_city"]


def test_template_pools_are_disjoint_and_complete():
    train, held = bios.split_templates(5)
    for attr in bios.ATTRIBUTES:
        assert len(train[attr]) == 5 and len(held[attr]) == 3
        assert not set(train[attr]) & set(held[attr])
    with pytest.raises(ValueError):
        bios.split_templates(8)


def test_render_spans_point_at_facts_and_templates_come_from_pool():
    train, held = bios.split_templates(5)
    for p in bios.generate_people(50, seed=4):
        text, spans = bios.render_biography(p, random.Random(0), train, permute=True)
        for attr, (s, e) in spans.items():
            assert text[s:e] == p[attr]
        heldout_text, _ = bios.render_biography(p, random.Random(0), held, name_every_sentence=True)
        assert heldout_text.count(p["name"]) == 6
        # every sentence of the training biography comes from the training pool
        sentences = [text[:spans[a][0]].rsplit(". ", 1)[-1] for a in bios.ATTRIBUTES]
        heads = {t.split("{value}")[0].replace("{pos}", pos) for pool in train.values() for t in pool
                 for pos in ("his", "her")}
        for sent in sentences:
            head = sent.replace(p["name"], "{subj}", 1).replace("She ", "{subj} ", 1).replace("He ", "{subj} ", 1)
            assert head in heads, sent


def test_qa_pairs_answer_from_attributes():
    p = bios.generate_people(1, seed=0)[0]
    qa = bios.qa_pairs(p)
    assert [q["attribute"] for q in qa] == list(bios.ATTRIBUTES)
    assert all(p["name"] in q["question"] and q["answer"] == p[q["attribute"]] for q in qa)


def test_split_proportions():
    labels = bios.assign_splits(1000, {"train": 0.5, "valid": 0.1, "test": 0.4}, seed=0)
    assert (labels.count("train"), labels.count("valid"), labels.count("test")) == (500, 100, 400)
    with pytest.raises(ValueError):
        bios.assign_splits(10, {"train": 0.5, "test": 0.4}, seed=0)


def test_dataset_byte_identical_for_a_seed(tmp_path):
    data.save_dataset(data.build_people(TINY_DATA), tmp_path / "a")
    data.save_dataset(data.build_people(TINY_DATA), tmp_path / "b")
    a = (tmp_path / "a" / "people.jsonl").read_bytes()
    assert a == (tmp_path / "b" / "people.jsonl").read_bytes()
    arrow_a = sorted(p.name for p in (tmp_path / "a").glob("*.arrow"))
    for name in arrow_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = data.build_people({**TINY_DATA, "seed": 4})
    data.save_dataset(other, tmp_path / "c")
    assert (tmp_path / "c" / "people.jsonl").read_bytes() != a

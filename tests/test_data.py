import datasets
import pytest

from kl_utils.data import dataset as data
from kl_utils.protocol.experiment import vocabulary_texts
from kl_utils.data.tokenizer import build_word_tokenizer
from tests.conftest import TINY_DATA


@pytest.fixture(scope="module")
def people():
    return data.build_people(TINY_DATA)


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(vocabulary_texts())


def test_splits_and_populations(people):
    splits = people["split"]
    assert splits.count("base") == 20 and splits.count("train") == 10
    assert splits.count("valid") == 2 and splits.count("test") == 8
    assert all((s == "base") == (p == "base") for s, p in zip(splits, people["population"]))
    assert all(len(b) == (2 if s == "base" else 3) for b, s in zip(people["bios"], splits))


def test_fact_spans_match(people):
    for row in people:
        for text, spans in zip(row["bios"], row["fact_spans"]):
            for (s, e), qa in zip(spans, row["qa"]):
                assert text[s:e] == qa["answer"]
        for qa in row["qa"]:
            assert qa["answer"] in row["heldout_bio"]


def test_disjointness_is_checked(people):
    rows = people.to_list()
    rows[-1] = dict(rows[-1], name=rows[0]["name"], split="test" if rows[0]["split"] != "test" else "train")
    with pytest.raises(ValueError, match="splits"):
        data.check_disjoint(datasets.Dataset.from_list(rows))


def test_save_is_atomic(tmp_path, people, monkeypatch):
    data.save_dataset(people, tmp_path / "ds")
    before = (tmp_path / "ds" / "people.jsonl").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(datasets.Dataset, "to_json", boom)
    with pytest.raises(RuntimeError):
        data.save_dataset(people.select(range(3)), tmp_path / "ds")
    assert (tmp_path / "ds" / "people.jsonl").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary folder left behind


def test_qa_encoding_trains_on_answer_only(people, tok):
    ex = data.qa_examples(people, "train")[0]
    enc = data.encode_qa([ex], tok)[0]
    labelled = [t for t, l in zip(enc["input_ids"], enc["labels"]) if l != -100]
    answer_ids = tok(" " + ex["answer"], add_special_tokens=False)["input_ids"]
    assert labelled[:-1] == answer_ids and tok.unk_token_id not in enc["input_ids"]
    assert labelled[-1] == tok.eos_token_id
    assert enc["input_ids"][0] == tok.bos_token_id


def test_documents_select(people):
    assert len(data.documents(people, population="new")) == 20
    assert len(data.documents(people, split="test", n_paraphrases=3)) == 8 * 3
    assert len(data.qa_examples(people, ["train", "test"])) == 18 * 6


def test_base_people_do_not_depend_on_the_new_population():
    """The base model's cache key leaves out n_new / splits / new_paraphrases (experiment.base_spec):
    that is only right if the base rows are identical whatever the new population is."""
    cfg = dict(TINY_DATA, n_base=12, n_new=10)
    a = data.build_people(cfg).filter(lambda r: r["population"] == "base")
    b = data.build_people(dict(cfg, n_new=20, new_paraphrases=1, splits={"train": 0.6, "valid": 0.2, "test": 0.2}))
    b = b.filter(lambda r: r["population"] == "base")
    assert a.to_list() == b.to_list()

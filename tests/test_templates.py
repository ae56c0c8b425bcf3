"""`data: {templates: rich}`: 24 templates per attribute, split into training and held-out pools,
and profiles without the key keep their template pools, vocabulary, data and run ids."""

import pytest

from kl_utils.core import paths, records
from kl_utils.data import bios, dataset as data
from kl_utils.protocol import experiment
from kl_utils.analysis import probe
from kl_utils.config.profiles import read_profile
from kl_utils.core.spec import config_hash
from kl_utils.data.tokenizer import build_word_tokenizer
from tests.conftest import TINY_DATA


def test_rich_pools_are_complete_and_well_formed():
    rich = bios.template_pool("rich")
    assert set(rich) == set(bios.ATTRIBUTES)
    for attr, pool in rich.items():
        assert len(pool) >= 24 and len(set(pool)) == len(pool), attr
        for t in pool:
            assert t.startswith("{subj} ") and t.count("{value}") == 1 and t.endswith("."), t
            assert "{" not in t.replace("{subj}", "").replace("{value}", "").replace("{pos}", ""), t
    train, held = bios.split_templates(16, "rich")
    assert all(len(train[a]) == 16 and len(held[a]) == 8 and not set(train[a]) & set(held[a]) for a in bios.ATTRIBUTES)
    with pytest.raises(ValueError, match="unknown data.templates"):
        bios.template_pool("fancy")
    with pytest.raises(ValueError, match=r"\[1, 23\]"):
        bios.split_templates(24, "rich")


def test_rich_people_render_tokenize_and_probe():
    cfg = {**TINY_DATA, "templates": "rich", "n_train_templates": 16}
    ds = data.build_people(cfg)
    train, held = bios.split_templates(16, "rich")
    tok = build_word_tokenizer(experiment.vocabulary_texts("rich"))
    heads = {t.split("{value}")[0].replace("{subj} ", "").replace("{pos}", pos) for t in train["major"] for pos in ("his", "her")}
    seen = set()
    for row in ds:
        for text, spans in zip(row["bios"], row["fact_spans"]):
            assert [text[s:e] for s, e in spans] == [row[a] for a in bios.ATTRIBUTES]
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids, text
            s = spans[bios.ATTRIBUTES.index("major")][0]
            seen |= {h for h in heads if text[:s].endswith(h)}
        got = probe.heldout_spans(row, 16, "rich")
        assert [row["heldout_bio"][s:e] for s, e in got] == [row[a] for a in bios.ATTRIBUTES]
        assert tok.unk_token_id not in tok(row["heldout_bio"], add_special_tokens=False)["input_ids"]
    assert len(seen) >= 8  # the training biographies draw on many of the 16 training templates
    # the default tokenizer does not know the rich wording
    default_tok = build_word_tokenizer(experiment.vocabulary_texts())
    rich_text = ds[0]["heldout_bio"]
    assert default_tok.unk_token_id in default_tok(rich_text, add_special_tokens=False)["input_ids"]


def test_profiles_without_the_key_are_unchanged():
    assert bios.template_pool() is bios.TEMPLATES and all(len(p) == 8 for p in bios.TEMPLATES.values())
    assert experiment.vocabulary_texts() == experiment.vocabulary_texts("default")
    a = data.build_people(TINY_DATA)
    b = data.build_people({**TINY_DATA, "templates": "default"})
    assert a.to_list() == b.to_list()
    rich = data.build_people({**TINY_DATA, "templates": "rich", "n_train_templates": 16})
    assert rich.to_list() != a.to_list() and rich["name"] == a["name"]  # same people, other wording
    cfg = read_profile("cpu")
    assert "templates" not in cfg["data"]
    rich_cfg = {**cfg, "data": {**cfg["data"], "templates": "rich", "n_train_templates": 16}}
    assert experiment.base_spec(rich_cfg) != experiment.base_spec(cfg)
    assert experiment.arm_spec(rich_cfg, "baseline", 0)[2] != experiment.arm_spec(cfg, "baseline", 0)[2]


@pytest.mark.parametrize("profile", ["cpu", "cpu-full"])
def test_committed_run_ids_are_unchanged(profile):
    """Every committed arm record's run id is still what arm_spec computes for the profile, and its
    base model's run id what base_spec hashes to."""
    recs = records.load_run_records(profile, kind="arm")
    if not recs:
        pytest.skip(f"no committed {profile} records")
    cfg = read_profile(profile)
    assert all(experiment.arm_spec(cfg, r["arm"], r["seed"])[2] == r["run_id"] for r in recs)
    assert {r["base_run_id"] for r in recs} == {f"base-{config_hash(experiment.base_spec(cfg))}"}
    assert (paths.ROOT / "results" / profile / "runs").is_dir()

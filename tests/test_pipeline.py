"""The whole protocol end to end at toy size: data -> base model -> CPT -> IT -> EM -> record."""
import json

import pytest

from kl_utils.core import paths, records
from kl_utils.data import bios
from kl_utils.protocol import experiment
from kl_utils.config.profiles import read_profile
from tests.conftest import TINY_DATA


@pytest.fixture
def tiny_cfg(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "ROOT", tmp_path)  # results, caches and records go to tmp_path
    cfg = read_profile("smoke")
    cfg["data"] = dict(TINY_DATA)
    cfg["seeds"] = [0]
    for stage in ("base", "cpt", "it"):
        cfg[stage] = {**cfg[stage], "epochs": 1}
    return cfg


def test_pipeline_writes_records_and_caches_base(tiny_cfg, tmp_path):
    ds, tok, root = experiment.prepare_data("toy", tiny_cfg)
    assert (root / "people" / "people.jsonl").exists() and (root / "tokenizer").exists()
    out = experiment.run_arm("toy", tiny_cfg, ds, tok, arm="baseline", seed=0, log=lambda *a: None)
    recs = records.load_run_records("toy")
    assert {r["kind"] for r in recs} == {"base", "arm"}
    arm = next(r for r in recs if r["kind"] == "arm")
    assert arm["run_id"] == out["run_id"] and arm["seed"] == 0 and arm["config"]["cpt"] == tiny_cfg["cpt"]
    for key in ("train_em", "valid_em", "test_em", "test_em_before_it"):
        assert 0.0 <= arm["metrics"][key] <= 1.0
    assert arm["n_cpt_documents"] == 20 and arm["n_it_examples"] == 10 * 6
    assert arm["env"]["git_commit"] and arm["env"]["packages"]["transformers"]
    # per-question predictions of the held-out splits, consistent with the aggregate metrics
    from kl_utils.protocol import predictions
    assert set(arm["predictions"]) == {"valid", "test"}
    test_rows = predictions.rows_of(arm, "test")
    assert len(test_rows) == 6 * sum(1 for r in ds if r["split"] == "test")
    assert set(test_rows[0]) == {"question_id", "person_id", "person", "attribute", "prediction", "gold", "correct"}
    assert sum(r["correct"] for r in test_rows) / len(test_rows) == pytest.approx(arm["metrics"]["test_em"])
    assert predictions.em_by_attribute(test_rows) == pytest.approx(arm["metrics"]["test_em_per_attribute"])
    # the base model is cached: a second arm reuses it instead of training again
    base_dirs = list((tmp_path / "results" / "toy" / "cache").glob("base-*"))
    assert len(base_dirs) == 1
    mtime = (base_dirs[0] / "model.safetensors").stat().st_mtime
    experiment.run_arm("toy", tiny_cfg, ds, tok, arm="baseline", seed=1, log=lambda *a: None)
    assert (base_dirs[0] / "model.safetensors").stat().st_mtime == mtime
    assert len(records.load_run_records("toy", kind="base")) == 1


def test_augmented_cpt_documents_keep_every_fact(tiny_cfg):
    ds, _, _ = experiment.prepare_data("toy", tiny_cfg)
    new = ds.filter(lambda r: r["population"] == "new")
    docs = experiment.cpt_documents(new, {"augmentation": {"k": 3}}, seed=0)
    assert len(docs) == 20 * 4
    for i, row in enumerate(new):
        group = docs[4 * i: 4 * i + 4]
        assert group[0] == row["bios"][0] and len(set(group)) == 4
        for doc in group:
            assert all(row[a] in doc for a in bios.ATTRIBUTES) and row["name"] in doc
    assert docs == experiment.cpt_documents(new, {"augmentation": {"k": 3}}, seed=0)
    assert docs != experiment.cpt_documents(new, {"augmentation": {"k": 3}}, seed=1)
    two = experiment.cpt_documents(new, {"paraphrases": 2, "augmentation": {"k": 1, "families": ["bullet_list"]}}, seed=0)
    assert len(two) == 20 * 4 and all(d.startswith(("- ", "* ", "+ ", "> ")) for d in two[1::2])


def test_augmented_it_examples_keep_answers(tiny_cfg):
    ds, tok, _ = experiment.prepare_data("toy", tiny_cfg)
    plain = experiment.it_examples(ds, "train", {}, seed=0)
    aug = experiment.it_examples(ds, "train", {"augmentation": {"k": 2}}, seed=0)
    assert len(aug) == 3 * len(plain)
    for i, ex in enumerate(plain):
        assert all(a["answer"] == ex["answer"] for a in aug[3 * i: 3 * i + 3])
        assert all(ex["question"].rstrip("?") .split()[-1] in a.get("prompt", a["question"]) for a in aug[3 * i: 3 * i + 3])
    from kl_utils.data.dataset import encode_qa
    enc = encode_qa(aug, tok)
    answers = [[t for t, l in zip(e["input_ids"], e["labels"]) if l != -100] for e in enc]
    assert answers[0] == answers[1] == answers[2]


def test_sam_arm_runs_in_the_pipeline_with_accumulation_and_clipping(tiny_cfg):
    """optimizer: sam (rho, adaptive from the config) for CPT and IT, with grad accumulation and clipping."""
    tiny_cfg["arms"] = {"sam": {"cpt": {"optimizer": "sam", "rho": 0.05, "adaptive": False, "grad_accum": 2},
                                "it": {"optimizer": "sam", "rho": 0.05, "adaptive": True}}}
    ds, tok, _ = experiment.prepare_data("toy", tiny_cfg)
    out = experiment.run_arm("toy", tiny_cfg, ds, tok, arm="sam", seed=0, log=lambda *a: None)
    rec = next(r for r in records.load_run_records("toy", kind="arm") if r["run_id"] == out["run_id"])
    assert rec["config"]["cpt"]["optimizer"] == "sam" and rec["config"]["it"]["adaptive"] is True
    assert all(l == l for l in rec["history"]["cpt"]["loss"])  # no NaN
    assert rec["optimizer_steps"]["cpt"] == 2  # 20 docs, batch 16 split into 2 micro-batches of 8


def test_bf16_training_runs(tiny_cfg):
    from kl_utils.data import dataset as data
    from kl_utils.training import train
    from kl_utils.training.model import build_model
    ds, tok, _ = experiment.prepare_data("toy", tiny_cfg)
    model = build_model(tiny_cfg["model"], tok, seed=0)
    ex = data.encode_documents(data.documents(ds, split="test"), tok)
    hist = train.train(model, ex, {**tiny_cfg["cpt"], "max_steps": 2, "optimizer": "sam", "mixed_precision": "bf16"}, seed=0,
                       pad_id=tok.pad_token_id)
    assert len(hist["loss"]) == 2 and all(l == l for l in hist["loss"])


def test_base_seed_draws_another_base_model(tiny_cfg, monkeypatch):
    """base.seed changes the base model's initialisation and batch order (and its cache key);
    without it the data seed is used and the key is what it was before the key existed."""
    ds, tok, _ = experiment.prepare_data("toy", tiny_cfg)
    assert experiment.base_spec(tiny_cfg)["base"] == tiny_cfg["base"]
    seen = []

    class Stop(Exception):
        pass

    def fake_train(model, examples, cfg, *, seed, **kw):
        seen.append(seed)
        raise Stop
    monkeypatch.setattr(experiment, "train", fake_train)
    for base_seed in (None, 7):
        cfg = tiny_cfg if base_seed is None else {**tiny_cfg, "base": {**tiny_cfg["base"], "seed": base_seed}}
        with pytest.raises(Stop):
            experiment.base_model("toy", cfg, ds, tok, log=lambda *a: None)
    assert seen == [tiny_cfg["data"]["seed"], 7]
    seeded = {**tiny_cfg, "base": {**tiny_cfg["base"], "seed": 7}}
    assert experiment.config_hash(experiment.base_spec(seeded)) != experiment.config_hash(experiment.base_spec(tiny_cfg))

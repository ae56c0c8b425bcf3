"""The study's pipeline, stage by stage, with caching and run records:

    data (people + tokenizer)  ->  base model (stage 0, cached by config hash)
      ->  CPT on the new people's documents  ->  IT on the train half's QA  ->  exact match

Notebooks call these functions; each finished run writes results/<profile>/runs/<run_id>.json.
"""
from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from kl_utils import bios, data, evaluate, records
from kl_utils.config import config_hash
from kl_utils.model import build_model, n_parameters
from kl_utils.paths import cache_dir, data_dir
from kl_utils.tokenizer import build_word_tokenizer, load_tokenizer
from kl_utils.train import get_accelerator, set_seed, train


def vocabulary_texts() -> list[str]:
    """Every word the synthetic data can contain: value pools, templates, questions, QA format.
    The vocabulary therefore does not depend on which people were sampled."""
    fields = bios.load_fields()
    texts = [v for key in ("first_name", "middle_name", "last_name", "city", "university", "major") for v in fields[key]]
    texts += [v for pair in fields["company"] for v in pair]
    texts += [t for pool in bios.TEMPLATES.values() for t in pool] + list(bios.QUESTIONS.values())
    texts += list(bios.MONTHS) + [str(i) for i in range(1, 32)] + [str(y) for y in range(1900, 2100)]
    texts += [data.QA_PROMPT, "She He her his"]
    return texts


def prepare_data(profile: str, cfg: dict, force: bool = False):
    """Build (or reuse) the people dataset and the tokenizer of a profile. Returns (ds, tokenizer, path)."""
    key = config_hash(cfg["data"])
    root = data_dir(profile) / f"people-{key}"
    if force or not (root / "people").exists() or not (root / "tokenizer").exists():
        ds = data.build_people(cfg["data"])
        tok = make_tokenizer(cfg)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tokenizer-"))
        tok.save_pretrained(str(tmp))
        shutil.rmtree(root / "tokenizer", ignore_errors=True)
        tmp.rename(root / "tokenizer")
        data.save_dataset(ds, root / "people")
    ds = data.load_people(root / "people")
    data.check_disjoint(ds)
    return ds, load_tokenizer(root / "tokenizer"), root


def make_tokenizer(cfg: dict):
    """The profile's tokenizer: word-level over the synthetic vocabulary (miniature profiles).
    Hook for pretrained models (paper profile): their own tokenizer."""
    return build_word_tokenizer(vocabulary_texts())


def initial_model(profile: str, cfg: dict, ds, tok, seed: int, log=print):
    """The model CPT starts from, and the record of where it came from (None when from scratch).
    Miniature: a copy of the cached base model, or a random init when base is disabled.
    Hook for pretrained models (paper profile)."""
    if cfg["base"].get("enabled", True):
        model, base_record = base_model(profile, cfg, ds, tok, log=log)
        return copy.deepcopy(model), base_record
    return build_model(cfg["model"], tok, seed=seed), None


def split_summary(ds) -> dict:
    out = {}
    for row in ds:
        out[row["split"]] = out.get(row["split"], 0) + 1
    return out


def _history_summary(history: dict, every: int = 1) -> dict:
    return {"step": history["step"][::every], "loss": [round(x, 5) for x in history["loss"][::every]],
            "epochs": history["epochs"]}


def _eval(model, tok, ds, split, cfg) -> dict:
    res = evaluate.evaluate_qa(model, tok, data.qa_examples(ds, split), batch_size=cfg["eval"]["batch_size"],
                               max_new_tokens=cfg["eval"]["max_new_tokens"])
    res.pop("predictions")
    return res


def base_model(profile: str, cfg: dict, ds, tok, log=print):
    """Stage 0: a small model pre-trained on the *base* population (several paraphrases each, plus
    the QA of a fraction of them mixed in), standing in for a pretrained LLM's ability to store
    and extract knowledge. Cached by the hash of everything it depends on; a run record is
    written when it is trained. Returns (model, record)."""
    spec = {"data": cfg["data"], "model": cfg["model"], "base": cfg["base"]}
    key = config_hash(spec)
    path = cache_dir(profile) / f"base-{key}"
    run_id = f"base-{key}"
    if (path / "model.safetensors").exists() and (path / "record.json").exists():
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(str(path))
        return model, json.loads((path / "record.json").read_text())
    t0 = time.time()
    seed = cfg["data"]["seed"]
    base_people = ds.filter(lambda r: r["split"] == "base")
    n_qa = int(round(cfg["base"]["qa_frac"] * len(base_people)))
    qa_people, heldout_people = base_people.select(range(n_qa)), base_people.select(range(n_qa, len(base_people)))
    docs = data.documents(base_people, n_paraphrases=cfg["data"]["base_paraphrases"])
    qa = [dict(x) for row in qa_people for x in row["qa"]]
    examples = data.encode_documents(docs, tok) + data.encode_qa(qa, tok)
    model = build_model(cfg["model"], tok, seed=seed)
    log(f"base model: {n_parameters(model):,} parameters; {len(docs)} documents + {len(qa)} QA pairs "
        f"of {len(base_people)} base people, {cfg['base']['epochs']} epochs")
    history = train(model, examples, cfg["base"], seed=seed, pad_id=tok.pad_token_id, desc="base pre-training")
    heldout_qa = [dict(x) for row in heldout_people for x in row["qa"]]
    res = evaluate.evaluate_qa(model, tok, heldout_qa, batch_size=cfg["eval"]["batch_size"],
                               max_new_tokens=cfg["eval"]["max_new_tokens"])
    res.pop("predictions")
    metrics = {"base_heldout_qa_em": res["em"], "base_heldout_qa_em_per_attribute": res["em_per_attribute"],
               "n_parameters": n_parameters(model), "final_loss": history["loss"][-1]}
    record = {"run_id": run_id, "kind": "base", "config": spec, "seed": seed, "metrics": metrics,
              "history": _history_summary(history, every=max(1, len(history["step"]) // 200))}
    # Save to a temporary folder and rename: an interrupted run leaves no half-written cache.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".base-{key}-"))
    model.save_pretrained(str(tmp))
    (tmp / "record.json").write_text(json.dumps(record))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    records.write_run_record(profile, run_id, kind="base", config=spec, seed=seed, metrics=metrics,
                             wall_time_s=time.time() - t0, extra={"history": record["history"]})
    log(f"base model: held-out base QA EM {res['em']:.3f} ({time.time() - t0:.0f} s)")
    return model, record


def _aug_seed(seed: int, *keys: int) -> int:
    """A distinct, reproducible augmentation seed per (run seed, person, document)."""
    out = seed
    for k in keys:
        out = out * 1_000_003 + k
    return out


def protected_strings(row: dict) -> list[str]:
    """What augmentation must never touch in a row's documents: a person's name and attribute
    values (biographies), or the answers of its QA pairs (any document dataset)."""
    if all(a in row for a in bios.ATTRIBUTES):
        return [row["name"]] + [row[a] for a in bios.ATTRIBUTES]
    return [qa["answer"] for qa in row["qa"]]


def cpt_documents(people, cpt_cfg: dict, seed: int) -> list[str]:
    """CPT documents of the given people: `paraphrases` biographies each (default 1), plus, when
    `augmentation: {k, families}` is set, k formatted copies of each document. The facts (and the
    name) are protected, so every answer stays verbatim in every copy (kl_utils.augment)."""
    from kl_utils import augment
    aug = cpt_cfg.get("augmentation") or {}
    k = aug.get("k", 0)
    docs = []
    for row in people:
        protect = protected_strings(row)
        for j, doc in enumerate(row["bios"][:cpt_cfg.get("paraphrases", 1)]):
            docs.append(doc)
            if k:
                docs += augment.format_variants(doc, k, _aug_seed(seed, row["person_id"], j),
                                                families=aug.get("families"), protect=protect)
    return docs


def it_examples(people_ds, split, it_cfg: dict, seed: int) -> list[dict]:
    """IT QA pairs of a split, plus k formatted versions of each question when `augmentation` is
    set (the answer string is never touched)."""
    from kl_utils import augment
    aug = it_cfg.get("augmentation") or {}
    k = aug.get("k", 0)
    out = []
    for i, ex in enumerate(data.qa_examples(people_ds, split)):
        out.append(ex)
        if k:
            for prompt, answer in augment.format_qa_variants(ex["question"], ex["answer"], k, _aug_seed(seed, i),
                                                             families=aug.get("families"), protect=[ex["name"]]):
                out.append(dict(ex, prompt=prompt, answer=answer))
    return out


def arm_spec(cfg: dict, arm: str, seed: int) -> tuple[dict, dict, str]:
    """(the arm's cpt/it settings, everything its result depends on, its run id)."""
    from kl_utils.config import merge
    if arm != "baseline" and arm not in cfg.get("arms", {}):
        raise ValueError(f"unknown arm {arm!r}; defined: baseline, {', '.join(cfg.get('arms', {}))}")
    arm_cfg = merge({"cpt": cfg["cpt"], "it": cfg["it"]}, cfg.get("arms", {}).get(arm, {}))
    spec = {"data": cfg["data"], "model": cfg["model"], "base": cfg["base"], "eval": cfg["eval"], **arm_cfg}
    return arm_cfg, spec, f"{arm}-s{seed}-{config_hash(spec)}"


def run_arm(profile: str, cfg: dict, ds, tok, *, arm: str, seed: int, log=print) -> dict:
    """One arm and seed of the main protocol: (base model) -> CPT on the documents of every new
    person -> IT on the QA pairs of the train split -> exact match on train / valid / test.
    Writes and returns the run record. `cfg["arms"][arm]` overrides cpt / it settings."""
    arm_cfg, spec, run_id = arm_spec(cfg, arm, seed)
    t0 = time.time()
    torch.set_num_threads(cfg.get("threads", torch.get_num_threads()))
    model, base_record = initial_model(profile, cfg, ds, tok, seed, log=log)
    new = ds.filter(lambda r: r["population"] == "new")
    docs = cpt_documents(new, arm_cfg["cpt"], seed)
    cpt_hist = train(model, data.encode_documents(docs, tok), arm_cfg["cpt"], seed=seed,
                     pad_id=tok.pad_token_id, desc=f"{arm} s{seed} CPT")
    after_cpt = {"test_em_before_it": _eval(model, tok, ds, "test", cfg)["em"]}
    it_encoded = data.encode_qa(it_examples(ds, "train", arm_cfg["it"], seed), tok)

    def after_epoch(epoch, m):
        return {"train_em": _eval(m, tok, ds, "train", cfg)["em"], "test_em": _eval(m, tok, ds, "test", cfg)["em"]}
    it_hist = train(model, it_encoded, arm_cfg["it"], seed=seed, pad_id=tok.pad_token_id,
                    desc=f"{arm} s{seed} IT", callback=after_epoch if cfg["eval"].get("per_epoch") else None)
    metrics = {**after_cpt}
    for split in ("train", "valid", "test"):
        res = _eval(model, tok, ds, split, cfg)
        metrics[f"{split}_em"] = res["em"]
        metrics[f"{split}_em_per_attribute"] = res["em_per_attribute"]
    wall = time.time() - t0
    extra = {"arm": arm, "base_run_id": base_record["run_id"] if base_record else None,
             "n_cpt_documents": len(docs), "n_it_examples": len(it_encoded),
             "optimizer_steps": {"cpt": len(cpt_hist["step"]), "it": len(it_hist["step"])},
             "history": {"cpt": _history_summary(cpt_hist), "it": _history_summary(it_hist)}}
    records.write_run_record(profile, run_id, kind="arm", config=spec, seed=seed, metrics=metrics,
                             wall_time_s=wall, extra=extra)
    log(f"{arm} seed {seed}: test EM {metrics['test_em']:.3f}, train EM {metrics['train_em']:.3f} ({wall:.0f} s)")
    return {"run_id": run_id, "metrics": metrics, **extra}

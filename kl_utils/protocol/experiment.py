"""The study's pipeline, stage by stage, with caching and run records:

    data (people + tokenizer)  ->  base model (stage 0, cached by config hash)
      ->  CPT on the new people's documents  ->  IT on the train half's QA  ->  exact match

Notebooks call these functions; each finished run writes results/<profile>/runs/<run_id>.json.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import torch

from kl_utils.core import records
from kl_utils.core.atomic import atomic_dir
from kl_utils.data import bios, dataset as data
from kl_utils.training import evaluate
from kl_utils.config.arms import ARM_KEYS, BUDGETS, ORDERS, all_arms, arm_spec, seed_config  # noqa: F401 (re-exported)
from kl_utils.config.arms import canonical_spec
from kl_utils.core.spec import config_hash
from kl_utils.training.model import build_model, n_parameters
from kl_utils.core.paths import cache_dir, data_dir
from kl_utils.training.pretrained import provenance as pretrained_provenance
from kl_utils.training.pretrained import resolve as resolve_pretrained
from kl_utils.config.schema import default
from kl_utils.data.tokenizer import build_word_tokenizer, load_tokenizer
from kl_utils.training.train import get_accelerator, set_seed, train


def vocabulary_texts(templates: str = "default") -> list[str]:
    """Every word the synthetic data can contain: value pools, templates (of the `data.templates`
    setting), questions, QA format. The vocabulary therefore does not depend on which people were sampled."""
    fields = bios.load_fields()
    texts = [v for key in ("first_name", "middle_name", "last_name", "city", "university", "major") for v in fields[key]]
    texts += [v for pair in fields["company"] for v in pair]
    texts += [t for pool in bios.template_pool(templates).values() for t in pool] + list(bios.QUESTIONS.values())
    texts += list(bios.MONTHS) + [str(i) for i in range(1, 32)] + [str(y) for y in range(1900, 2100)]
    texts += [data.QA_PROMPT, "She He her his"]
    return texts


def prepare_data(profile: str, cfg: dict, force: bool = False):
    """Build (or reuse) the dataset and the tokenizer of a profile. Returns (ds, tokenizer, path).
    The dataset is the synthetic people, or, when `data.documents` names a file, folder or hub id,
    real documents with QA pairs (kl_utils.data.documents) in the same row schema."""
    from kl_utils.data import documents
    source = documents.resolve_source(cfg["data"].get("documents"))
    pretrained = cfg["model"].get("pretrained")
    # The old key (data config only) is kept for the miniature profiles, so their caches stay valid.
    key = config_hash(cfg["data"]) if not (source or pretrained) else config_hash(
        {"data": cfg["data"], "tokenizer": pretrained, "source": documents.fingerprint(source) if source else None})
    root = data_dir(profile) / f"{'documents' if source else 'people'}-{key}"
    if force or not (root / "people").exists() or not (root / "tokenizer").exists():
        if source:
            docs = documents.load_documents(source, format=cfg["data"].get("format", default("data.format")),
                                            splits=cfg["data"].get("splits"))
            ds = documents.as_people(docs, valid_frac=cfg["data"].get("valid_frac", default("data.valid_frac")))
        else:
            ds = data.build_people(cfg["data"])
        tok = make_tokenizer(cfg)
        with atomic_dir(root / "tokenizer") as tmp:
            tok.save_pretrained(str(tmp))
        data.save_dataset(ds, root / "people")
    ds = data.load_people(root / "people")
    data.check_disjoint(ds)
    return ds, load_tokenizer(root / "tokenizer"), root


def make_tokenizer(cfg: dict):
    """The profile's tokenizer: word-level over the synthetic vocabulary (miniature profiles), or
    a pretrained model's own tokenizer (`model.pretrained`: hub id or local path)."""
    pretrained = cfg["model"].get("pretrained")
    if not pretrained:
        return build_word_tokenizer(vocabulary_texts(cfg["data"].get("templates", "default")))
    tok = load_tokenizer(resolve_pretrained(pretrained))
    if tok.bos_token is None:
        # The encoders prepend BOS; Qwen2 has none. Its end-of-text token is the document
        # separator it was pre-trained with, so it serves as BOS too.
        tok.bos_token = tok.eos_token
    return tok


def initial_model(profile: str, cfg: dict, ds, tok, seed: int, log=print):
    """The model CPT starts from, and the record of where it came from (None when from scratch).
    Miniature: a copy of the cached base model, or a random init when base is disabled.
    Pretrained (`model.pretrained`): the checkpoint itself, no base stage; weights in
    `model.dtype` (default float32: bf16 enters through autocast, AdamW state stays fp32)."""
    pretrained = cfg["model"].get("pretrained")
    if pretrained:
        from kl_utils.training.model import load_model
        dtype = getattr(torch, cfg["model"].get("dtype", default("model.dtype")))
        model = load_model(resolve_pretrained(pretrained), dtype=dtype)
        n_embed = model.get_input_embeddings().weight.shape[0]
        if len(tok) > n_embed:
            raise ValueError(f"{pretrained}: tokenizer has {len(tok)} tokens, the model's embedding {n_embed}")
        if cfg["model"].get("gradient_checkpointing"):
            # activations recomputed in backward: memory for time (the 4.x name is deprecated in 5.x)
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        log(f"pretrained model {pretrained}: {n_parameters(model):,} parameters")
        return model, None
    if cfg["base"].get("enabled", default("base.enabled")):
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


def _eval(model, tok, ds, split, cfg, per_question: bool = False) -> dict:
    """QA exact match on a split; with per_question, also `per_question`: one row per question
    (kl_utils.protocol.predictions.question_rows) for the run record."""
    from kl_utils.protocol import predictions
    res = evaluate.evaluate_qa(model, tok, data.qa_examples(ds, split), batch_size=cfg["eval"]["batch_size"],
                               max_new_tokens=cfg["eval"]["max_new_tokens"], decoder=cfg["eval"].get("decoder", "kv"))
    res["hits"] = [int(c) for c in res["correct"]]  # per question, in data.qa_examples order
    if per_question:
        res["per_question"] = predictions.question_rows(ds, split, res)
    for key in ("predictions", "golds", "correct"):
        res.pop(key)
    return res


def _probe_after_cpt(model, tok, ds, cfg) -> dict:
    """The C1 probe on the model after CPT (the first analysis.probe_people test people): per fact,
    predicted in the training biography / in a held-out-template paraphrase; QA hits are added after IT."""
    from kl_utils.training import fact_probe as probe
    test = ds.filter(lambda r: r["split"] == "test")
    test = test.select(range(min(cfg["analysis"]["probe_people"], len(test))))
    res = probe.probe(model, tok, test, cfg["data"]["n_train_templates"], cfg["analysis"].get("probe_batch_size", 64))
    flags = probe.fact_flags(res["facts"], "test")
    keys = [[r["person_id"], q["attribute"]] for r in test for q in r["qa"]]
    return {"keys": keys, "summary": {**probe.summarize(res["facts"]), **res["tokens"]},
            "facts": {"heldout": [flags[tuple(k)]["heldout"] for k in keys], "train": [flags[tuple(k)]["train"] for k in keys]}}


def _hits_of(keys: list, ds, hits: list[int]) -> list[int]:
    """The QA hits (in data.qa_examples order of the test split) of the (person_id, attribute) keys."""
    pid = {r["name"]: r["person_id"] for r in ds if r["split"] == "test"}
    by_key = {(pid[ex["name"]], ex["attribute"]): h for ex, h in zip(data.qa_examples(ds, "test"), hits)}
    return [by_key[tuple(k)] for k in keys]


# The data settings the base model depends on. People are generated base population first, from
# one seeded stream, so the base people do not change with n_new or the splits of the new ones
# (tests/test_data.py checks that): every profile variant with the same base shares its cache.
BASE_DATA_KEYS = ("seed", "n_base", "n_train_templates", "base_paraphrases", "permute_paraphrases",
                  "name_every_sentence")


# Data settings the base model depends on only when a profile sets them (absent, they keep the
# hashes of the base models made before the key existed).
OPTIONAL_BASE_DATA_KEYS = ("templates",)


def base_spec(cfg: dict) -> dict:
    data_keys = BASE_DATA_KEYS + tuple(k for k in OPTIONAL_BASE_DATA_KEYS if k in cfg["data"])
    return canonical_spec({"data": {k: cfg["data"].get(k) for k in data_keys}, "model": cfg["model"],
                           "base": cfg["base"]})


def base_record(profile: str, cfg: dict, ds=None, tok=None, log=print) -> dict:
    """The base model's run record: read back when it exists (a fresh clone has it, not the cached
    model); otherwise the base model is trained (needs ds, tok) and its record returned."""
    rec = records.existing_record(profile, f"base-{config_hash(base_spec(cfg))}", kind="base")
    if rec is not None:
        return rec
    if ds is None:
        ds, tok, _ = prepare_data(profile, cfg)
    return base_model(profile, cfg, ds, tok, log=log)[1]


def base_model(profile: str, cfg: dict, ds, tok, log=print):
    """Stage 0: a small model pre-trained on the *base* population (several paraphrases each, plus
    the QA of a fraction of them mixed in), standing in for a pretrained LLM's ability to store
    and extract knowledge. Cached by the hash of everything it depends on; a run record is
    written when it is trained. Returns (model, record)."""
    spec = base_spec(cfg)
    key = config_hash(spec)
    path = cache_dir(profile) / f"base-{key}"
    run_id = f"base-{key}"
    if (path / "model.safetensors").exists() and (path / "record.json").exists():
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(str(path))
        return model, json.loads((path / "record.json").read_text())
    t0 = time.time()
    # base.seed draws another base model on the same data (initialisation and batch order); by
    # default the data seed, as before the key existed (so old base models keep their hash).
    seed = cfg["base"].get("seed", cfg["data"]["seed"])
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
                               max_new_tokens=cfg["eval"]["max_new_tokens"], decoder=cfg["eval"].get("decoder", "kv"))
    res.pop("predictions")
    metrics = {"base_heldout_qa_em": res["em"], "base_heldout_qa_em_per_attribute": res["em_per_attribute"],
               "n_parameters": n_parameters(model), "final_loss": history["loss"][-1]}
    record = {"run_id": run_id, "kind": "base", "config": spec, "seed": seed, "metrics": metrics,
              "history": _history_summary(history, every=max(1, len(history["step"]) // 200))}
    with atomic_dir(path) as tmp:  # an interrupted run leaves no half-written cache
        model.save_pretrained(str(tmp))
        (tmp / "record.json").write_text(json.dumps(record))
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
    `augmentation: {k, families, method}` is set, k augmented copies of each document. method
    "format" (default): formatting variants with the facts (and the name) protected, so every
    answer stays verbatim in every copy (kl_utils.augment.formatting); "eda": blind EDA-style word edits
    (kl_utils.augment.rewriting, the rewriting baseline of C3 / C7, which can damage facts)."""
    from kl_utils.augment.formatting import format_variants
    from kl_utils.augment.rewriting import eda_variants
    aug = cpt_cfg.get("augmentation") or {}
    k, method = aug.get("k", 0), aug.get("method", "format")
    if method not in ("format", "eda"):
        raise ValueError(f"unknown augmentation method {method!r}; valid: format, eda")
    docs = []
    for row in people:
        protect = protected_strings(row)
        for j, doc in enumerate(row["bios"][:cpt_cfg.get("paraphrases", 1)]):
            docs.append(doc)
            if k and method == "format":
                docs += format_variants(doc, k, _aug_seed(seed, row["person_id"], j),
                                        families=aug.get("families"), protect=protect)
            elif k:
                docs += eda_variants(doc, k, _aug_seed(seed, row["person_id"], j))
    return docs


def it_examples(people_ds, split, it_cfg: dict, seed: int) -> list[dict]:
    """IT QA pairs of a split, plus k formatted versions of each question when `augmentation` is
    set (the answer string is never touched)."""
    from kl_utils.augment.formatting import format_qa_variants
    aug = it_cfg.get("augmentation") or {}
    k = aug.get("k", 0)
    out = []
    for i, ex in enumerate(data.qa_examples(people_ds, split)):
        out.append(ex)
        if k:
            for prompt, answer in format_qa_variants(ex["question"], ex["answer"], k, _aug_seed(seed, i),
                                                     families=aug.get("families"), protect=[ex["name"]]):
                out.append(dict(ex, prompt=prompt, answer=answer))
    return out


def baseline_steps(cfg: dict, ds) -> dict:
    """Optimizer steps of the baseline's CPT and IT: the budget of step-matched arms."""
    from kl_utils.training.train import total_steps
    n_docs = sum(1 for r in ds if r["population"] == "new") * cfg["cpt"].get("paraphrases", 1)
    n_qa = len(data.qa_examples(ds, "train"))
    return {"cpt": total_steps(n_docs, cfg["cpt"]), "it": total_steps(n_qa, cfg["it"])}


def checkpoint_dir(profile: str, run_id: str) -> Path:
    """Where a run keeps its resumable stage checkpoints and, once finished, its models:
    model/ (after IT) and after_cpt/ (the CPT minimum, for the sharpness analysis)."""
    from kl_utils.core.paths import results_dir
    return results_dir(profile) / "ckpt" / run_id


# The splits whose per-question predictions a run record keeps (`predictions`: {split: [row, ...]}).
PREDICTION_SPLITS = ("valid", "test")


def run_arm(profile: str, cfg: dict, ds, tok, *, arm: str, seed: int, log=print) -> dict:
    """One arm and seed of the main protocol: (base model) -> CPT on the documents of every new
    person -> IT on the QA pairs of the train split -> exact match on train / valid / test.
    Writes and returns the run record. Resumable: each stage checkpoints to
    checkpoint_dir(profile, run_id) and a rerun after a crash continues from there."""
    arm_cfg, spec, run_id = arm_spec(cfg, arm, seed)
    if cfg["data"].get("draw_per_seed"):  # this seed's own people (the caller's ds is the profile's draw)
        cfg = seed_config(cfg, seed)
        ds, tok, _ = prepare_data(profile, cfg)
    cpt_cfg, it_cfg = dict(arm_cfg["cpt"]), dict(arm_cfg["it"])
    if arm_cfg["budget"] == "steps":
        steps = baseline_steps(cfg, ds)
        cpt_cfg["max_steps"], it_cfg["max_steps"] = steps["cpt"], steps["it"]
    ckpt = checkpoint_dir(profile, run_id)
    every = cfg.get("checkpoint_every", default("checkpoint_every"))
    timing = {}
    # stages continued from a checkpoint of an interrupted run: their timing covers only the rest
    resumed = sorted(f.stem for f in ckpt.glob("*.pt")) if ckpt.exists() else []
    t0, cpu0 = time.time(), time.process_time()
    torch.set_num_threads(cfg.get("threads", torch.get_num_threads()))
    model, base_record = initial_model(profile, cfg, ds, tok, seed, log=log)
    timing["base_s"] = time.time() - t0
    new = ds.filter(lambda r: r["population"] == "new")
    docs = cpt_documents(new, cpt_cfg, seed)
    it_raw = it_examples(ds, "train", it_cfg, seed)
    it_encoded = data.encode_qa(it_raw, tok)
    hist = {}
    t, c = time.time(), time.process_time()
    if arm_cfg["order"] == "pit":
        train_people = new.filter(lambda r: r["split"] == "train")
        pit_docs = data.encode_documents(cpt_documents(train_people, cpt_cfg, seed), tok)
        hist["pit"] = train(model, pit_docs + it_encoded, it_cfg, seed=seed, pad_id=tok.pad_token_id,
                            desc=f"{arm} s{seed} PIT", checkpoint=ckpt / "pit.pt", checkpoint_every=every)
    hist["cpt"] = train(model, data.encode_documents(docs, tok), cpt_cfg, seed=seed, pad_id=tok.pad_token_id,
                        desc=f"{arm} s{seed} CPT", checkpoint=ckpt / "cpt.pt", checkpoint_every=every)
    timing["cpt_s"] = time.time() - t
    # CPU seconds of each stage: what plan times runs by (the wall times grow while a run is paused)
    timing_cpu = {"cpt_s": time.process_time() - c}
    t = time.time()
    metrics = {"test_em_before_it": _eval(model, tok, ds, "test", cfg)["em"]}
    cpt_probe = _probe_after_cpt(model, tok, ds, cfg) if cfg.get("analysis", {}).get("probe_after_cpt") else None
    timing["eval_s"] = time.time() - t
    after_cpt = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def after_epoch(epoch, m):
        return {"train_em": _eval(m, tok, ds, "train", cfg)["em"], "test_em": _eval(m, tok, ds, "test", cfg)["em"]}
    t, c = time.time(), time.process_time()
    if arm_cfg["order"] == "standard":
        hist["it"] = train(model, it_encoded, it_cfg, seed=seed, pad_id=tok.pad_token_id, desc=f"{arm} s{seed} IT",
                           callback=after_epoch if cfg["eval"].get("per_epoch") else None,
                           checkpoint=ckpt / "it.pt", checkpoint_every=every)
    timing["it_s"] = time.time() - t
    timing_cpu["it_s"] = time.process_time() - c
    t = time.time()
    per_question = {}
    for split in ("train", "valid", "test"):
        res = _eval(model, tok, ds, split, cfg, per_question=split in PREDICTION_SPLITS)
        if split in PREDICTION_SPLITS:
            per_question[split] = res.pop("per_question")
        metrics[f"{split}_em"] = res["em"]
        metrics[f"{split}_f1"] = res["f1"]
        metrics[f"{split}_em_per_attribute"] = res["em_per_attribute"]
        if split == "test" and cpt_probe is not None:
            cpt_probe["facts"]["qa_em"] = _hits_of(cpt_probe["keys"], ds, res["hits"])
            metrics.update({f"probe_{k}": v for k, v in cpt_probe["summary"].items()})
    timing["eval_s"] += time.time() - t
    main_process = get_accelerator().is_main_process  # under DDP one process writes models and record
    if main_process and cfg.get("keep_models", default("keep_models")):
        _save_models(model, after_cpt, ckpt)
    elif main_process:  # only the record stays (a pretrained model's checkpoints are ~1 GB a run)
        shutil.rmtree(ckpt, ignore_errors=True)
    wall = time.time() - t0
    extra = {"arm": arm, "base_run_id": base_record["run_id"] if base_record else None,
             "n_cpt_documents": len(docs), "n_it_examples": len(it_encoded),
             "optimizer_steps": {k: len(h["step"]) for k, h in hist.items()},
             "timing": {k: round(v, 2) for k, v in timing.items()},
             "timing_cpu": {k: round(v, 2) for k, v in timing_cpu.items()},
             # CPU seconds of this process (all its threads): unlike the wall times, not inflated while the
             # run waits (paused, or sharing a core); about the wall time for a 1-thread run on an idle core
             "cpu_time_s": round(time.process_time() - cpu0, 1),
             "checkpoint": str(ckpt.relative_to(ckpt.parents[1])),
             "history": {k: _history_summary(h) for k, h in hist.items()},
             "predictions": per_question}
    if resumed:
        extra["resumed_stages"] = resumed
    if pretrained_provenance(cfg):
        extra["pretrained"] = pretrained_provenance(cfg)
    if cpt_probe is not None:  # C1 per fact: {keys, heldout, train, qa_em} of the probed test people
        extra["final_facts"] = {"keys": cpt_probe["keys"], **cpt_probe["facts"]}
    if main_process:
        records.write_run_record(profile, run_id, kind="arm", config=spec, seed=seed, metrics=metrics,
                                 wall_time_s=wall, extra=extra)
    log(f"{arm} seed {seed}: test EM {metrics['test_em']:.3f}, train EM {metrics['train_em']:.3f} ({wall:.0f} s)")
    return {"run_id": run_id, "metrics": metrics, **extra}


def _save_models(model, after_cpt_state: dict, ckpt: Path) -> None:
    """Final models of a run (safetensors via save_pretrained, written to a temp dir and renamed);
    the resumable stage checkpoints are removed once the models are safe."""
    with atomic_dir(ckpt / "model") as tmp_model, atomic_dir(ckpt / "after_cpt") as tmp_after_cpt:
        model.save_pretrained(str(tmp_model))
        final = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(after_cpt_state)
        model.save_pretrained(str(tmp_after_cpt))
        model.load_state_dict(final)
    for stage in ckpt.glob("*.pt"):
        stage.unlink()

"""The study's data: people with biographies and QA pairs as a `datasets.Dataset`, saved next
to the tokenizer; and the encodings used for training (documents for CPT, QA pairs for IT)."""
from __future__ import annotations

import random
from pathlib import Path

import datasets

from kl_utils.core.atomic import atomic_dir
from kl_utils.data import bios
from kl_utils.data.documents import load_documents  # noqa: F401 (re-exported: the study's data, either kind)

# Chat-free QA format, shared by instruction tuning and evaluation. The answer ends at EOS;
# generation also stops at a newline (the same stopping rule for every arm).
QA_PROMPT = "Question: {question}\nAnswer:"
QA_ANSWER = " {answer}"


def build_people(cfg: dict) -> datasets.Dataset:
    """The whole population of a profile, from its `data` config. Byte-identical for one seed.

    population "base": a separate set of people for pre-training the base model (stage 0);
    population "new": the new knowledge, one biography each for CPT, split into train (its QA
    is used for instruction tuning), valid (tuning) and test (held-out QA, the primary metric).
    """
    seed = cfg["seed"]
    train_pool, heldout_pool = bios.split_templates(cfg["n_train_templates"], cfg.get("templates", "default"))
    n_base, n_new = cfg.get("n_base", 0), cfg["n_new"]
    people = bios.generate_people(n_base + n_new, seed)
    splits = ["base"] * n_base + bios.assign_splits(n_new, cfg["splits"], seed + 1)
    rng = random.Random(seed + 2)
    rows = []
    for i, (person, split) in enumerate(zip(people, splits)):
        # Paraphrases: independent renderings with training-pool templates; the first one is the
        # person's single CPT document. Base people see all of them (with permuted order).
        n_para = cfg["base_paraphrases"] if split == "base" else cfg["new_paraphrases"]
        docs, spans = [], []
        for j in range(n_para):
            text, span = bios.render_biography(
                person, rng, train_pool, permute=(j > 0 and cfg.get("permute_paraphrases", True)),
                name_every_sentence=cfg.get("name_every_sentence", False))
            docs.append(text)
            spans.append([list(span[a]) for a in bios.ATTRIBUTES])
        # The C1 probe: each fact in a held-out-template sentence with the full name.
        heldout = [bios.render_biography({**person}, rng, {a: heldout_pool[a] for a in bios.ATTRIBUTES},
                                         name_every_sentence=True)[0]]
        rows.append({
            "person_id": i, "population": "base" if split == "base" else "new", "split": split,
            **{k: person[k] for k in ("name", "gender", *bios.ATTRIBUTES)},
            "bios": docs, "fact_spans": spans, "heldout_bio": heldout[0],
            "qa": bios.qa_pairs(person),
        })
    ds = datasets.Dataset.from_list(rows)
    check_disjoint(ds)
    return ds


def check_disjoint(ds: datasets.Dataset) -> None:
    """Train / valid / test / base people must not share names or questions (raises otherwise)."""
    split_of_name, split_of_question = {}, {}
    for row in ds:
        name, split = row["name"], row["split"]
        if name in split_of_name:
            where = "twice in split" if split_of_name[name] == split else f"in splits {split_of_name[name]!r} and"
            raise ValueError(f"person {name!r} appears {where} {split!r}")
        split_of_name[name] = split
        for qa in row["qa"]:
            q = qa["question"]
            if split_of_question.setdefault(q, split) != split:
                raise ValueError(f"question {q!r} is in splits {split_of_question[q]!r} and {split!r}")


def save_dataset(ds: datasets.Dataset, path: Path) -> None:
    """Atomic save: written to a temporary folder and renamed, so a crash leaves no partial data."""
    with atomic_dir(path) as tmp:
        ds.save_to_disk(str(tmp))
        ds.to_json(str(tmp / "people.jsonl"), lines=True)


def load_people(path: Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(path))


def documents(ds: datasets.Dataset, split=None, population=None, n_paraphrases: int = 1) -> list[str]:
    """CPT documents: the first n_paraphrases biographies of each selected person."""
    out = []
    for row in ds:
        if (split is None or row["split"] in _as_set(split)) and (population is None or row["population"] == population):
            out.extend(row["bios"][:n_paraphrases])
    return out


def qa_examples(ds: datasets.Dataset, split) -> list[dict]:
    return [dict(qa, name=row["name"], split=row["split"])
            for row in ds if row["split"] in _as_set(split) for qa in row["qa"]]


def _as_set(x):
    return {x} if isinstance(x, str) else set(x)


def encode_documents(texts: list[str], tokenizer) -> list[dict]:
    """Next-token prediction on every token of the document (BOS + text + EOS)."""
    out = []
    for text in texts:
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append({"input_ids": ids, "labels": list(ids)})
    return out


def encode_qa(examples: list[dict], tokenizer) -> list[dict]:
    """Instruction tuning: loss on the answer tokens (and the closing EOS) only."""
    out = []
    for ex in examples:
        # an augmented example carries its own (formatted) prompt; the answer is never formatted
        text = ex.get("prompt") or QA_PROMPT.format(**ex)
        prompt = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        answer = tokenizer(QA_ANSWER.format(**ex), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return out


def encode_prompts(examples: list[dict], tokenizer) -> list[list[int]]:
    return [[tokenizer.bos_token_id] + tokenizer(QA_PROMPT.format(**ex), add_special_tokens=False)["input_ids"]
            for ex in examples]
def statistics(ds: datasets.Dataset, tokenizer) -> dict:
    """What notebook 01 shows of a profile's data: people per split, vocabulary, distinct values per
    attribute, token lengths of biographies, held-out paraphrases and QA pairs (with histograms)."""
    import collections
    lengths = collections.defaultdict(list)
    for r in ds:
        kind = "base" if r["split"] == "base" else "new"
        lengths[f"{kind} biography"] += [len(tokenizer(b)["input_ids"]) for b in r["bios"][:1]]
        lengths["held-out paraphrase"].append(len(tokenizer(r["heldout_bio"])["input_ids"]))
        for qa in r["qa"]:
            lengths["QA pair"].append(len(encode_qa([qa], tokenizer)[0]["input_ids"]))
    splits = collections.Counter(ds["split"])
    return {"people_per_split": {k: splits[k] for k in ("base", "train", "valid", "test") if k in splits},
            "vocab_size": len(tokenizer), "distinct_values": {a: len(set(ds[a])) for a in bios.ATTRIBUTES},
            "token_lengths": {k: {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "n": len(v)} for k, v in lengths.items()},
            "length_histograms": {k: dict(collections.Counter(v)) for k, v in lengths.items()}}

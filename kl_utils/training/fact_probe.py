"""The C1 probe's measurement of a model (kl_utils.analysis.probe analyses it): fact tokens as labels
of an implicit supervised task.

For every person and attribute, the model's loss / probability / greedy accuracy on the tokens of
the fact value given
  (a) `train`:   the training biography (the person's first, single CPT document),
  (b) `heldout`: the same fact in a biography written with held-out templates (never trained on:
                 the "test input" of the implicit supervised task),
  (c) `qa`:      the QA prompt (teacher-forced answer tokens).
"Greedy accuracy" = every fact token is the argmax given the true prefix, i.e. greedy decoding
would write the value. Also the supervised view of training: mean loss on fact tokens vs on the
other tokens, in training documents vs held-out documents (the generalization gap).
All forward passes are batched; nothing here trains.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from kl_utils.data import bios, dataset as data

CONTEXTS = ("train", "heldout", "qa")


def heldout_spans(row: dict, n_train_templates: int, templates: str = "default") -> list[list[int]]:
    """Character spans of the facts in `row["heldout_bio"]` (per attribute in bios.ATTRIBUTES order).

    The held-out biography is rendered in ATTRIBUTES order, every sentence starting with the full
    name, so each sentence is exactly one held-out template with its value: we match the template
    head, which makes the span exact (a plain `find` could hit the value inside a name)."""
    text, cursor, out = row["heldout_bio"], 0, []
    _, pool = bios.split_templates(n_train_templates, templates)
    pos = "her" if row["gender"] == "female" else "his"
    for attr in bios.ATTRIBUTES:
        value = row[attr]
        for template in pool[attr]:
            head, tail = template.split("{value}")
            head, tail = head.format(subj=row["name"], pos=pos), tail.format(subj=row["name"], pos=pos)
            start = cursor + len(head)
            if text.startswith(head, cursor) and text.startswith(value + tail, start):
                out.append([start, start + len(value)])
                cursor = start + len(value) + len(tail) + 1  # + the space between sentences
                break
        else:
            raise ValueError(f"cannot locate {attr!r} in held-out biography of {row['name']!r}")
    return out


def encode_with_spans(tok, text: str, spans) -> tuple[list[int], list[list[int]]]:
    """BOS + tokens + EOS, and for each char span the indices (into that list) of its tokens."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [tok.bos_token_id] + enc["input_ids"] + [tok.eos_token_id]
    # A byte-level BPE token carries the space before a word (" Paris" spans the space too): a token
    # is a fact token when its text without leading whitespace lies inside the span.
    starts = [a + len(text[a:b]) - len(text[a:b].lstrip()) for a, b in enc["offset_mapping"]]
    positions = [[i + 1 for i, ((_, b), a) in enumerate(zip(enc["offset_mapping"], starts)) if a >= s and b <= e and b > a]
                 for s, e in spans]
    return ids, positions


@torch.no_grad()
def token_scores(model, seqs: list[list[int]], pad_id: int, batch_size: int = 128):
    """For each sequence: (nll, correct) per position 1..len-1 (of predicting token t from < t)."""
    model.eval()
    device = next(model.parameters()).device
    out = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # little padding per batch
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, :len(seqs[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        target = ids[:, 1:].to(device)
        nll = -torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]
        correct = logits.argmax(-1) == target
        for r, i in enumerate(idx):
            n = len(seqs[i]) - 1
            out[i] = (nll[r, :n].cpu(), correct[r, :n].cpu())
    return out


def probe(model, tok, people, n_train_templates: int, batch_size: int = 128, templates: str = "default") -> dict:
    """Per-fact scores in the three contexts, and token-level losses (fact vs other tokens) in
    training and held-out documents. Returns {"facts": [row...], "tokens": {...}}; a fact row has
    person_id, split, attribute, context, loss (mean NLL per fact token), logprob (sum), acc (0/1)."""
    seqs, meta = [], []  # meta: (kind, row, positions per attribute)
    for row in people:
        for kind, text, spans in (("train", row["bios"][0], row["fact_spans"][0]),
                                  ("heldout", row["heldout_bio"], heldout_spans(row, n_train_templates, templates))):
            ids, pos = encode_with_spans(tok, text, spans)
            seqs.append(ids)
            meta.append((kind, row, pos))
        for qa, enc in zip(row["qa"], data.encode_qa(row["qa"], tok)):
            answer = [i for i, lab in enumerate(enc["labels"]) if lab != -100][:-1]  # answer tokens, not EOS
            seqs.append(enc["input_ids"])
            meta.append(("qa", row, {qa["attribute"]: answer}))
    scores = token_scores(model, seqs, tok.pad_token_id, batch_size)
    facts, sums = [], defaultdict(lambda: [0.0, 0])
    for (kind, row, pos), (nll, correct) in zip(meta, scores):
        by_attr = pos if isinstance(pos, dict) else dict(zip(bios.ATTRIBUTES, pos))
        fact_mask = torch.zeros(len(nll), dtype=torch.bool)
        for attr, p in by_attr.items():
            if not p:
                raise ValueError(f"no tokens for {attr!r} of {row['name']!r} ({kind})")
            t = torch.tensor(p) - 1  # position i is predicted at score index i-1
            fact_mask[t] = True
            facts.append({"person_id": row["person_id"], "split": row["split"], "attribute": attr, "context": kind,
                          "loss": nll[t].mean().item(), "logprob": -nll[t].sum().item(),
                          "acc": int(correct[t].all())})
        if kind != "qa":  # the supervised view: fact tokens (labels) vs every other token
            for part, m in (("fact", fact_mask), ("other", ~fact_mask)):
                sums[(kind, part)][0] += nll[m].sum().item()
                sums[(kind, part)][1] += int(m.sum())
    tokens = {f"{kind}_doc_{part}_loss": s / max(n, 1) for (kind, part), (s, n) in sums.items()}
    return {"facts": facts, "tokens": tokens}


def summarize(facts: list[dict], split=None) -> dict:
    """Mean acc / loss / probability per context (optionally for one split of people)."""
    out = {}
    for ctx in CONTEXTS:
        rows = [f for f in facts if f["context"] == ctx and (split is None or f["split"] == split)]
        if rows:
            out[f"{ctx}_acc"] = float(np.mean([f["acc"] for f in rows]))
            out[f"{ctx}_loss"] = float(np.mean([f["loss"] for f in rows]))
            out[f"{ctx}_prob"] = float(np.mean([math.exp(f["logprob"]) for f in rows]))
    return out


def fact_flags(facts: list[dict], split: str = "test") -> dict[tuple, dict]:
    """{(person_id, attribute): {train: 0/1, heldout: 0/1, qa: 0/1}} for the people of a split."""
    out = defaultdict(dict)
    for f in facts:
        if f["split"] == split:
            out[(f["person_id"], f["attribute"])][f["context"]] = f["acc"]
    return dict(out)

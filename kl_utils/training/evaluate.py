"""QA evaluation: batched greedy decoding (KV cache, left padding, finished rows dropped) and exact match after
SQuAD-style normalization. Stopping rule, the same for every arm: an answer ends at EOS or at
the first newline, whichever comes first (or after max_new_tokens)."""
from __future__ import annotations

import inspect
import re
import string
from collections import defaultdict

import torch

from kl_utils.data.dataset import encode_prompts


def normalize_answer(s: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum(min(pred.count(t), ref.count(t)) for t in set(pred) & set(ref))
    if not pred or not ref:
        return float(pred == ref)
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def stop_token_ids(tokenizer) -> list[int]:
    """EOS, and the newline token when "\n" is one token (it is spelled "\n", "Ċ" or "<0x0A>"
    depending on the tokenizer, so it is looked up by encoding, not by name). BPE merges of a
    newline with other characters are caught by cutting the decoded answer at "\n"."""
    ids = [tokenizer.eos_token_id]
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(newline) == 1 and newline[0] != tokenizer.unk_token_id:
        ids.append(newline[0])
    return ids


@torch.no_grad()
def greedy_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                  stop_ids: list[int], pad_id: int) -> torch.Tensor:
    """Greedy continuations of left-padded prompts with a KV cache: (batch, max_new_tokens), pad after
    the stop token. Unlike `generate`, a row leaves the batch (and the cache) as soon as it emits a
    stop token, so a batch costs what its answers need, not max_new_tokens of its longest one;
    argmax decoding, so the tokens are those of `generate(do_sample=False)`."""
    from transformers import DynamicCache
    batch = input_ids.shape[0]
    # Left padding: a row's positions start at 0 at its first real token, as in `generate`.
    position = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    # transformers 5.x renames forward's `past_key_values` to `cache` (the old name warns)
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position,
                use_cache=True, logits_to_keep=1, **{cache_kw: cache})
    stops = torch.tensor(stop_ids, device=input_ids.device)
    result = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=input_ids.device)
    alive = torch.arange(batch, device=input_ids.device)
    mask, last = attention_mask, position[:, -1:]
    for step in range(max_new_tokens):
        token = out.logits[:, -1].argmax(-1)
        result[alive, step] = token
        going = ~torch.isin(token, stops)
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():
            keep = going.nonzero().squeeze(1)
            alive, token, mask, last = alive[keep], token[keep], mask[keep], last[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        last = last + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=last,
                    use_cache=True, logits_to_keep=1, **{cache_kw: cache})
    return result


@torch.no_grad()
def generate_answers(model, tokenizer, examples: list[dict], *, batch_size: int = 128,
                     max_new_tokens: int = 16, decoder: str = "kv") -> list[str]:
    """Greedy answers to QA_PROMPT-formatted questions, batched with left padding.
    decoder: "kv" (greedy_decode: finished rows leave the batch) or "hf" (`model.generate`, for
    models whose forward does not take position_ids / logits_to_keep)."""
    if decoder not in ("kv", "hf"):
        raise ValueError(f"decoder must be 'kv' or 'hf', not {decoder!r}")
    model.eval()
    device = next(model.parameters()).device
    prompts = encode_prompts(examples, tokenizer)
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id
    answers = [None] * len(prompts)
    # Sort by length so batches carry little padding; restore order at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        if decoder == "kv":
            new_tokens = greedy_decode(model, ids, mask, max_new_tokens=max_new_tokens, stop_ids=stops, pad_id=pad)
        else:
            new_tokens = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                        eos_token_id=stops, pad_token_id=pad)[:, width:]
        for row, i in enumerate(idx):
            new = new_tokens[row].tolist()
            cut = next((k for k, t in enumerate(new) if t in stops), len(new))
            answers[i] = tokenizer.decode(new[:cut], skip_special_tokens=True).split("\n")[0].strip()
    return answers


def as_decoded(tokenizer, text: str) -> str:
    """The gold answer as the model would write it: encoded and decoded by the same tokenizer.

    A word-level tokenizer drops single spaces, so decoding cannot restore "McDonald's" or
    "Winston-Salem" exactly ("McDonald ' s"); SQuAD normalization would then turn a perfectly
    predicted token sequence into a mismatch. Comparing against the round-tripped gold makes exact
    match equal to token-level exact match; for byte-level BPE tokenizers the round trip is the
    identity."""
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True).strip()


def evaluate_qa(model, tokenizer, examples: list[dict], **kwargs) -> dict:
    """Exact match (and token F1) overall and per attribute; keeps the predictions, the gold answers
    as compared (as_decoded) and whether each was an exact match (`correct`), in example order."""
    if not examples:
        raise ValueError("evaluate_qa: no QA examples")
    preds = generate_answers(model, tokenizer, examples, **kwargs)
    golds = [as_decoded(tokenizer, ex["answer"]) for ex in examples]
    hits = [exact_match(p, g) for p, g in zip(preds, golds)]
    per_attr = defaultdict(list)
    for hit, ex in zip(hits, examples):
        per_attr[ex.get("attribute", "all")].append(hit)
    return {"em": sum(hits) / len(hits), "n": len(hits),
            "f1": sum(token_f1(p, g) for p, g in zip(preds, golds)) / len(hits),
            "em_per_attribute": {a: sum(v) / len(v) for a, v in sorted(per_attr.items())},
            "predictions": preds, "golds": golds, "correct": hits}

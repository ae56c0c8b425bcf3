"""How one epoch of encoded examples ({input_ids, labels}) becomes micro-batches. Every mode puts
each example in exactly one batch of `micro_batch_size` examples (the last one may be short), so
the number of micro-batches per epoch, and hence optimizer steps, is ceil(n / micro_batch_size)
in every mode, and the loss of a batch is always the mean over its labelled tokens.

- "pad": shuffled in an order fixed by (seed, epoch), right-padded to the longest example of the
  batch (the training loop's default, train.epoch_batches).
- "bucket": shuffled, then sorted by length within windows of `window` batches and cut into
  batches, whose order is shuffled again: little padding, still random batch composition.
- "pack": the batches of "pad" (same examples in each), but laid out as rows of `block_len`
  tokens holding several examples each (first-fit decreasing). Each example gets its own
  position_ids (0, 1, ...), no attention_mask and use_cache=False, which makes transformers 5.x
  (masking_utils.find_packed_sequence_indices; checked on 5.24 with sdpa and eager) build a
  block-diagonal causal mask: no token attends to another example (tests/test_batching.py). The
  label of each example's first token is -100 (unpacked, nothing predicts it either).

    batches = make_batches(examples, micro, pad_id, seed, epoch, mode)   # epoch = 1, 2, ...
    (train.py: `batching: pad | bucket | pack` in a stage's config)
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from functools import partial

import torch

from kl_utils.config.schema import BATCHING as MODES  # the valid names: kl_utils.config.schema


def pad_collate(examples: list[dict], pad_id: int) -> dict:
    """Right-padded batch; padded positions are masked and carry no loss."""
    width = max(len(ex["input_ids"]) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, ex in enumerate(examples):
        n = len(ex["input_ids"])
        ids[i, :n] = torch.tensor(ex["input_ids"])
        labels[i, :n] = torch.tensor(ex["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_collate(examples: list[dict], pad_id: int, block_len: int = 128) -> dict:
    """Examples packed into rows of max(block_len, longest example) tokens, first-fit decreasing."""
    width = max(block_len, max(len(ex["input_ids"]) for ex in examples))
    rows: list[list[dict]] = []
    free: list[int] = []
    for ex in sorted(examples, key=lambda e: -len(e["input_ids"])):
        n = len(ex["input_ids"])
        r = next((r for r, f in enumerate(free) if f >= n), None)
        if r is None:
            rows.append([])
            free.append(width)
            r = len(rows) - 1
        rows[r].append(ex)
        free[r] -= n
    width = max(width - f for f in free)  # no column that only holds padding
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for ex in row:
            n = len(ex["input_ids"])
            ids[r, at:at + n] = torch.tensor(ex["input_ids"])
            labels[r, at + 1:at + n] = torch.tensor(ex["labels"][1:])
            pos[r, at:at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)  # the padding tail is a sequence of its own
    # use_cache=False: transformers infers the per-example mask from position_ids only without a KV
    # cache (in train mode too). A 0-d tensor, so that train.py's `v.to(device)` passes it through.
    return {"input_ids": ids, "position_ids": pos, "labels": labels, "use_cache": torch.tensor(False)}


def _pad_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of train.epoch_batches' "pad" mode: fixed by (seed, epoch) alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def batch_indices(lengths: list[int], micro_batch_size: int, seed: int, epoch: int, mode: str = "pad",
                  window: int = 16) -> list[list[int]]:
    """Indices of the examples in each micro-batch of epoch `epoch` (1-based), deterministic."""
    if mode not in MODES:
        raise ValueError(f"unknown batching mode {mode!r}; valid: {', '.join(MODES)}")
    order = _pad_order(len(lengths), seed, epoch)
    if mode == "bucket":
        rng = random.Random(seed * 1_000_003 + epoch)
        span = micro_batch_size * window
        order = [i for s in range(0, len(order), span)
                 for i in sorted(order[s:s + span], key=lambda i: lengths[i])]
        batches = [order[s:s + micro_batch_size] for s in range(0, len(order), micro_batch_size)]
        rng.shuffle(batches)
        return batches
    return [order[s:s + micro_batch_size] for s in range(0, len(order), micro_batch_size)]


def collate_fn(mode: str, pad_id: int, block_len: int = 128):
    return partial(pack_collate, pad_id=pad_id, block_len=block_len) if mode == "pack" \
        else partial(pad_collate, pad_id=pad_id)


class Batches(Sequence):
    """The micro-batches of one epoch, collated when read: a run that stops mid-epoch (max_steps)
    never collates the rest, and none sit in memory ahead of use. Slices are lazy too."""

    def __init__(self, examples: list[dict], indices: list[list[int]], collate):
        self.examples, self.indices, self.collate = examples, indices, collate

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Batches(self.examples, self.indices[i], self.collate)
        return self.collate([self.examples[j] for j in self.indices[i]])


def lazy_batches(examples: list[dict], micro_batch_size: int, pad_id: int, seed: int, epoch: int,
                 mode: str = "pad", block_len: int = 128) -> Batches:
    """The micro-batches of one epoch, in order, collated on access; each accepted by `model(**batch)`."""
    lengths = [len(ex["input_ids"]) for ex in examples]
    return Batches(examples, batch_indices(lengths, micro_batch_size, seed, epoch, mode),
                   collate_fn(mode, pad_id, block_len))


def make_batches(examples: list[dict], micro_batch_size: int, pad_id: int, seed: int, epoch: int,
                 mode: str = "pad", block_len: int = 128) -> list[dict]:
    """The collated micro-batches of one epoch, in order (a list: `lazy_batches` collates on access)."""
    return list(lazy_batches(examples, micro_batch_size, pad_id, seed, epoch, mode, block_len))

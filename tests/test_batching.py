"""Batching modes (kl_utils.training.batching): every example once per epoch, deterministic order, the same
labelled tokens and loss as padding, and no attention across packed examples."""
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kl_utils.training import batching, train

MODES = batching.MODES


def _examples(n=45, seed=0):
    """Documents (loss on every token) and QA-like examples (loss on the tail), varied lengths;
    token ids >= 3 (0 pad, 1 BOS, 2 EOS)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.choice([rng.randint(50, 70), rng.randint(12, 18)])
        ids = [1] + [rng.randint(3, 99) for _ in range(length - 2)] + [2]
        labels = list(ids) if i % 2 else [-100] * (length - 5) + ids[-5:]
        out.append({"input_ids": ids, "labels": labels, "id": i})
    return out


def _model(attn="sdpa"):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg)


def _labelled(batch):
    return int((batch["labels"][:, 1:] != -100).sum())


@pytest.mark.parametrize("mode", MODES)
def test_every_example_once_per_epoch_and_step_count(mode):
    ex = _examples()
    lengths = [len(e["input_ids"]) for e in ex]
    for epoch in (1, 2):
        idx = batching.batch_indices(lengths, 8, seed=3, epoch=epoch, mode=mode)
        assert sorted(i for b in idx for i in b) == list(range(len(ex)))
        assert sorted(map(len, idx)) == [len(ex) % 8] + [8] * (len(ex) // 8)  # ceil(n / 8) batches


@pytest.mark.parametrize("mode", MODES)
def test_deterministic_per_seed_and_epoch(mode):
    ex = _examples()
    a = batching.make_batches(ex, 8, 0, seed=1, epoch=2, mode=mode)
    b = batching.make_batches(ex, 8, 0, seed=1, epoch=2, mode=mode)
    c = batching.make_batches(ex, 8, 0, seed=1, epoch=3, mode=mode)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert any(not torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))


@pytest.mark.parametrize("mode", MODES)
def test_same_labelled_tokens_as_padding(mode):
    ex = _examples()
    pad = batching.make_batches(ex, 8, 0, seed=0, epoch=1, mode="pad")
    other = batching.make_batches(ex, 8, 0, seed=0, epoch=1, mode=mode)
    assert sum(map(_labelled, other)) == sum(map(_labelled, pad))
    if mode == "pack":  # the same examples in each batch, only laid out differently
        assert [_labelled(b) for b in other] == [_labelled(b) for b in pad]
    cells = sum(b["input_ids"].numel() for b in other)
    assert cells <= sum(b["input_ids"].numel() for b in pad)


def test_pad_mode_is_train_py_pad():
    ex = _examples()
    for epoch in (1, 2):
        ours = batching.make_batches(ex, 8, 0, seed=4, epoch=epoch, mode="pad")
        theirs = train.epoch_batches(ex, 8, 0, 4, epoch, "pad")
        assert all(torch.equal(a[k], b[k]) for a, b in zip(ours, theirs) for k in ("input_ids", "labels"))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked(attn):
    model = _model(attn).eval()
    ex = _examples(16)
    packed = batching.pack_collate(ex, pad_id=0, block_len=128)
    assert packed["input_ids"].shape[0] < len(ex)  # several examples per row
    with torch.no_grad():
        l_pack = model(**packed).loss
        l_pad = model(**batching.pad_collate(ex, pad_id=0)).loss
        # per-token: every example's logits in the block equal those of the example run alone
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits
        for r in range(packed["input_ids"].shape[0]):
            starts = (packed["position_ids"][r] == 0).nonzero().flatten().tolist() + [packed["input_ids"].shape[1]]
            for s, e in zip(starts, starts[1:]):
                ids = packed["input_ids"][r, s:e]
                if packed["labels"][r, s:e].ne(-100).any():  # an example, not the padding tail
                    alone = model(input_ids=ids[None]).logits[0]
                    torch.testing.assert_close(logits[r, s:e], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(l_pack, l_pad, atol=1e-5, rtol=0)


def test_packed_loss_in_train_mode_and_gradients():
    model = _model().train()
    ex = _examples(12)
    model(**batching.pack_collate(ex, 0)).loss.backward()
    g_pack = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(**batching.pad_collate(ex, 0)).loss.backward()
    for a, b in zip(g_pack, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_no_attention_across_packed_examples():
    model = _model().eval()
    a, b = _examples(2)
    packed = batching.pack_collate([a, b], pad_id=0, block_len=256)
    assert packed["input_ids"].shape[0] == 1
    changed = dict(packed, input_ids=packed["input_ids"].clone())
    first = len(max(a, b, key=lambda e: len(e["input_ids"]))["input_ids"])  # packed longest-first
    changed["input_ids"][0, 1:first - 1] = 7
    with torch.no_grad():
        out = model(**{k: v for k, v in packed.items() if k != "labels"}).logits
        out2 = model(**{k: v for k, v in changed.items() if k != "labels"}).logits
    assert not torch.allclose(out[0, :first], out2[0, :first])
    torch.testing.assert_close(out[0, first:], out2[0, first:], atol=1e-6, rtol=0)


def test_unknown_mode():
    with pytest.raises(ValueError, match="batching mode"):
        batching.batch_indices([3, 4], 1, 0, 1, "shuffle")


def test_lazy_batches_equal_the_eager_ones_and_collate_only_what_is_read():
    ex = _examples(17, seed=2)
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return batching.pad_collate(batch, 0)
    lazy = batching.lazy_batches(ex, 4, 0, seed=3, epoch=2, mode="pack")
    eager = batching.make_batches(ex, 4, 0, seed=3, epoch=2, mode="pack")
    assert len(lazy) == len(eager) == 5
    assert all(torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["position_ids"], b["position_ids"])
               for a, b in zip(lazy, eager))
    view = batching.Batches(ex, lazy.indices, counting)[1::2]  # a DDP-style shard: still lazy
    assert calls == [] and len(view) == 2
    first = view[0:1]
    assert calls == [] and [b["input_ids"].shape[0] for b in first] == [4] and calls == [4]

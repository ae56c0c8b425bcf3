"""Implementation keys of a training stage (kl_utils.training.train): `logits: labelled` gives the loss and
gradients of the model's own loss; `fused: true` gives AdamW's updates; `batching: pack` with both
trains like padded batches with full logits; none of them at its default value changes a run id."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kl_utils.config import arms
from kl_utils.core import spec as core_spec
from kl_utils.training import batching, train
from tests.test_batching import _examples, _model


@pytest.mark.parametrize("collate", [batching.pad_collate, batching.pack_collate])
def test_labelled_logits_same_loss_and_gradients(collate):
    model = _model().train()
    batch = collate(_examples(12), 0)  # documents (every token labelled) and QA (answer only)
    assert (batch["labels"] == -100).float().mean() > 0.2  # there are positions to skip
    full = train.lm_loss(model, batch, "all")
    full.backward()
    g_full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    labelled = train.lm_loss(model, batch, "labelled")
    labelled.backward()
    torch.testing.assert_close(labelled, full, atol=1e-6, rtol=1e-5)
    for a, b in zip(g_full, (p.grad for p in model.parameters())):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-4)


def test_labelled_logits_fall_back_where_the_head_is_not_plain():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=16, n_layer=1, n_head=2, n_positions=128,
                                      bos_token_id=1, eos_token_id=2)).eval()
    batch = batching.pad_collate(_examples(4), 0)
    with torch.no_grad():
        assert train.lm_loss(gpt2, batch, "labelled") == gpt2(**batch).loss  # the model's own loss

    class Wrapped(torch.nn.Module):  # a DDP-like wrapper: the forward must go through it
        def __init__(self, m):
            super().__init__()
            self.module = m
            self.config = m.config
            self.calls = 0

        def forward(self, **kw):
            self.calls += 1
            return self.module(**kw)
    wrapped = Wrapped(_model())
    train.lm_loss(wrapped, batch, "labelled")
    assert wrapped.calls == 1
    with pytest.raises(ValueError, match="logits mode"):
        train.lm_loss(_model(), batch, "some")


def test_fused_adamw_is_selected_and_matches_foreach():
    cfg = {"lr": 1e-2, "weight_decay": 0.1, "betas": [0.9, 0.98]}
    assert train.make_optimizer(_model(), {**cfg, "fused": True}).defaults["fused"] is True
    assert not train.make_optimizer(_model(), cfg).defaults.get("fused")
    sam = train.make_optimizer(_model(), {**cfg, "fused": True, "optimizer": "sam", "rho": 0.05})
    assert sam.base_optimizer.defaults["fused"] is True
    models = []
    for fused in (False, True):
        m = _model().train()
        opt = train.make_optimizer(m, {**cfg, "fused": fused})
        for _ in range(3):
            m(**batching.pad_collate(_examples(8), 0)).loss.backward()
            opt.step()
            opt.zero_grad()
        models.append(m)
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fast_stage_trains_like_the_default_one():
    """Pack + labelled logits + fused AdamW vs pad + full logits + foreach AdamW: the same data,
    batches and steps, so the same losses up to float rounding."""
    stage = {"epochs": 2, "batch_size": 8, "lr": 3e-3, "weight_decay": 0.1, "betas": [0.9, 0.98],
             "warmup_frac": 0.1, "min_lr_frac": 0.1, "grad_clip": 1.0}
    fast = {**stage, "batching": "pack", "logits": "labelled", "fused": True}
    h_slow = train.train(_model(), _examples(24), stage, seed=0, pad_id=0, desc="default")
    h_fast = train.train(_model(), _examples(24), fast, seed=0, pad_id=0, desc="fast")
    assert h_fast["step"] == h_slow["step"]
    torch.testing.assert_close(torch.tensor(h_fast["loss"]), torch.tensor(h_slow["loss"]), atol=1e-4, rtol=1e-4)


def test_implementation_keys_at_their_defaults_keep_the_hash():
    spec = {"data": {"seed": 0}, "cpt": {"lr": 1e-3}, "it": {"lr": 1e-3}, "base": {"epochs": 2}}
    pinned = {**spec, "cpt": {"lr": 1e-3, **arms.IMPLEMENTATION_DEFAULTS},
              "base": {"epochs": 2, "batching": "pad"}}
    assert core_spec.config_hash(arms.canonical_spec(pinned)) == core_spec.config_hash(spec)
    for key, value in (("batching", "pack"), ("logits", "labelled"), ("fused", True)):
        changed = {**spec, "cpt": {"lr": 1e-3, key: value}}
        assert core_spec.config_hash(arms.canonical_spec(changed)) != core_spec.config_hash(spec)
    assert arms.canonical_spec({"data": {"batching": "pad"}}) == {"data": {"batching": "pad"}}  # stages only

"""Tests for kl_utils.training.sam: SAM against an independent computation written here (flat vectors +
torch.optim on a copy of the model), plus the edge cases the training loop relies on."""

import copy
import types
import warnings

import pytest
import torch
from torch import nn

from kl_utils.training.sam import SAM, check_mixed_precision, sam_update, unwrap_optimizer



# ---------------------------------------------------------------- models, data, reference
def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def mlp_batches(n_micro=1, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n_micro * size, 8, generator=g), torch.randn(n_micro * size, 4, generator=g)
    return [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(n_micro)]


def mlp_loss(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


def token_batch(n=8, seq=12, seed=2):
    return torch.randint(0, 64, (n, seq), generator=torch.Generator().manual_seed(seed))


def lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def split(t, n_micro):
    return list(t.chunk(n_micro))


class RefSAM:
    """SAM written independently: concatenated-vector norm, explicit perturb/restore, then a
    stock torch optimizer on a deep copy of the model (clipping as in clip_grad_norm_)."""

    def __init__(self, model, rho, adaptive=False, base=torch.optim.AdamW, max_grad_norm=None, **kw):
        self.m = copy.deepcopy(model)
        self.ps = list(self.m.parameters())
        self.rho, self.adaptive, self.max_grad_norm = rho, adaptive, max_grad_norm
        self.opt = base(self.ps, **kw)

    def grads(self, batches, loss_fn):
        loss = sum(loss_fn(self.m, b) for b in batches) / len(batches)
        return list(torch.autograd.grad(loss, self.ps, allow_unused=True))

    def sam_step(self, batches, loss_fn):
        g = self.grads(batches, loss_fn)
        used = [(p, gi) for p, gi in zip(self.ps, g) if gi is not None]
        with torch.no_grad():
            w0 = [p.clone() for p in self.ps]
            t = [(p.abs() * gi if self.adaptive else gi).flatten() for p, gi in used]
            norm = torch.cat(t).norm()
            for p, gi in used:
                p.add_(self.rho * (p.abs().pow(2) * gi if self.adaptive else gi) / norm)
        h = self.grads(batches, loss_fn)
        with torch.no_grad():
            for p, w in zip(self.ps, w0):
                p.copy_(w)
        self.apply(h)

    def plain_step(self, batches, loss_fn):
        self.apply(self.grads(batches, loss_fn))

    def apply(self, h):
        for p, hi in zip(self.ps, h):
            p.grad = hi
        if self.max_grad_norm is not None:
            total = torch.cat([hi.flatten() for hi in h if hi is not None]).norm()
            coef = min(1.0, self.max_grad_norm / (float(total) + 1e-6))
            for hi in h:
                if hi is not None:
                    hi.mul_(coef)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def assert_params_close(m1, m2, atol=1e-6):
    for (n, a), b in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda s: f"{n}: {s}")


def params_equal(m1, m2):
    return all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------- exactness vs references
def test_rho0_is_adamw_step_for_step():
    model, ref = tiny_mlp(), tiny_mlp()
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.0, lr=1e-2, weight_decay=0.1)
    adamw = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(6):
        batches = mlp_batches(seed=step)
        sam_update(opt, model, batches, mlp_loss)
        adamw.zero_grad()
        mlp_loss(ref, batches[0]).backward()
        adamw.step()
        assert params_equal(model, ref), f"diverged at step {step}"


def test_param_groups_with_own_hyperparameters():
    """decay / no-decay groups (as train.make_optimizer builds them) reach the base optimizer."""
    def groups(m):
        return [{"params": [p for p in m.parameters() if p.ndim >= 2], "weight_decay": 0.5},
                {"params": [p for p in m.parameters() if p.ndim < 2], "weight_decay": 0.0, "rho": 0.0}]
    model, ref = tiny_mlp(), tiny_mlp()
    opt = SAM(groups(model), torch.optim.AdamW, rho=0.0, lr=1e-2)
    adamw = torch.optim.AdamW(groups(ref), lr=1e-2)
    assert [g["weight_decay"] for g in opt.base_optimizer.param_groups] == [0.5, 0.0]
    assert [g["rho"] for g in opt.param_groups] == [0.0, 0.0]
    for step in range(4):
        sam_update(opt, model, mlp_batches(seed=step), mlp_loss)
        adamw.zero_grad()
        mlp_loss(ref, mlp_batches(seed=step)[0]).backward()
        adamw.step()
        assert params_equal(model, ref)


@pytest.mark.parametrize("adaptive", [False, True])
def test_mlp_matches_reference(adaptive):
    model = tiny_mlp()
    rho = 0.5 if adaptive else 0.2
    ref = RefSAM(model, rho, adaptive, lr=1e-2, weight_decay=0.1)
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=rho, adaptive=adaptive, lr=1e-2, weight_decay=0.1)
    plain = tiny_mlp()
    for step in range(3):
        batches = mlp_batches(seed=step)
        sam_update(opt, model, batches, mlp_loss)
        ref.sam_step(batches, mlp_loss)
        assert_params_close(model, ref.m)
    # sanity: the perturbation matters, i.e. the test can tell SAM from AdamW
    a = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        a.zero_grad()
        mlp_loss(plain, mlp_batches(seed=step)[0]).backward()
        a.step()
    assert max((p - q).abs().max() for p, q in zip(model.parameters(), plain.parameters())) > 1e-4


@pytest.mark.parametrize("adaptive", [False, True])
def test_llama_matches_reference(adaptive):
    model = tiny_llama()
    ref = RefSAM(model, 0.05, adaptive, lr=1e-3, weight_decay=0.01)
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, adaptive=adaptive, lr=1e-3, weight_decay=0.01)
    for step in range(2):
        ids = token_batch(seed=step)
        sam_update(opt, model, [ids], lm_loss)
        ref.sam_step([ids], lm_loss)
    assert_params_close(model, ref.m)


def test_closure_step_matches_sam_update():
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = SAM(m1.parameters(), torch.optim.AdamW, rho=0.3, lr=1e-2)
    o2 = SAM(m2.parameters(), torch.optim.AdamW, rho=0.3, lr=1e-2)
    for step in range(3):
        b = mlp_batches(seed=step)
        sam_update(o1, m1, b, mlp_loss)
        mlp_loss(m2, b[0]).backward()  # davda54 convention: gradient at w already in .grad
        o2.step(lambda: mlp_loss(m2, b[0]).backward())
        o2.zero_grad()
        assert params_equal(m1, m2)


# ---------------------------------------------------------------- perturb / restore
def test_first_step_perturbs_and_second_step_restores_exactly():
    model = tiny_mlp()
    model.unused = nn.Parameter(torch.ones(3))  # requires_grad, never used in forward
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.3, lr=0.0, weight_decay=0.0)
    w0 = snapshot(model)
    b = mlp_batches()[0]
    mlp_loss(model, b).backward()
    used = [(p, p.grad.clone()) for p in model.parameters() if p.grad is not None]
    norm = torch.cat([g.flatten() for _, g in used]).norm()
    expected = {id(p): p.detach() + 0.3 * g / norm for p, g in used}
    assert opt.first_step(zero_grad=True)
    for p, _ in used:
        torch.testing.assert_close(p.detach(), expected[id(p)], atol=1e-7, rtol=0)
    assert all(p.grad is None for p in model.parameters())

    seen = {}
    base_step = opt.base_optimizer.step
    def recording_step(*a, **k):  # the base step must see the restored weights
        seen["w"] = snapshot(model)
        return base_step(*a, **k)
    opt.base_optimizer.step = recording_step
    mlp_loss(model, b).backward()
    assert opt.second_step(zero_grad=True)
    assert all(torch.equal(a, b) for a, b in zip(seen["w"], w0))
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), w0))  # lr=0: exactly w0


def test_param_without_grad_is_not_moved_and_gets_no_state():
    model = tiny_mlp()
    model.unused = nn.Parameter(torch.full((3,), 2.0))
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.1, lr=1e-2, weight_decay=0.5)
    for step in range(2):
        sam_update(opt, model, mlp_batches(seed=step), mlp_loss, max_grad_norm=1.0)
    assert torch.equal(model.unused.detach(), torch.full((3,), 2.0))
    assert model.unused not in opt.state and model.unused not in opt.base_optimizer.state
    assert model.unused not in opt._old
    assert model[0].weight in opt.state  # ...while used params do get AdamW state


# ---------------------------------------------------------------- training-loop features
def test_grad_accumulation_4x2_equals_1x8():
    m1, m2 = tiny_llama(), tiny_llama()
    # eps=1e-6: summation-order rounding in the gradient (~1e-10) must not be amplified by AdamW's
    # g/(sqrt(v)+eps) on entries with |g| ~ 1e-8 (with eps=1e-8 the error is ~6e-7, too close to 1e-6)
    kw = dict(rho=0.05, lr=1e-3, weight_decay=0.01, eps=1e-6)
    o1 = SAM(m1.parameters(), torch.optim.AdamW, **kw)
    o2 = SAM(m2.parameters(), torch.optim.AdamW, **kw)
    for step in range(2):
        ids = token_batch(n=8, seed=step)
        l1 = sam_update(o1, m1, split(ids, 4), lm_loss, max_grad_norm=1.0)
        l2 = sam_update(o2, m2, [ids], lm_loss, max_grad_norm=1.0)
        assert abs(l1 - l2) < 1e-6
        assert_params_close(m1, m2)


def test_clipping_is_applied_to_the_perturbed_gradient():
    model = tiny_mlp()
    kw = dict(lr=0.1, momentum=0.9)  # SGD: unlike AdamW's first step, it is not scale-invariant
    ref = RefSAM(model, 0.2, base=torch.optim.SGD, max_grad_norm=0.05, **kw)
    unclipped = RefSAM(model, 0.2, base=torch.optim.SGD, **kw)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, **kw)
    for step in range(3):
        b = mlp_batches(seed=step)
        sam_update(opt, model, b, mlp_loss, max_grad_norm=0.05)
        ref.sam_step(b, mlp_loss)
        unclipped.sam_step(b, mlp_loss)
    assert_params_close(model, ref.m)
    assert max((p - q).abs().max() for p, q in zip(model.parameters(), unclipped.m.parameters())) > 1e-3


def test_lr_scheduler_on_sam_drives_base_optimizer():
    model = tiny_mlp()
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            sam_update(opt, model, mlp_batches(seed=step), mlp_loss)
            sched.step()
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 ** 3)
    assert opt.param_groups is opt.base_optimizer.param_groups


def test_state_dict_round_trip_continues_identically():
    def make():
        m = tiny_mlp()
        return m, SAM(m.parameters(), torch.optim.AdamW, rho=0.2, every_k=2, lr=1e-2, weight_decay=0.1)
    m1, o1 = make()
    for step in range(3):  # odd count: the every_k phase must be restored too
        sam_update(o1, m1, mlp_batches(seed=step), mlp_loss)
    saved_model, saved_opt = copy.deepcopy(m1.state_dict()), copy.deepcopy(o1.state_dict())
    m2, o2 = make()
    m2.load_state_dict(saved_model)
    o2.load_state_dict(saved_opt)
    assert o2.param_groups is o2.base_optimizer.param_groups and o2.state is o2.base_optimizer.state
    assert o2.n_updates == 3 and o2.param_groups[0]["rho"] == 0.2
    for step in range(3, 7):
        sam_update(o1, m1, mlp_batches(seed=step), mlp_loss)
        sam_update(o2, m2, mlp_batches(seed=step), mlp_loss)
    assert params_equal(m1, m2)


def test_every_k_alternates_sam_and_plain_steps():
    model = tiny_mlp()
    ref = RefSAM(model, 0.3, lr=1e-2, weight_decay=0.1)
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.3, every_k=2, lr=1e-2, weight_decay=0.1)
    calls = []
    def counting_loss(m, b):
        calls.append(1)
        return mlp_loss(m, b)
    for step in range(4):
        b = mlp_batches(n_micro=2, size=4, seed=step)
        assert opt.sam_due == (step % 2 == 0)
        calls.clear()
        sam_update(opt, model, b, counting_loss)
        if step % 2 == 0:
            assert len(calls) == 4  # two passes over 2 micro-batches
            ref.sam_step(b, mlp_loss)
        else:
            assert len(calls) == 2  # one pass: a plain AdamW step
            ref.plain_step(b, mlp_loss)
        assert_params_close(model, ref.m)


# ---------------------------------------------------------------- robustness
def _trained_once():
    model = tiny_mlp()
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.1, lr=1e-2, weight_decay=0.1)
    sam_update(opt, model, mlp_batches(), mlp_loss)  # non-empty AdamW state (momentum)
    return model, opt


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0])
def test_bad_first_gradient_skips_update(bad):
    model, opt = _trained_once()
    w0, st0 = snapshot(model), copy.deepcopy(opt.state_dict())
    with pytest.warns(RuntimeWarning, match="SAM"):
        sam_update(opt, model, mlp_batches(seed=5), lambda m, b: mlp_loss(m, b) * bad)
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), w0))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.state_dict()["state"][0]["step"] == st0["state"][0]["step"]
    assert all(p.grad is None for p in model.parameters())
    # the optimizer recovers on the next good batch
    sam_update(opt, model, mlp_batches(seed=6), mlp_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(snapshot(model), w0))


def test_bad_perturbed_gradient_skips_update_and_restores():
    model, opt = _trained_once()
    w0 = snapshot(model)
    calls = []
    def nan_second_pass(m, b):
        calls.append(1)
        return mlp_loss(m, b) * (float("nan") if len(calls) > 1 else 1.0)
    for clip in (None, 1.0):
        calls.clear()
        with pytest.warns(RuntimeWarning, match="base step skipped"):
            sam_update(opt, model, mlp_batches(seed=5), nan_second_pass, max_grad_norm=clip)
        assert all(torch.equal(a, b) for a, b in zip(snapshot(model), w0))


def test_first_step_returns_false_on_zero_gradient():
    model = tiny_mlp()
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.1, lr=1e-2)
    (0.0 * mlp_loss(model, mlp_batches()[0])).backward()
    w0 = snapshot(model)
    with pytest.warns(RuntimeWarning):
        assert opt.first_step() is False
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), w0))


def test_bf16_autocast_step_is_finite():
    model = tiny_llama()
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-3)
    w0 = snapshot(model)
    def bf16_loss(m, ids):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return lm_loss(m, ids)
    for step in range(2):
        loss = sam_update(opt, model, split(token_batch(seed=step), 2), bf16_loss, max_grad_norm=1.0)
        assert loss == loss and abs(loss) < float("inf")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(snapshot(model), w0))


def test_bf16_parameters_step_is_finite():
    model = tiny_mlp().to(torch.bfloat16)
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, adaptive=True, lr=1e-2)
    batches = [(x.bfloat16(), y.bfloat16()) for x, y in mlp_batches()]
    sam_update(opt, model, batches, mlp_loss)
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in model.parameters())


def test_fp16_is_refused_with_bf16_hint():
    for mp in ("fp16", "FP16", "float16"):
        with pytest.raises(ValueError, match="bf16"):
            check_mixed_precision(mp)
    for mp in (None, "no", "bf16"):
        check_mixed_precision(mp)
    model = tiny_mlp()
    opt = SAM(model.parameters(), torch.optim.AdamW, lr=1e-2)
    fake = types.SimpleNamespace(mixed_precision="fp16", gradient_accumulation_steps=1)
    with pytest.raises(ValueError, match="bf16"):
        sam_update(opt, model, mlp_batches(), mlp_loss, accelerator=fake)


def test_api_errors():
    model = tiny_mlp()
    with pytest.raises(ValueError):
        SAM(model.parameters(), torch.optim.AdamW, rho=-1.0)
    with pytest.raises(ValueError):
        SAM(model.parameters(), torch.optim.AdamW, every_k=0)
    opt = SAM(model.parameters(), torch.optim.AdamW, lr=1e-2)
    with pytest.raises(ValueError):
        opt.step()
    with pytest.raises(TypeError):
        unwrap_optimizer(torch.optim.AdamW(model.parameters()))
    mlp_loss(model, mlp_batches()[0]).backward()
    assert opt.first_step()
    with pytest.raises(RuntimeError, match="twice"):
        opt.first_step()


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState, PartialState

    def reset():
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()
    reset()
    yield
    reset()


def test_single_process_accelerator_matches_plain(fresh_accelerate_state):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = SAM(m1.parameters(), torch.optim.AdamW, rho=0.2, lr=1e-2, weight_decay=0.1)
    o2 = SAM(m2.parameters(), torch.optim.AdamW, rho=0.2, lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(o1, lambda s: 0.9 ** s)
    sched2 = torch.optim.lr_scheduler.LambdaLR(o2, lambda s: 0.9 ** s)
    m1, o1, sched = acc.prepare(m1, o1, sched)
    assert not isinstance(o1, SAM) and unwrap_optimizer(o1) is not None  # AcceleratedOptimizer
    for step in range(3):
        b = mlp_batches(n_micro=2, size=4, seed=step)
        sam_update(o1, m1, b, mlp_loss, accelerator=acc, max_grad_norm=0.5)
        sam_update(o2, m2, b, mlp_loss, max_grad_norm=0.5)
        sched.step()
        sched2.step()
    assert_params_close(acc.unwrap_model(m1), m2, atol=1e-7)
    assert o1.param_groups[0]["lr"] == pytest.approx(o2.param_groups[0]["lr"])


def test_accelerator_with_own_accumulation_is_refused(fresh_accelerate_state):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = tiny_mlp()
    opt = acc.prepare(SAM(model.parameters(), torch.optim.AdamW, lr=1e-2))
    with pytest.raises(ValueError, match="gradient_accumulation_steps=1"):
        sam_update(opt, model, mlp_batches(), mlp_loss, accelerator=acc)

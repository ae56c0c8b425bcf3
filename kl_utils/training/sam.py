"""Sharpness-Aware Minimization (Foret et al., ICLR 2021) wrapping any torch optimizer.

SAM minimises max_{||e|| <= rho} L(w + e). One update is
    g = grad L(w);   e = rho * g / ||g||;   h = grad L(w + e);   w <- BaseOpt(w, h)
with the adaptive variant (ASAM, Kwon et al., ICML 2021, T_w = |w|, eta = 0):
    e = rho * T_w^2 g / ||T_w g||.

Decisions (kept here so callers can read them in one place):

* Weight decay is NOT part of the ascent step: e is computed from the loss gradient only. With
  AdamW the decay is decoupled and applied by the base step at the restored w; with an optimizer
  that folds decay into the gradient (SGD(weight_decay=...)) the decay still only enters the
  base step, never the perturbation.
* Skips instead of NaNs: if ||g|| is non-finite or zero, `first_step` does not perturb and returns
  False (with a warning); if the gradient handed to the base step is non-finite, `second_step`
  restores w, does not step and returns False. A skipped update leaves weights and optimizer
  state untouched. `sam_update` agrees on the skip across DDP ranks (one scalar all-reduce).
* fp16 + GradScaler is refused (`check_mixed_precision`): two scaled backward passes per
  scaler.update() and the scaler's own inf-skip logic do not compose with the ascent step.
  Use bf16 (no scaler needed); bf16 autocast works unchanged.
* Distributed (DDP): the perturbation is per replica. Pass 1 runs under no_sync, so every
  replica perturbs along its own local gradient; only pass 2 is all-reduced. This is what
  Foret et al. do (m-sharpness with m = per-replica batch, which they found generalises at
  least as well as the full batch) and it saves one gradient all-reduce per update. The result
  equals the average over replicas of each replica's perturbed gradient, not SAM on the global
  batch (tests/test_sam_ddp.py checks exactly this). FSDP / DeepSpeed are not supported.
* Gradient clipping (`max_grad_norm`) is applied to the perturbed gradient h only: e uses g/||g||,
  which clipping (a uniform rescale) would not change anyway.
* Efficient mode `every_k`: SAM on every k-th update (updates 0, k, 2k, ...), a plain base step
  in between. Cost per update ~ (k+1)/k forward-backwards instead of 2; the trade-off is that
  only 1/k of the updates are sharpness-aware (a weaker flatness bias), see Zhao et al. 2022
  ("SS-SAM") / Liu et al. 2022 (LookSAM) for variants of this idea. k=1 is plain SAM.
* The old weights are kept in persistent buffers (one extra model-size copy, like every SAM
  implementation) outside `state`, so checkpoints contain only the base optimizer state.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Sequence

import torch

__all__ = ["SAM", "sam_update", "check_mixed_precision", "unwrap_optimizer"]

_MIN_NORM = 1e-30  # below this the gradient is numerically zero and rho/norm could overflow fp32


class SAM(torch.optim.Optimizer):
    """SAM(params, base_optimizer_cls, rho=0.05, adaptive=False, every_k=1, **base_kwargs).

    Shares `param_groups` and `state` with the base optimizer, so LR schedulers built on the
    SAM object drive the base optimizer. `rho`/`adaptive` may be set per param group.
    Manual use: backward at w; `if opt.first_step(zero_grad=True):` backward at w+e and
    `opt.second_step(zero_grad=True)` (if first_step returns False, skip the rest of the update).
    Or `opt.step(closure)`, or `sam_update(...)` below for a training loop.
    """

    def __init__(self, params, base_optimizer_cls, rho: float = 0.05, adaptive: bool = False,
                 every_k: int = 1, **base_kwargs):
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if every_k < 1:
            raise ValueError(f"every_k must be >= 1, got {every_k}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self._link()
        self.every_k = every_k
        self.n_updates = 0  # drives every_k; saved in state_dict
        self.last_grad_norm = float("nan")
        self._perturbed: list[tuple[list, list]] = []  # (params, old weights) of the current step
        self._old: dict[torch.Tensor, torch.Tensor] = {}  # persistent backup buffers

    def _link(self):  # same dicts and state => schedulers / inspection see the real thing
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults.update(self.base_optimizer.defaults)

    @property
    def sam_due(self) -> bool:
        """Whether the next `step`/`sam_update` is a SAM step (vs. a plain one, every_k > 1)."""
        return self.n_updates % self.every_k == 0

    def _grads(self, group):
        ps = [p for p in group["params"] if p.grad is not None]
        return ps, [p.grad for p in ps]

    def _grad_norm(self, scaled: bool) -> torch.Tensor:
        """Global L2 norm of the gradients (of |w|*g for adaptive groups if scaled), on one device."""
        norms = []
        for group in self.param_groups:
            ps, gs = self._grads(group)
            if not ps:
                continue
            if scaled and group["adaptive"]:
                gs = torch._foreach_mul(torch._foreach_abs(ps), gs)
            norms.extend(torch._foreach_norm(gs, 2, dtype=torch.float32))
        if not norms:
            return torch.tensor(0.0)
        dev = norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(dev) for n in norms]))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> bool:
        """w <- w + e. Returns False (and does not move w) if ||g|| is zero or non-finite."""
        if self._perturbed:
            raise RuntimeError("first_step called twice without second_step")
        norm = self._grad_norm(scaled=True).item()  # the one host sync of this step
        self.last_grad_norm = norm  # ||g|| (||T_w g|| for ASAM) of this update, for logging
        if not (math.isfinite(norm) and norm > _MIN_NORM):
            warnings.warn(f"SAM: gradient norm is {norm}; perturbation skipped", RuntimeWarning)
            if zero_grad:
                self.zero_grad(set_to_none=True)
            return False
        for group in self.param_groups:
            ps, gs = self._grads(group)
            if not ps:
                continue
            olds = [self._old[p] if p in self._old else self._old.setdefault(p, torch.empty_like(p))
                    for p in ps]
            torch._foreach_copy_(olds, ps)  # restored by copy, not by subtraction: exact
            if group["adaptive"]:
                gs = torch._foreach_mul(torch._foreach_mul(ps, ps), gs)  # T_w^2 g with T_w = |w|
            torch._foreach_add_(ps, gs, alpha=group["rho"] / norm)  # fused: no temporary e
            self._perturbed.append((ps, olds))
        if zero_grad:
            self.zero_grad(set_to_none=True)
        return True

    @torch.no_grad()
    def _restore(self):
        for ps, olds in self._perturbed:
            torch._foreach_copy_(ps, olds)
        self._perturbed = []

    @torch.no_grad()
    def _base_step(self, grad_norm: torch.Tensor | None = None) -> bool:
        norm = self._grad_norm(scaled=False) if grad_norm is None else grad_norm
        if not bool(torch.isfinite(norm)):
            warnings.warn(f"SAM: gradient norm is {norm.item()}; base step skipped", RuntimeWarning)
            return False
        self.base_optimizer.step()
        self._opt_called = True  # tell LR schedulers the optimizer did step (we bypass .step)
        return True

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, grad_norm: torch.Tensor | None = None) -> bool:
        """Restore w exactly, then base-step with the gradient taken at w + e.

        `grad_norm`: the norm of the current .grad if already known (e.g. from clipping); only used
        to skip a non-finite step. Returns False if the step was skipped."""
        self._restore()
        ok = self._base_step(grad_norm)
        if zero_grad:
            self.zero_grad(set_to_none=True)
        return ok

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """davda54 convention: .grad already holds the gradient at w; `closure` recomputes loss +
        backward at w + e. Returns the closure's loss (None for skipped / plain every_k steps)."""
        if closure is None:
            raise ValueError("SAM.step needs a closure doing forward + backward (or use first_step/"
                             "second_step, or sam_update)")
        sam_now = self.sam_due
        self.n_updates += 1
        if not sam_now:  # every_k: plain step with the gradient at w already in .grad
            self._base_step()
            return None
        if not self.first_step(zero_grad=True):
            return None
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def state_dict(self):
        sd = self.base_optimizer.state_dict()
        sd["sam"] = {"n_updates": self.n_updates, "every_k": self.every_k}
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        sam = state_dict.pop("sam", {})
        self.base_optimizer.load_state_dict(state_dict)
        self._link()  # the base optimizer rebuilt its groups/state: re-share them
        self.n_updates = sam.get("n_updates", 0)


def check_mixed_precision(mixed_precision: str | None) -> None:
    """Raise for fp16 (needs a GradScaler, which SAM does not support); bf16/fp32 are fine."""
    if mixed_precision is not None and str(mixed_precision).lower() in ("fp16", "float16", "half"):
        raise ValueError("SAM does not support fp16 mixed precision with a GradScaler "
                         "(two scaled backward passes per update); use mixed_precision='bf16' instead.")


def unwrap_optimizer(optimizer) -> SAM:
    """accelerate's AcceleratedOptimizer does not forward first_step/second_step: unwrap it."""
    opt = optimizer
    while not isinstance(opt, SAM) and hasattr(opt, "optimizer"):
        opt = opt.optimizer
    if not isinstance(opt, SAM):
        raise TypeError(f"expected a SAM optimizer (possibly wrapped), got {type(optimizer).__name__}")
    return opt


def _is_ddp(model) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _all_ranks_ok(ok: bool, device) -> bool:
    flag = torch.tensor([int(ok)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def sam_update(optimizer, model, micro_batches: Sequence, loss_fn, *, accelerator=None,
               max_grad_norm: float | None = None) -> float:
    """One optimizer update with SAM over a list of gradient-accumulation micro-batches.

    loss_fn(model, batch) -> scalar loss (mean over that micro-batch's tokens); micro-batches
    should be equal-sized so the mean of their means is the full-batch mean.
    Pass 1: forward+backward of loss/len(micro_batches) for each micro-batch, all under no_sync
    (forward included), giving each replica's own full-batch gradient -> first_step.
    Pass 2: the same micro-batches at w + e, no_sync except the last one (DDP then all-reduces
    the accumulated gradient once) -> optional clipping -> second_step.
    every_k efficient mode: non-SAM updates do one synced pass + a base step.
    Grads are cleared (set to None) at the start and the end. Returns the mean pass-1 loss.
    The `accelerator` must use gradient_accumulation_steps=1 (we accumulate ourselves) and must
    not use fp16; DDP without accelerate works too (model.no_sync is used).
    """
    opt = unwrap_optimizer(optimizer)
    if not micro_batches:
        raise ValueError("sam_update needs at least one micro-batch")
    if accelerator is not None:
        check_mixed_precision(accelerator.mixed_precision)
        if accelerator.gradient_accumulation_steps != 1:
            raise ValueError("create the Accelerator with gradient_accumulation_steps=1: sam_update "
                             "accumulates over micro_batches itself")
        if str(accelerator.distributed_type).split(".")[-1] in ("DEEPSPEED", "FSDP", "MEGATRON_LM"):
            raise NotImplementedError("SAM supports single-process and DDP training only")
        backward, no_sync = accelerator.backward, (lambda: accelerator.no_sync(model))
    else:
        backward = torch.Tensor.backward
        no_sync = model.no_sync if _is_ddp(model) else contextlib.nullcontext
    n = len(micro_batches)

    def accumulate(sync_last: bool) -> torch.Tensor:
        total = None
        for i, batch in enumerate(micro_batches):
            with contextlib.nullcontext() if (sync_last and i == n - 1) else no_sync():
                loss = loss_fn(model, batch)
                backward(loss / n)
            total = loss.detach().float() if total is None else total + loss.detach().float()
        return total / n

    def clip():
        if max_grad_norm is None:
            return None
        if accelerator is not None:
            return accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)

    sam_now = opt.sam_due
    opt.n_updates += 1
    opt.zero_grad(set_to_none=True)
    if not sam_now:  # every_k: plain update
        loss = accumulate(sync_last=True)
        opt._base_step(clip())
        opt.zero_grad(set_to_none=True)
        return float(loss)

    loss = accumulate(sync_last=False)  # per-replica gradient, no all-reduce
    ok = opt.first_step(zero_grad=True)
    if _is_ddp(model) and torch.distributed.get_world_size() > 1:
        dev = next(model.parameters()).device
        if not _all_ranks_ok(ok, dev):  # pass 2 all-reduces: every rank must take it or none
            if ok:
                warnings.warn("SAM: another rank had a bad gradient; update skipped", RuntimeWarning)
                opt._restore()
            ok = False
    if not ok:
        opt.zero_grad(set_to_none=True)
        return float(loss)
    accumulate(sync_last=True)
    opt.second_step(zero_grad=True, grad_norm=clip())
    return float(loss)

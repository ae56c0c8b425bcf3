"""SAM inside the Hugging Face `Trainer`: `SAMTrainer`, or `SAMTrainerMixin` for Trainer subclasses (TRL's).

    from kl_utils.training.sam_trainer import SAMTrainer, SAMTrainingArguments
    args = SAMTrainingArguments("out", sam_rho=0.05, learning_rate=1e-4, bf16=True, ...)
    SAMTrainer(model=model, args=args, train_dataset=ds, data_collator=collate).train()

    class SAMSFTTrainer(SAMTrainerMixin, trl.SFTTrainer): ...   # TRL: mix in, pass sam=SAMConfig(...)

How it fits the Trainer's loop (transformers 5.x `_inner_training_loop`): the Trainer calls
`training_step` once per micro-batch, then clips and calls `optimizer.step()`. The mixin's
`training_step` runs pass 1 (the Trainer's own forward/backward, loss scaling and autocast) under
`no_sync` and keeps the micro-batch; at the update's last micro-batch it perturbs w -> w + e
(`SAM.first_step`) and runs pass 2 over every kept micro-batch, syncing only the last. The
Trainer then clips the perturbed gradient and calls `optimizer.step()`, which restores w exactly
and takes the base step. That is `kl_utils.training.sam.sam_update` spread over the Trainer's
calls, so the decisions in sam.py hold unchanged: per-replica perturbation under DDP (pass 1
never all-reduces), clipping of h only, fp16 refused, a zero or non-finite ||g|| skips the whole
update (weights and optimizer state untouched; every DDP rank agrees), `sam_every_k`.
The base optimizer is whatever `args.optim` names (AdamW by default), with the Trainer's
weight-decay grouping. Logged beside the loss: `sam_grad_norm` (||g|| at w), `sam_perturbation_norm`
(||e||: rho, or the ASAM norm), `sam_skipped` and `sam_grad_evals_per_update` (2.0 for plain SAM,
(k+1)/k with every_k = k): SAM's extra cost in forward-backward passes.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments

from kl_utils.training.sam import SAM, _all_ranks_ok, check_mixed_precision

__all__ = ["SAMConfig", "SAMTrainingArguments", "SAMTrainerMixin", "SAMTrainer"]


@dataclass(frozen=True)
class SAMConfig:
    """SAM's own settings, for trainers whose arguments class is not SAMTrainingArguments."""
    rho: float = 0.05
    adaptive: bool = False
    every_k: int = 1


@dataclass
class SAMTrainingArguments(TrainingArguments):
    """TrainingArguments plus SAM's three settings (they show up in `--help` of HfArgumentParser)."""
    sam_rho: float = field(default=0.05, metadata={"help": "SAM neighbourhood radius rho (0 = the base optimizer)"})
    sam_adaptive: bool = field(default=False, metadata={"help": "ASAM: perturbation scaled by |w|"})
    sam_every_k: int = field(default=1, metadata={"help": "SAM on every k-th update, the base step in between"})


class _TrainerSAM(SAM):
    """SAM whose `step()` (no closure) is the second half of an update that the trainer began:
    restore w, base step; or nothing when the update was skipped."""

    skip_update = False

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            return super().step(closure)
        self.n_updates += 1
        if self.skip_update:
            self.skip_update = False
            self._restore()
            return None
        self._restore()  # no-op on a plain (every_k) update
        self._base_step()
        return None


class SAMTrainerMixin:
    """Mix into any `transformers.Trainer` subclass, before it in the bases. SAM's settings come from
    `sam=SAMConfig(...)`, else from `args.sam_rho / sam_adaptive / sam_every_k`, else SAMConfig()."""

    def __init__(self, *args, sam: SAMConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        a = self.args
        self.sam = sam or SAMConfig(rho=getattr(a, "sam_rho", SAMConfig.rho),
                                    adaptive=getattr(a, "sam_adaptive", SAMConfig.adaptive),
                                    every_k=getattr(a, "sam_every_k", SAMConfig.every_k))
        if a.fp16:
            check_mixed_precision("fp16")
        name = str(self.accelerator.distributed_type).split(".")[-1]
        if name in ("DEEPSPEED", "FSDP", "MEGATRON_LM", "XLA"):
            raise NotImplementedError(f"SAMTrainer supports single-process and DDP training, not {name}")
        self._sam_pending: list = []  # (inputs, num_items_in_batch) of the current update's micro-batches
        self._sam_stats = {"grad_norm": 0.0, "perturbation_norm": 0.0, "skipped": 0, "updates": 0, "sam_updates": 0}

    # -- optimizer: the Trainer's base optimizer and grouping, wrapped in SAM --------------------
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
            groups = [{"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
                      {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
            groups = [g for g in groups if g["params"]]
            cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
                raise ValueError(f"SAMTrainer needs a torch.optim optimizer as base (optim={self.args.optim!r})")
            kwargs = {k: v for k, v in kwargs.items() if k != "params"}
            self.optimizer = _TrainerSAM(groups, cls, rho=self.sam.rho, adaptive=self.sam.adaptive,
                                         every_k=self.sam.every_k, **kwargs)
        return self.optimizer

    def _sam(self) -> _TrainerSAM:
        opt = self.optimizer
        while not isinstance(opt, _TrainerSAM) and hasattr(opt, "optimizer"):
            opt = opt.optimizer
        if not isinstance(opt, _TrainerSAM):
            raise TypeError("SAMTrainer builds its own optimizer: do not pass `optimizers=` to it")
        return opt

    # -- one micro-batch; pass 2 at the update's last one ----------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        opt = self._sam()
        if not opt.sam_due:  # every_k: a plain update, exactly the Trainer's step
            if self._is_last_micro_batch(len(self._sam_pending) + 1):
                self._sam_pending = []
                self._count(sam=False)
            else:
                self._sam_pending.append(None)
            return super().training_step(model, inputs, num_items_in_batch)
        with self.accelerator.no_sync(model):  # pass 1: this replica's own gradient, no all-reduce
            loss = super().training_step(model, inputs, num_items_in_batch)
        self._sam_pending.append((inputs, num_items_in_batch))
        if not self._is_last_micro_batch(len(self._sam_pending)):
            return loss
        pending, self._sam_pending = self._sam_pending, []
        ok = opt.first_step(zero_grad=True)
        if self.accelerator.num_processes > 1:
            agreed = _all_ranks_ok(ok, self.args.device)
            if ok and not agreed:
                opt._restore()
            ok = agreed
        if not ok:  # the Trainer still clips and calls step(): make both no-ops on zero gradients
            opt.skip_update = True
            model.zero_grad(set_to_none=True)
            self._count(sam=True, skipped=True)
            return loss
        for i, (batch, n_items) in enumerate(pending):  # pass 2 at w + e; DDP reduces on the last only
            ctx = contextlib.nullcontext() if i == len(pending) - 1 else self.accelerator.no_sync(model)
            with ctx:
                super().training_step(model, batch, n_items)
        self._count(sam=True, grad_norm=opt.last_grad_norm)
        return loss

    def _is_last_micro_batch(self, n_seen: int) -> bool:
        return n_seen >= self.current_gradient_accumulation_steps

    def _count(self, sam: bool, skipped: bool = False, grad_norm: float = 0.0):
        s = self._sam_stats
        s["updates"] += 1
        if sam and not skipped:
            s["sam_updates"] += 1
            s["grad_norm"] += grad_norm
            s["perturbation_norm"] += self._perturbation_norm(grad_norm)
        s["skipped"] += int(skipped)

    @torch.no_grad()
    def _perturbation_norm(self, grad_norm: float) -> float:
        """||e||: rho for plain SAM; for ASAM rho * ||T_w^2 g|| / ||T_w g|| (measured on the live e)."""
        opt = self._sam()
        if not any(g["adaptive"] for g in opt.param_groups):
            return float(self.sam.rho)
        sq = 0.0
        for ps, olds in opt._perturbed:
            sq += sum(float(torch.sum((p.float() - o.float()) ** 2)) for p, o in zip(ps, olds))
        return math.sqrt(sq)

    def log(self, logs: dict, *args, **kwargs):
        s = self._sam_stats
        if s["updates"] and "loss" in logs:  # training logs only, averaged since the last one
            logs = {**logs, "sam_skipped": s["skipped"],
                    "sam_grad_evals_per_update": (s["updates"] + s["sam_updates"]) / s["updates"]}
            if s["sam_updates"]:  # absent from a window of plain (every_k) updates only
                logs["sam_grad_norm"] = s["grad_norm"] / s["sam_updates"]
                logs["sam_perturbation_norm"] = s["perturbation_norm"] / s["sam_updates"]
            self._sam_stats = {k: 0 if isinstance(v, int) else 0.0 for k, v in s.items()}
        return super().log(logs, *args, **kwargs)


class SAMTrainer(SAMTrainerMixin, Trainer):
    """`transformers.Trainer` with SAM around the base optimizer `args.optim` (see the module docstring)."""

"""The training loop shared by every stage (base pre-training, continued pre-training (CPT) and
instruction tuning (IT)). Runs on `accelerate` (device, precision, multi-process), takes AdamW
or SAM from the config, and logs per-step loss and learning rate.

Train config keys (profiles/*.yaml): epochs | max_steps, batch_size, grad_accum, lr,
weight_decay, betas, warmup_frac, min_lr_frac, grad_clip, optimizer (adamw | sam), rho,
adaptive, sam_every_k, mixed_precision (no | bf16 | auto: bf16 where the device has it natively,
kl_utils.core.precision), and three keys that change only how the
same arithmetic is done (not what is learned; each changes float rounding, so they are part of a
run's config hash when set to anything but their default):
batching (pad | pack | bucket: kl_utils.training.batching; bucket does change batch composition),
logits (all | labelled: the LM head and softmax only at positions that carry a label),
fused (false | true: torch's fused AdamW kernel instead of the foreach one).
"""
from __future__ import annotations

import math
import os
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kl_utils.core import precision as precision_mod
from kl_utils.core.atomic import atomic_write
from kl_utils.training.batching import lazy_batches
from kl_utils.training.batching import pad_collate as collate  # the right-padded batch, kept under its old name
from kl_utils.config.schema import LOGITS, OPTIMIZERS, PRECISIONS  # noqa: F401 (the valid names, re-exported)
from kl_utils.config.schema import STAGE_DEFAULTS as DEFAULT  # a key a stage leaves out: kl_utils.config.schema
from kl_utils.config.schema import default


class TrainingForbidden(RuntimeError):
    """Raised by `train` when KL_NO_TRAIN is set (the redraw path must only read records)."""


# Model types whose logits are exactly lm_head(final hidden state): no soft-capping or scaling,
# so `logits: labelled` may apply the head to the labelled positions alone.
PLAIN_HEAD_MODELS = ("llama", "mistral", "qwen2", "qwen3")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_accelerator():
    """The process's Accelerator. accelerate keeps its state globally, so a new object shares the
    existing state (and is rebuilt if something reset it); its precision cannot change between
    stages, which is why mixed precision is applied per stage by `autocast_context`, and the shared
    state must say "no". A bf16 left there (by a Hugging Face `Trainer` with bf16=True in the same
    process, or `accelerate launch --mixed_precision bf16`) would wrap every later forward in bf16
    autocast, an fp32 stage included: found when `make bench`'s fp32 variant ran after its bf16
    `Trainer` run. That state is reset (the process's distributed state is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    accelerator = Accelerator()
    if accelerator.mixed_precision == "bf16":
        AcceleratorState._reset_state(reset_partial_state=False)
        accelerator = Accelerator(mixed_precision="no")
    return accelerator


def check_precision(mixed_precision: str) -> None:
    if mixed_precision == "fp16":
        raise ValueError("mixed_precision 'fp16' is not supported (SAM's two passes and a GradScaler "
                         "do not mix); use 'bf16', which needs no loss scaling")
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"unknown mixed_precision {mixed_precision!r}; valid: {', '.join(PRECISIONS)}")


def autocast_context(mixed_precision: str, device: torch.device):
    """bf16 autocast for the forward pass (weights and optimizer state stay fp32); `auto` is
    resolved for the device (kl_utils.core.precision)."""
    check_precision(mixed_precision)
    if precision_mod.resolve(mixed_precision, device.type) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def lm_loss(model, batch: dict, logits: str = "all") -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens of the batch.

    logits="labelled" computes the LM head (and the softmax) only at the positions whose next
    token carries a label: the same loss and gradient as the model's own (which computes logits
    for every position, padding and prompts included), for a fraction of the head's cost. Falls
    back to the model's own loss for a DDP-wrapped model (the forward must go through the
    wrapper) and for model types outside PLAIN_HEAD_MODELS."""
    if logits not in LOGITS:
        raise ValueError(f"unknown logits mode {logits!r}; valid: {', '.join(LOGITS)}")
    if logits == "all" or getattr(model, "module", None) is not None \
            or getattr(model.config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return model(**batch).loss
    labels = batch["labels"]
    hidden = model.get_decoder()(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    head_out = model.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(head_out.float(), target[keep])


def make_optimizer(model, cfg: dict) -> torch.optim.Optimizer:
    """AdamW (no weight decay on norms and biases), or SAM with AdamW as base optimizer."""
    name = cfg.get("optimizer", DEFAULT["optimizer"])
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    decay, no_decay = [], []
    for pname, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.get("weight_decay", DEFAULT["weight_decay"])},
              {"params": no_decay, "weight_decay": 0.0}]
    base_kwargs = {"lr": cfg["lr"], "betas": tuple(cfg.get("betas", DEFAULT["betas"]))}
    if cfg.get("fused"):
        base_kwargs["fused"] = True  # one kernel for the whole update (CPU and CUDA, torch >= 2.4)
    if name == "adamw":
        return torch.optim.AdamW(groups, **base_kwargs)
    from kl_utils.training.sam import SAM
    extra = {"every_k": cfg["sam_every_k"]} if cfg.get("sam_every_k", DEFAULT["sam_every_k"]) != 1 else {}
    return SAM(groups, torch.optim.AdamW, rho=cfg.get("rho", DEFAULT["rho"]),
               adaptive=cfg.get("adaptive", DEFAULT["adaptive"]), **extra, **base_kwargs)


def make_scheduler(optimizer, cfg: dict, total_steps: int):
    """Linear warm-up, then cosine decay to min_lr_frac of the peak learning rate."""
    warmup = int(round(cfg.get("warmup_frac", DEFAULT["warmup_frac"]) * total_steps))
    floor = cfg.get("min_lr_frac", DEFAULT["min_lr_frac"])

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_epoch(n_examples: int, cfg: dict) -> int:
    """Updates per epoch: micro-batches of batch_size / grad_accum, grouped by grad_accum (the
    last group of an epoch may be short)."""
    accum = cfg.get("grad_accum", DEFAULT["grad_accum"])
    return math.ceil(math.ceil(n_examples / (cfg["batch_size"] // accum)) / accum)


def total_steps(n_examples: int, cfg: dict) -> int:
    """Optimizer updates of a stage: max_steps when given (step-matched budgets), else epochs."""
    if cfg.get("max_steps"):
        return int(cfg["max_steps"])
    return cfg["epochs"] * steps_per_epoch(n_examples, cfg)


def epoch_batches(examples: list[dict], micro_batch: int, pad_id: int, seed: int, epoch: int, mode: str = "pad"):
    """The micro-batches of one epoch, in an order fixed by (seed, epoch) alone, so a run resumed
    from a checkpoint sees exactly the batches an uninterrupted run would (kl_utils.training.batching)."""
    return lazy_batches(examples, micro_batch, pad_id, seed, epoch, mode)


def _save_checkpoint(path, state: dict) -> None:
    """Atomic torch.save: a kill -9 mid-write leaves the previous checkpoint intact."""
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def train(model, examples: list[dict], cfg: dict, *, seed: int, pad_id: int, desc: str = "train",
          callback=None, accelerator=None, checkpoint=None,
          checkpoint_every: int = default("checkpoint_every")) -> dict:
    """Train `model` in place on encoded examples ({input_ids, labels}); returns the history.

    callback(epoch, model) -> dict is called after each epoch (e.g. an evaluation); its results
    land in history["epochs"].
    checkpoint: a file; when given, model / optimizer / scheduler / position are saved there
    every `checkpoint_every` updates and at the end, and a call that finds the file resumes
    from it (a finished stage just loads its weights and returns its history).
    """
    if not examples:
        raise ValueError(f"{desc}: no training examples")
    if os.environ.get("KL_NO_TRAIN"):  # `make figures`: a redraw that would train is a bug, not a slow path
        raise TrainingForbidden(f"{desc}: training is switched off (KL_NO_TRAIN is set: redrawing from committed "
                                "records); a record this needs is missing: `make reproduce` recomputes everything")
    set_seed(seed)
    accelerator = accelerator or get_accelerator()
    precision = cfg.get("mixed_precision", DEFAULT["mixed_precision"])
    check_precision(precision)
    precision = precision_mod.resolve(precision, accelerator.device.type)
    precision_mod.warn_slow_bf16(precision, accelerator.device.type)  # one line per process, before training
    accum = cfg.get("grad_accum", DEFAULT["grad_accum"])
    micro = cfg["batch_size"] // accum
    if micro * accum != cfg["batch_size"]:
        raise ValueError(f"{desc}: batch_size {cfg['batch_size']} is not divisible by grad_accum {accum}")
    # batch_size is per process: under DDP each process sees 1/num_processes of the examples.
    n_steps = total_steps(math.ceil(len(examples) / accelerator.num_processes), cfg)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, n_steps)
    history = {"step": [], "loss": [], "lr": [], "epochs": []}
    step, epoch, consumed = 0, 0, 0  # consumed: micro-batches already used in the current epoch
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        if state["done"]:
            model.eval()
            return state["history"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, consumed, history = state["step"], state["epoch"], state["consumed"], state["history"]

    def save(done: bool) -> None:
        if checkpoint is not None and accelerator.is_main_process:
            _save_checkpoint(checkpoint, {
                "model": accelerator.unwrap_model(model).state_dict(), "done": done, "step": step, "epoch": epoch,
                "consumed": consumed, "history": history,
                **({} if done else {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})})
    model = accelerator.prepare(model)
    model.train()
    # Bars honour TQDM_DISABLE / TQDM_MININTERVAL (set by `make reproduce` to keep notebooks small).
    bar = tqdm(total=n_steps, initial=step, desc=desc,
               **({} if accelerator.is_local_main_process else {"disable": True}))
    mode = cfg.get("batching", DEFAULT["batching"])
    while step < n_steps:
        if consumed == 0:
            epoch += 1
        # Each process takes every num_processes-th micro-batch (DDP sharding, a no-op on one device).
        batches = epoch_batches(examples, micro, pad_id, seed, epoch, mode)
        batches = batches[accelerator.process_index::accelerator.num_processes]
        while step < n_steps and consumed < len(batches):
            # A full group of grad_accum micro-batches, or what is left at the end of the epoch.
            pending = [{k: v.to(accelerator.device) for k, v in b.items()} for b in batches[consumed:consumed + accum]]
            loss = _update(model, optimizer, pending, cfg, accelerator, precision)
            scheduler.step()
            step += 1
            consumed += len(pending)
            history["step"].append(step)
            history["loss"].append(loss)
            history["lr"].append(scheduler.get_last_lr()[0])
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", epoch=epoch, refresh=False)
            if step % checkpoint_every == 0 and step < n_steps:
                save(done=False)
        consumed = 0
        if callback is not None and (step >= n_steps or not cfg.get("max_steps")):
            model.eval()
            history["epochs"].append({"epoch": epoch, "step": step, **callback(epoch, accelerator.unwrap_model(model))})
            model.train()
    bar.close()
    model.eval()
    save(done=True)
    return history


def _update(model, optimizer, micro_batches, cfg, accelerator, precision="no") -> float:
    """One optimizer update over the gradient-accumulation micro-batches; returns the mean loss."""
    def loss_fn(m, batch):
        with autocast_context(precision, accelerator.device):
            return lm_loss(m, batch, cfg.get("logits", DEFAULT["logits"]))
    inner = getattr(optimizer, "optimizer", optimizer)
    if hasattr(inner, "first_step"):
        from kl_utils.training.sam import sam_update  # lazily: only SAM runs need it
        return sam_update(inner, model, micro_batches, loss_fn, accelerator=accelerator,
                          max_grad_norm=cfg.get("grad_clip"))
    total = 0.0
    for i, batch in enumerate(micro_batches):
        # Only the last micro-batch all-reduces the accumulated gradient (no-op outside DDP).
        ctx = accelerator.no_sync(model) if i < len(micro_batches) - 1 else nullcontext()
        with ctx:
            loss = loss_fn(model, batch) / len(micro_batches)
            accelerator.backward(loss)
        total += loss.item()
    if cfg.get("grad_clip"):
        accelerator.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total

"""The training loop shared by every stage (base pre-training, continued pre-training (CPT) and
instruction tuning (IT)). Runs on `accelerate` (device, precision, multi-process), takes AdamW
or SAM from the config, and logs per-step loss and learning rate.

Train config keys (profiles/*.yaml): epochs | max_steps, batch_size, grad_accum, lr,
weight_decay, betas, warmup_frac, min_lr_frac, grad_clip, optimizer (adamw | sam), rho,
adaptive, sam_every_k, mixed_precision (no | bf16).
"""
from __future__ import annotations

import math
import random
from contextlib import nullcontext

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

OPTIMIZERS = ("adamw", "sam")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


PRECISIONS = ("no", "bf16")


def get_accelerator():
    """The process's Accelerator. accelerate keeps its state globally, so a new object shares the
    existing state (and is rebuilt if something reset it); its precision cannot change between
    stages, which is why mixed precision is applied per stage by `autocast_context`."""
    from accelerate import Accelerator
    return Accelerator()


def check_precision(mixed_precision: str) -> None:
    if mixed_precision == "fp16":
        raise ValueError("mixed_precision 'fp16' is not supported (SAM's two passes and a GradScaler "
                         "do not mix); use 'bf16', which needs no loss scaling")
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"unknown mixed_precision {mixed_precision!r}; valid: {', '.join(PRECISIONS)}")


def autocast_context(mixed_precision: str, device: torch.device):
    """bf16 autocast for the forward pass (weights and optimizer state stay fp32)."""
    check_precision(mixed_precision)
    if mixed_precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def collate(examples: list[dict], pad_id: int) -> dict:
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


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens of the batch."""
    return model(**batch).loss


def make_optimizer(model, cfg: dict) -> torch.optim.Optimizer:
    """AdamW (no weight decay on norms and biases), or SAM with AdamW as base optimizer."""
    name = cfg.get("optimizer", "adamw")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    decay, no_decay = [], []
    for pname, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.get("weight_decay", 0.0)},
              {"params": no_decay, "weight_decay": 0.0}]
    base_kwargs = {"lr": cfg["lr"], "betas": tuple(cfg.get("betas", (0.9, 0.999)))}
    if name == "adamw":
        return torch.optim.AdamW(groups, **base_kwargs)
    from kl_utils.sam import SAM
    extra = {"every_k": cfg["sam_every_k"]} if cfg.get("sam_every_k", 1) != 1 else {}
    return SAM(groups, torch.optim.AdamW, rho=cfg.get("rho", 0.05), adaptive=cfg.get("adaptive", False),
               **extra, **base_kwargs)


def make_scheduler(optimizer, cfg: dict, total_steps: int):
    """Linear warm-up, then cosine decay to min_lr_frac of the peak learning rate."""
    warmup = int(round(cfg.get("warmup_frac", 0.0) * total_steps))
    floor = cfg.get("min_lr_frac", 0.0)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_epoch(n_examples: int, cfg: dict) -> int:
    """Updates per epoch: micro-batches of batch_size / grad_accum, grouped by grad_accum (the
    last group of an epoch may be short)."""
    accum = cfg.get("grad_accum", 1)
    return math.ceil(math.ceil(n_examples / (cfg["batch_size"] // accum)) / accum)


def total_steps(n_examples: int, cfg: dict) -> int:
    """Optimizer updates of a stage: max_steps when given (step-matched budgets), else epochs."""
    if cfg.get("max_steps"):
        return int(cfg["max_steps"])
    return cfg["epochs"] * steps_per_epoch(n_examples, cfg)


def train(model, examples: list[dict], cfg: dict, *, seed: int, pad_id: int, desc: str = "train",
          callback=None, accelerator=None) -> dict:
    """Train `model` in place on encoded examples ({input_ids, labels}); returns the history.

    callback(epoch, model) -> dict is called after each epoch (e.g. an evaluation); its results
    land in history["epochs"].
    """
    if not examples:
        raise ValueError(f"{desc}: no training examples")
    set_seed(seed)
    accelerator = accelerator or get_accelerator()
    precision = cfg.get("mixed_precision", "no")
    check_precision(precision)
    micro = cfg["batch_size"] // cfg.get("grad_accum", 1)
    if micro * cfg.get("grad_accum", 1) != cfg["batch_size"]:
        raise ValueError(f"{desc}: batch_size {cfg['batch_size']} is not divisible by grad_accum {cfg.get('grad_accum', 1)}")
    loader = DataLoader(examples, batch_size=micro, shuffle=True, drop_last=False,
                        collate_fn=lambda b: collate(b, pad_id),
                        generator=torch.Generator().manual_seed(seed))
    n_steps = total_steps(len(examples), cfg)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, n_steps)
    model, loader = accelerator.prepare(model, loader)
    model.train()
    history = {"step": [], "loss": [], "lr": [], "epochs": []}
    step, epoch = 0, 0
    # Bars honour TQDM_DISABLE / TQDM_MININTERVAL (set by `make reproduce` to keep notebooks small).
    bar = tqdm(total=n_steps, desc=desc, **({} if accelerator.is_local_main_process else {"disable": True}))
    while step < n_steps:
        epoch += 1
        batches = iter(loader)
        while step < n_steps:
            # A full group of grad_accum micro-batches, or what is left at the end of the epoch.
            pending = [b for _, b in zip(range(cfg.get("grad_accum", 1)), batches)]
            if not pending:
                break
            loss = _update(model, optimizer, pending, cfg, accelerator, precision)
            scheduler.step()
            step += 1
            history["step"].append(step)
            history["loss"].append(loss)
            history["lr"].append(scheduler.get_last_lr()[0])
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", epoch=epoch, refresh=False)
        if callback is not None and (step >= n_steps or not cfg.get("max_steps")):
            model.eval()
            history["epochs"].append({"epoch": epoch, "step": step, **callback(epoch, accelerator.unwrap_model(model))})
            model.train()
    bar.close()
    model.eval()
    return history


def _update(model, optimizer, micro_batches, cfg, accelerator, precision="no") -> float:
    """One optimizer update over the gradient-accumulation micro-batches; returns the mean loss."""
    def loss_fn(m, batch):
        with autocast_context(precision, accelerator.device):
            return lm_loss(m, batch)
    inner = getattr(optimizer, "optimizer", optimizer)
    if hasattr(inner, "first_step"):
        from kl_utils.sam import sam_update  # lazily: only SAM runs need it
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

"""Shared by the speed benchmarks (kl_utils.tools.bench, kl_utils.tools.bench_llm): Hugging Face `Trainer` runs
with the same data, batch size, schedule and steps as ours, and the labelled tokens a timed run trains on."""
from __future__ import annotations

import contextlib
import io
import time

from kl_utils.training import batching


def labelled_tokens(batch: dict) -> int:
    """Tokens that carry loss (the causal shift drops each row's first label)."""
    return int((batch["labels"][:, 1:] != -100).sum())


def hf_trainer_run(model, examples, cfg, n_steps, pad_id, seed, out_dir, optim=None, bf16=False, sam=None):
    """sam: {"rho": .., "every_k": ..} trains with kl_utils' SAMTrainer instead of the plain Trainer."""
    from transformers import Trainer, TrainingArguments

    from kl_utils.training.sam_trainer import SAMTrainer, SAMTrainingArguments
    counted = []

    def collate(b):
        batch = batching.pad_collate(b, pad_id)
        counted.append(labelled_tokens(batch))
        return batch
    args_cls, trainer_cls = (SAMTrainingArguments, SAMTrainer) if sam else (TrainingArguments, Trainer)
    extra = {"sam_rho": sam["rho"], "sam_every_k": sam.get("every_k", 1)} if sam else {}
    args = args_cls(
        output_dir=out_dir, per_device_train_batch_size=cfg["batch_size"], max_steps=n_steps,
        learning_rate=cfg["lr"], weight_decay=cfg["weight_decay"], adam_beta1=cfg["betas"][0],
        adam_beta2=cfg["betas"][1], warmup_steps=max(1, int(cfg["warmup_frac"] * n_steps)),
        lr_scheduler_type="cosine", max_grad_norm=cfg["grad_clip"], logging_strategy="no",
        save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=seed,
        dataloader_num_workers=0, remove_unused_columns=False, bf16=bf16, **({"optim": optim} if optim else {}), **extra)
    trainer = trainer_cls(model=model, args=args, train_dataset=examples, data_collator=collate)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Trainer prints its summary dict
        trainer.train()
    # Trainer's dataloader collates one batch ahead of the step it trains (7 collations for 6 steps):
    # count the batches it trained on, not the ones it prepared
    return sum(counted[:n_steps]), time.perf_counter() - t0


def first_batches(examples, micro, pad_id, seed, mode, n) -> list[dict]:
    """The first n micro-batches train.train sees (grad_accum 1), running on into later epochs
    when an epoch has fewer than n: the tokens a timed n-step run really trains on."""
    out, epoch = [], 0
    while len(out) < n:
        epoch += 1
        out += list(batching.lazy_batches(examples, micro, pad_id, seed, epoch, mode)[:n - len(out)])
    return out

"""The paper profile on GPUs: the plan printed before a run (tokens, steps, memory, time) and a
throughput check (tokens/s, model FLOPs utilization, peak memory).

    python -m kl_utils.tools.paper plan --profile paper [--arm format_sam] [--gpus 8] [--gpu H100]
    python -m kl_utils.tools.paper gpu-check --profile paper [--steps 200]      (make gpu-check)
    accelerate launch --config_file accelerate_configs/multi_gpu_ddp.yaml \
        -m kl_utils.protocol.run --profile paper --arms baseline format

Estimates are first-order (stated in each function) and meant to catch a plan that cannot fit or
will take days, not to replace the measured figures of `gpu-check`.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from kl_utils.core.command import UserError, positive_int

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A6000": 155e12,
              "RTX 4090": 165e12, "A10": 125e12}
ASSUMED_MFU = 0.35  # for time estimates before anything was measured


def gpu_peak_flops(name: str | None = None) -> float | None:
    """Peak bf16 FLOP/s of a GPU name ("H100", or torch's device name); None when unknown / CPU."""
    if name is None:
        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_FLOPS.items() if k.lower() in name.lower()), None)


def model_shape(model_cfg: dict) -> dict:
    """Parameters and sizes of the profile's model, from its config alone (no weights loaded)."""
    if model_cfg.get("pretrained"):
        from transformers import AutoConfig
        from kl_utils.core.hub import from_pretrained
        from kl_utils.training.pretrained import resolve  # a packaged model: its converted folder
        c = from_pretrained(AutoConfig, resolve(model_cfg["pretrained"]), "model config")
        shape = {"hidden": c.hidden_size, "layers": c.num_hidden_layers, "heads": c.num_attention_heads,
                 "kv_heads": getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
                 "intermediate": c.intermediate_size, "vocab": c.vocab_size,
                 "tied": bool(getattr(c, "tie_word_embeddings", False))}
    else:
        shape = {"hidden": model_cfg["hidden_size"], "layers": model_cfg["num_layers"], "heads": model_cfg["num_heads"],
                 "kv_heads": model_cfg.get("num_kv_heads", model_cfg["num_heads"]),
                 "intermediate": model_cfg["intermediate_size"], "vocab": model_cfg.get("vocab_size", 32000),
                 "tied": model_cfg.get("tie_word_embeddings", True)}
    h, kv = shape["hidden"], shape["hidden"] // shape["heads"] * shape["kv_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * shape["intermediate"]  # q, o, k, v; gated MLP
    shape["non_embedding_params"] = shape["layers"] * per_layer
    shape["params"] = shape["non_embedding_params"] + shape["vocab"] * h * (1 if shape["tied"] else 2)
    return shape


def flops_per_token(shape: dict, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (forward + backward matmuls) + 12 L d T attention scores
    (the PaLM appendix formula); the recompute of gradient checkpointing is not counted."""
    return 6 * shape["params"] + 12 * shape["layers"] * shape["hidden"] * seq_len


def memory_gib(shape: dict, stage_cfg: dict, seq_len: int, micro_batch: int, n_gpus: int = 1,
               sharded: bool = False, checkpointing: bool = True) -> float:
    """Per-GPU memory: fp32 weights + fp32 grads + AdamW's two moments (16 bytes/param), + 4 for
    SAM's saved weights; divided by n_gpus when sharded (FSDP). Activations: with checkpointing
    one bf16 hidden state per layer and token, plus one layer's working set (~34 h bytes/token)
    and the fp32 logits; without, ~34 h bytes per layer and token (Korthikanti et al. 2022)."""
    per_param = 16 + (4 if stage_cfg.get("optimizer") == "sam" else 0)
    states = shape["params"] * per_param / (n_gpus if sharded else 1)
    tokens = seq_len * micro_batch
    h, layers = shape["hidden"], shape["layers"]
    acts = tokens * (2 * h * layers + 34 * h) if checkpointing else tokens * 34 * h * layers
    logits = tokens * shape["vocab"] * 4 * 2  # fp32 logits and their gradient
    return (states + acts + logits) / 2 ** 30


def stage_plan(name: str, encoded: list[dict], stage_cfg: dict, shape: dict, n_gpus: int,
               peak: float | None, sharded: bool, checkpointing: bool) -> dict:
    """Tokens, optimizer steps, memory and time of one training stage over encoded examples."""
    from kl_utils.training.train import total_steps
    lengths = [len(ex["input_ids"]) for ex in encoded]
    steps = total_steps(len(encoded), stage_cfg)
    epochs = steps / max(1, math.ceil(len(encoded) / stage_cfg["batch_size"]))
    tokens = int(sum(lengths) * epochs)
    seq_len = max(lengths)
    micro = max(1, stage_cfg["batch_size"] // stage_cfg.get("grad_accum", 1))  # per process, as in train.py
    passes = 2 if stage_cfg.get("optimizer") == "sam" else 1  # SAM: two forward-backward passes
    every = stage_cfg.get("sam_every_k", 1)
    passes = 1 + (passes - 1) / every
    flops = tokens * flops_per_token(shape, seq_len) * passes
    seconds = flops / (n_gpus * peak * ASSUMED_MFU) if peak else None
    return {"stage": name, "examples": len(encoded), "tokens": tokens, "steps": steps,
            "max_len": seq_len, "micro_batch_per_gpu": micro, "pflops": flops / 1e15,
            "memory_gib_per_gpu": memory_gib(shape, stage_cfg, seq_len, micro, n_gpus, sharded, checkpointing),
            "hours": seconds / 3600 if seconds else None}


def plan(cfg: dict, ds, tok, arm: str = "baseline", seed: int = 0, n_gpus: int = 1,
         gpu: str | None = None, sharded: bool = False, log=print) -> dict:
    """The plan of one arm and seed: CPT and IT tokens, steps, estimated memory and time, printed
    as a table. Uses the same documents and encodings as `experiment.run_arm`."""
    from kl_utils.data import dataset as data
    from kl_utils.protocol import experiment
    arm_cfg, _, run_id = experiment.arm_spec(cfg, arm, seed)
    shape = model_shape(cfg["model"])
    peak = gpu_peak_flops(gpu)
    new = ds.filter(lambda r: r["population"] == "new")
    cpt = data.encode_documents(experiment.cpt_documents(new, arm_cfg["cpt"], seed), tok)
    it = data.encode_qa(experiment.it_examples(ds, "train", arm_cfg["it"], seed), tok)
    ckpt = bool(cfg["model"].get("gradient_checkpointing"))
    stages = [stage_plan("CPT", cpt, arm_cfg["cpt"], shape, n_gpus, peak, sharded, ckpt),
              stage_plan("IT", it, arm_cfg["it"], shape, n_gpus, peak, sharded, ckpt)]
    log(f"plan {run_id}: model {cfg['model'].get('pretrained', 'from config')} "
        f"({shape['params'] / 1e9:.2f} B parameters), {n_gpus} x {gpu or 'GPU (unknown peak)'}"
        f"{', sharded (FSDP)' if sharded else ''}; time at an assumed MFU of {ASSUMED_MFU:.0%}")
    log(f"{'stage':<6}{'examples':>10}{'tokens':>14}{'steps':>8}{'max len':>9}{'mem GiB/GPU':>13}"
        f"{'PFLOP':>10}{'hours':>8}")
    for s in stages:
        hours = f"{s['hours']:.2f}" if s["hours"] is not None else "?"
        log(f"{s['stage']:<6}{s['examples']:>10,}{s['tokens']:>14,}{s['steps']:>8,}{s['max_len']:>9}"
            f"{s['memory_gib_per_gpu']:>13.1f}{s['pflops']:>10.1f}{hours:>8}")
    return {"run_id": run_id, "shape": shape, "stages": stages}


def gpu_check(cfg: dict, steps: int = 200, seq_len: int = 512, log=print) -> dict:
    """`steps` CPT updates of the profile's model and settings (optimizer, precision, batch size,
    checkpointing) on random tokens of length seq_len: tokens/s, model FLOPs utilization (both
    SAM passes counted as useful), peak memory. Runs anywhere; MFU only where the peak is known."""
    from kl_utils.protocol import experiment
    from kl_utils.training.train import get_accelerator, train

    class _Vocab:  # initial_model only needs the tokenizer's size
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n
    if not cfg["model"].get("pretrained"):
        raise UserError("gpu-check needs a profile with model.pretrained (e.g. paper); this one trains its model from scratch")
    shape = model_shape(cfg["model"])
    model, _ = experiment.initial_model("gpu-check", cfg, None, _Vocab(shape["vocab"]), seed=0, log=log)
    gen = torch.Generator().manual_seed(0)
    n_examples = cfg["cpt"]["batch_size"] * 4
    examples = [{"input_ids": ids, "labels": ids} for ids in
                torch.randint(0, shape["vocab"], (n_examples, seq_len), generator=gen).tolist()]
    stage = {**cfg["cpt"], "max_steps": steps, "warmup_frac": 0.0}
    accelerator = get_accelerator()
    train(model, examples, {**stage, "max_steps": 2}, seed=0, pad_id=0, desc="warm-up")  # allocator, kernels
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(model, examples, stage, seed=0, pad_id=0, desc="gpu-check")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    n_dev = accelerator.num_processes
    tokens = steps * cfg["cpt"]["batch_size"] * seq_len * n_dev  # batch_size is per process (accelerate)
    passes = 2 if cfg["cpt"].get("optimizer") == "sam" else 1
    tokens_per_s = tokens / seconds
    peak = gpu_peak_flops()
    mfu = tokens_per_s * flops_per_token(shape, seq_len) * passes / (peak * n_dev) if peak else None
    peak_mem = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None
    out = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "processes": n_dev,
           "params": shape["params"], "steps": steps, "seq_len": seq_len, "batch_size": cfg["cpt"]["batch_size"],
           "optimizer": cfg["cpt"].get("optimizer", "adamw"), "seconds": seconds, "tokens_per_s": tokens_per_s,
           "mfu": mfu, "peak_memory_gib": peak_mem}
    if accelerator.is_main_process:
        log(f"gpu-check on {out['device']} x {n_dev}: {steps} {out['optimizer']} steps of {out['batch_size']} x "
            f"{seq_len} tokens in {seconds:.1f} s: {tokens_per_s:,.0f} tokens/s, MFU "
            f"{'%.1f%%' % (100 * mfu) if mfu is not None else 'n/a (unknown peak)'}, peak memory "
            f"{'%.1f GiB' % peak_mem if peak_mem is not None else 'n/a (CPU)'}")
    return out


def notebook_launch(profile: str, arms: list[str], seeds: list[int], num_processes: int) -> None:
    """Multi-GPU from a notebook: `notebook_launcher` forks one process per GPU running
    `kl_utils.protocol.run` (it ignores accelerate config files; no CUDA call may precede it)."""
    from accelerate import notebook_launcher
    from kl_utils.protocol import run
    argv = ["--profile", profile, "--arms", *arms, "--seeds", *map(str, seeds)]
    notebook_launcher(run.main, (argv,), num_processes=num_processes)


def main(argv=None) -> int:
    from kl_utils.protocol import experiment
    from kl_utils.config.profiles import load_config
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="tokens, steps, memory and time of one arm (builds the data cache)")
    p.add_argument("--arm", default="baseline")
    p.add_argument("--gpus", type=positive_int, default=max(1, torch.cuda.device_count()))
    p.add_argument("--gpu", default=None, help="GPU name for the peak FLOP/s (default: this machine's)")
    p.add_argument("--sharded", action="store_true", help="FSDP: optimizer state sharded over the GPUs")
    g = sub.add_parser("gpu-check", help="throughput, MFU and peak memory of the profile's CPT update")
    g.add_argument("--steps", type=positive_int, default=200)
    g.add_argument("--seq-len", type=positive_int, default=512)
    for q in (p, g):
        q.add_argument("--profile", default=None)
    args = ap.parse_args(argv)
    profile, cfg = load_config(args.profile)
    if args.cmd == "plan":
        ds, tok, _ = experiment.prepare_data(profile, cfg)
        plan(cfg, ds, tok, arm=args.arm, n_gpus=args.gpus, gpu=args.gpu, sharded=args.sharded)
    else:
        gpu_check(cfg, steps=args.steps, seq_len=args.seq_len)
    return 0


if __name__ == "__main__":
    import sys

    from kl_utils.core.command import entry
    sys.exit(entry(main))

"""Speed on the real pretrained model (cpu-llm: SmolLM2-135M), measured side by side in one process.

    python -m kl_utils.tools.bench_llm [--steps 6] [--rounds 2]      (also part of `make bench`)

Every variant trains a fresh copy of the model for the same number of CPT updates on the same
documents (the cpu-llm profile's first data draw, its CPT batch size), one thread, in rotating order
over `rounds` rounds after a short warm-up; reported are medians. The variants run in the host's
precision (`mixed_precision: auto`, kl_utils.core.precision: bf16 where the CPU has AVX-512 BF16 or
AMX, else fp32), and bf16 is timed only where it is native (elsewhere it is ~18x slower and the bench
says so instead of spending 20 minutes on it):
- ours (train.train as cpu-llm runs it: packed batches, LM head on labelled positions only, fused
  AdamW) against Hugging Face `Trainer` (padded batches, its default fused AdamW): labelled tokens/s;
- SAM / AdamW: seconds per update of the same loop with `optimizer: sam` (two forward-backwards);
- SAMTrainer (kl_utils.training.sam_trainer) against the plain `Trainer` with AdamW (SAM's physical cost is
  two passes: how close to 2.0x it is) and against our SAM loop, and with `sam_every_k` = 2 and 4
  ((k+1)/k passes: 1.5x and 1.25x ideally);
- bf16 / fp32: the speed-up of bf16 autocast over float32 (native bf16 only);
- the host's large-matmul rate (2048^3, one thread) in each precision it runs natively, and our
  training step's FLOP rate as a fraction of it: the CPU's equivalent of MFU, comparable across hosts.
  A step's FLOPs are 6 x parameters x token positions (forward 2, backward 4; the attention's
  sequence-squared term, small at these lengths, is left out).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from kl_utils.core import precision
from kl_utils.data import dataset as data
from kl_utils.protocol import experiment
from kl_utils.training import train as train_mod
from kl_utils.tools.bench_trainer import first_batches, hf_trainer_run, labelled_tokens
from kl_utils.config.profiles import read_profile

PROFILE = "cpu-llm"
NO_NATIVE_BF16 = "no native bf16 on this CPU"


def variants(native_bf16: bool) -> tuple[str, ...]:
    """The timed variants: in bf16 with fp32 beside it where bf16 is native, in fp32 alone elsewhere."""
    p = "bf16" if native_bf16 else "fp32"
    sam_trainer = tuple(f"sam_trainer_k{k}_{p}" for k in SAM_TRAINER_EVERY_K)
    if native_bf16:
        return ("ours_bf16", "hf_trainer_bf16", "ours_fp32", "ours_sam_bf16") + sam_trainer
    return ("ours_fp32", "hf_trainer_fp32", "ours_sam_fp32") + sam_trainer


SAM_TRAINER_EVERY_K = (1, 2, 4)
SAM_RHO = 0.05


def _model(cfg):
    from kl_utils.training.model import load_model
    return load_model(experiment.resolve_pretrained(cfg["model"]["pretrained"]), dtype=torch.float32)


def _stage_cfg(cfg: dict, variant: str, steps: int) -> dict:
    c = {k: v for k, v in cfg["cpt"].items() if k != "epochs"}
    c["max_steps"] = steps
    c["mixed_precision"] = "bf16" if variant.endswith("_bf16") else "no"
    if variant.startswith("ours_sam"):
        c.update(optimizer="sam", rho=SAM_RHO)
    return c


def step_flops(n_params: int, batches: list[dict]) -> float:
    """Training FLOPs of the batches: 6 x parameters x token positions computed."""
    return 6.0 * n_params * sum(int(b["input_ids"].numel()) for b in batches)


def run(steps: int = 6, rounds: int = 2, verbose: bool = True, native_bf16: bool | None = None) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(steps, rounds, verbose, native_bf16)
    finally:
        torch.set_num_threads(threads)  # the caller's (a test session's) thread count, as it was


def _run(steps: int, rounds: int, verbose: bool, native_bf16: bool | None) -> dict:
    native = precision.cpu_native_bf16() if native_bf16 is None else native_bf16
    timed = variants(native)
    head = "bf16" if native else "fp32"  # the host's precision (auto): the headline variants run in it
    cfg = read_profile(PROFILE)
    ds, tok, _ = experiment.prepare_data(PROFILE, experiment.seed_config(cfg, 0))
    docs = data.encode_documents(data.documents(ds, population="new"), tok)
    micro = cfg["cpt"]["batch_size"]
    packed = first_batches(docs, micro, tok.pad_token_id, 0, "pack", steps)
    useful = {"pack": sum(labelled_tokens(b) for b in packed),
              "pad": sum(labelled_tokens(b) for b in first_batches(docs, micro, tok.pad_token_id, 0, "pad", steps))}
    seconds = {v: [] for v in timed}
    with tempfile.TemporaryDirectory() as tmp:
        warm = _model(cfg)
        n_params = sum(p.numel() for p in warm.parameters())
        train_mod.train(warm, docs, _stage_cfg(cfg, f"ours_{head}", 1), seed=0, pad_id=tok.pad_token_id, desc="warm-up")
        for rnd in range(rounds):
            for v in (timed if rnd % 2 == 0 else timed[::-1]):
                model = _model(cfg)
                if v.startswith(("hf_trainer", "sam_trainer")):
                    sam = {"rho": SAM_RHO, "every_k": int(v.split("_")[2][1:])} if v.startswith("sam_") else None
                    n, s = hf_trainer_run(model, docs, _stage_cfg(cfg, v, steps), steps, tok.pad_token_id, 0, tmp,
                                           bf16=v.endswith("_bf16"), sam=sam)
                    useful["hf"] = n
                else:
                    t0 = time.perf_counter()
                    train_mod.train(model, docs, _stage_cfg(cfg, v, steps), seed=0, pad_id=tok.pad_token_id, desc=v)
                    s = time.perf_counter() - t0
                seconds[v].append(s)
                if verbose:
                    print(f"  round {rnd + 1} {v:<16}{s:8.1f} s for {steps} updates")
    med = {v: statistics.median(s) for v, s in seconds.items()}
    tps_ours, tps_hf = useful["pack"] / med[f"ours_{head}"], useful["hf"] / med[f"hf_trainer_{head}"]
    # the host's arithmetic: matmul rate in each precision it runs natively, and our step as a fraction of it
    rates = {"fp32": precision.matmul_gflops("float32", threads=1)}
    if native:
        rates["bf16"] = precision.matmul_gflops("bfloat16", threads=1)
    step_gflops = {p: step_flops(n_params, packed) / med[f"ours_{p}"] / 1e9 for p in rates}
    figures = {"llm_precision": head, "llm_train_tokens_per_s": tps_ours, "llm_hf_trainer_tokens_per_s": tps_hf,
               "llm_train_over_hf_trainer": tps_ours / tps_hf,
               "llm_sam_over_adamw": med[f"ours_sam_{head}"] / med[f"ours_{head}"],
               "llm_sam_trainer_over_hf_trainer": med[f"sam_trainer_k1_{head}"] / med[f"hf_trainer_{head}"],
               "llm_sam_trainer_over_ours_sam": med[f"sam_trainer_k1_{head}"] / med[f"ours_sam_{head}"],
               **{f"llm_sam_trainer_every{k}_over_hf_trainer": med[f"sam_trainer_k{k}_{head}"] / med[f"hf_trainer_{head}"]
                  for k in SAM_TRAINER_EVERY_K[1:]},
               "llm_bf16_over_fp32": med["ours_fp32"] / med["ours_bf16"] if native else NO_NATIVE_BF16,
               **{f"matmul_gflops_{p}": r for p, r in rates.items()},
               **({} if native else {"matmul_gflops_bf16": NO_NATIVE_BF16}),
               **{f"llm_step_matmul_fraction_{p}": step_gflops[p] / rates[p] for p in rates}}
    if verbose:
        for k, v in figures.items():
            print(f"  {k:<34}{v:>10.3f}" if isinstance(v, float) else f"  {k:<34}{v:>10}")
    return {**figures, "details": {"seconds": seconds, "labelled_tokens": useful, "steps": steps, "rounds": rounds,
                                   "batch_size": micro, "threads": 1, "model": cfg["model"]["pretrained"],
                                   "parameters": n_params, "step_gflops_per_s": step_gflops,
                                   "native_bf16": native, "cpu": precision.host_arithmetic("cpu")}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="CPT updates per timed run")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds (rotating order) after one warm-up update")
    args = ap.parse_args(argv)
    return run(args.steps, args.rounds)


if __name__ == "__main__":
    main()

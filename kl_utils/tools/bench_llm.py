"""Speed on the real pretrained model (cpu-llm: SmolLM2-135M), measured side by side in one process.

    python -m kl_utils.tools.bench_llm [--steps 6] [--rounds 2]      (also part of `make bench`)

Every variant trains a fresh copy of the model for the same number of CPT updates on the same
documents (the cpu-llm profile's first data draw, its CPT batch size), one thread, in rotating order
over `rounds` rounds after a short warm-up; reported are medians:
- ours (train.train as cpu-llm runs it: bf16 autocast, packed batches, LM head on labelled positions
  only, fused AdamW) against Hugging Face `Trainer` (bf16, padded batches, its default fused AdamW):
  labelled tokens per second;
- SAM / AdamW: seconds per update of the same loop with `optimizer: sam` (two forward-backwards);
- bf16 / fp32: the speed-up of bf16 autocast over float32 (the CPU has AVX-512 BF16 or not:
  records.cpu_info names it).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from kl_utils.data import dataset as data
from kl_utils.protocol import experiment
from kl_utils.training import train as train_mod
from kl_utils.tools.bench_trainer import first_batches, hf_trainer_run, labelled_tokens
from kl_utils.config.profiles import read_profile

PROFILE = "cpu-llm"
VARIANTS = ("ours_bf16", "hf_trainer_bf16", "ours_fp32", "ours_sam_bf16")


def _model(cfg):
    from kl_utils.training.model import load_model
    return load_model(experiment.resolve_pretrained(cfg["model"]["pretrained"]), dtype=torch.float32)


def _stage_cfg(cfg: dict, variant: str, steps: int) -> dict:
    c = {k: v for k, v in cfg["cpt"].items() if k != "epochs"}
    c["max_steps"] = steps
    if variant == "ours_fp32":
        c["mixed_precision"] = "no"
    if variant == "ours_sam_bf16":
        c.update(optimizer="sam", rho=0.05)
    return c


def run(steps: int = 6, rounds: int = 2, verbose: bool = True) -> dict:
    torch.set_num_threads(1)
    cfg = read_profile(PROFILE)
    ds, tok, _ = experiment.prepare_data(PROFILE, experiment.seed_config(cfg, 0))
    docs = data.encode_documents(data.documents(ds, population="new"), tok)
    micro = cfg["cpt"]["batch_size"]
    useful = {m: sum(labelled_tokens(b) for b in first_batches(docs, micro, tok.pad_token_id, 0, mode, steps))
              for m, mode in (("pack", "pack"), ("pad", "pad"))}
    seconds = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        warm = _model(cfg)
        train_mod.train(warm, docs, _stage_cfg(cfg, "ours_bf16", 1), seed=0, pad_id=tok.pad_token_id, desc="warm-up")
        for rnd in range(rounds):
            for v in (VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]):
                model = _model(cfg)
                if v == "hf_trainer_bf16":
                    n, s = hf_trainer_run(model, docs, _stage_cfg(cfg, v, steps), steps, tok.pad_token_id, 0, tmp,
                                           bf16=True)
                    useful["hf"] = n
                else:
                    t0 = time.perf_counter()
                    train_mod.train(model, docs, _stage_cfg(cfg, v, steps), seed=0, pad_id=tok.pad_token_id, desc=v)
                    s = time.perf_counter() - t0
                seconds[v].append(s)
                if verbose:
                    print(f"  round {rnd + 1} {v:<16}{s:8.1f} s for {steps} updates")
    med = {v: statistics.median(s) for v, s in seconds.items()}
    tps_ours, tps_hf = useful["pack"] / med["ours_bf16"], useful["hf"] / med["hf_trainer_bf16"]
    figures = {"llm_train_tokens_per_s": tps_ours, "llm_hf_trainer_tokens_per_s": tps_hf,
               "llm_train_over_hf_trainer": tps_ours / tps_hf,
               "llm_sam_over_adamw": med["ours_sam_bf16"] / med["ours_bf16"],
               "llm_bf16_over_fp32": med["ours_fp32"] / med["ours_bf16"]}
    if verbose:
        for k, v in figures.items():
            print(f"  {k:<32}{v:10.3f}")
    return {**figures, "details": {"seconds": seconds, "labelled_tokens": useful, "steps": steps, "rounds": rounds,
                                   "batch_size": micro, "threads": 1, "model": cfg["model"]["pretrained"]}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="CPT updates per timed run")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds (rotating order) after one warm-up update")
    args = ap.parse_args(argv)
    return run(args.steps, args.rounds)


if __name__ == "__main__":
    main()

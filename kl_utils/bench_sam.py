"""Speed of SAM vs AdamW on the study's CPU-sized LlamaForCausalLM, measured side by side.

    python -m kl_utils.bench_sam [--rounds 8] [--threads N] [--json out.json]

Each round times, in rotating order, one cycle of `cycle` optimizer updates (a multiple of every
every_k, so an every_k cycle contains its SAM and plain updates in the right proportion) for:
AdamW (1 forward-backward + clip + step), SAM (`sam_update`: 2 forward-backwards), and SAM with
every_k in `every_ks`. Reported: median seconds per update over rounds and the ratios to AdamW.
Targets: sam_over_adamw <= 2.05, efficient_sam_over_adamw (every_k = efficient_k) <= 1.3.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from kl_utils.sam import SAM, sam_update


def build_model(vocab=1200, hidden=128, layers=4, heads=4, intermediate=512, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=256)
    return LlamaForCausalLM(cfg)


def _loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def run(n_steps: int = 8, warmup: int = 1, batch: int = 32, seq: int = 64, threads: int | None = None,
        every_ks: tuple[int, ...] = (2, 4), efficient_k: int = 4, max_grad_norm: float | None = 1.0,
        lr: float = 1e-3, rho: float = 0.05, verbose: bool = True) -> dict:
    """n_steps: number of timed rounds (each round runs `cycle` updates of every method)."""
    if threads is not None:
        torch.set_num_threads(threads)
    every_ks = tuple(sorted(set(every_ks) | {efficient_k}))
    cycle = math.lcm(*every_ks)
    ids = torch.randint(0, 1200, (batch, seq), generator=torch.Generator().manual_seed(0))

    def adamw_update(model, opt):
        opt.zero_grad(set_to_none=True)
        _loss(model, ids).backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()

    methods = {}
    m = build_model()
    methods["adamw"] = (m, torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01), adamw_update)
    for name, k in [("sam", 1)] + [(f"sam_every_{k}", k) for k in every_ks]:
        m = build_model()
        opt = SAM(m.parameters(), torch.optim.AdamW, rho=rho, every_k=k, lr=lr, weight_decay=0.01)
        methods[name] = (m, opt, lambda model, o: sam_update(o, model, [ids], _loss, max_grad_norm=max_grad_norm))
    for m, _, _ in methods.values():
        m.train()

    names = list(methods)
    times = {n: [] for n in names}
    for rnd in range(warmup + n_steps):
        order = names[rnd % len(names):] + names[:rnd % len(names)]  # rotate: no fixed position bias
        for n in order:
            model, opt, update = methods[n]
            t0 = time.perf_counter()
            for _ in range(cycle):
                update(model, opt)
            if rnd >= warmup:
                times[n].append((time.perf_counter() - t0) / cycle)

    med = {n: statistics.median(v) for n, v in times.items()}
    out = {f"{n}_s_per_update": med[n] for n in names}
    for n in names[1:]:
        out[f"{n}_over_adamw"] = med[n] / med["adamw"]
    out["efficient_sam_over_adamw"] = med[f"sam_every_{efficient_k}"] / med["adamw"]
    out["efficient_mode"] = f"every_k={efficient_k}"
    out["config"] = dict(batch=batch, seq=seq, rounds=n_steps, updates_per_round=cycle,
                         threads=torch.get_num_threads(), max_grad_norm=max_grad_norm,
                         n_params=sum(p.numel() for p in methods["adamw"][0].parameters()))
    if verbose:
        print(f"{'method':<14}{'s/update':>10}{'x adamw':>9}")
        for n in names:
            print(f"{n:<14}{med[n]:>10.4f}{med[n] / med['adamw']:>9.3f}")
        print(f"sam_over_adamw = {out['sam_over_adamw']:.3f} (target <= 2.05)")
        print(f"efficient_sam_over_adamw = {out['efficient_sam_over_adamw']:.3f} "
              f"({out['efficient_mode']}, target <= 1.3)")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the result dict here")
    args = ap.parse_args(argv)
    res = run(n_steps=args.rounds, threads=args.threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()

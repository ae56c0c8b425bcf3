"""Speed of SAM vs AdamW on the study's CPU-sized LlamaForCausalLM, measured side by side.

    python -m kl_utils.tools.bench_sam [--steps 24] [--threads N] [--json out.json]

Methods: AdamW (1 forward-backward + clip + step), SAM (`sam_update`: 2 forward-backwards + clip
+ perturb/restore/step), and SAM with every_k in `every_ks` (SAM on every k-th update, plain AdamW
in between). Each round runs one update of every method, in rotating order, on its own copy of
the model and one fixed batch. Reported: seconds per update (median per update kind, weighted by
the every_k share of SAM updates) and the ratios to AdamW.
Targets: sam_over_adamw <= 2.05, efficient_sam_over_adamw (every_k = efficient_k) <= 1.3.
On a shared 2-core machine, --threads 1 gives far steadier numbers than 2 contended threads.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from kl_utils.training.sam import SAM, sam_update


def build_model(vocab=1200, hidden=128, layers=4, heads=4, intermediate=512, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=256)
    return LlamaForCausalLM(cfg)


def _loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def run(n_steps: int = 24, warmup: int = 2, batch: int = 32, seq: int = 64, threads: int | None = None,
        every_ks: tuple[int, ...] = (2, 4), efficient_k: int = 4, max_grad_norm: float | None = 1.0,
        lr: float = 1e-3, rho: float = 0.05, verbose: bool = True) -> dict:
    """n_steps: timed updates per method (rounded up to a multiple of every every_k)."""
    if threads is not None:
        torch.set_num_threads(threads)
    every_ks = tuple(sorted(set(every_ks) | {efficient_k}))
    cycle = math.lcm(*every_ks)
    n_steps = -(-n_steps // cycle) * cycle  # whole every_k cycles: both update kinds get sampled
    ids = torch.randint(0, 1200, (batch, seq), generator=torch.Generator().manual_seed(0))

    def adamw_update(model, opt):
        opt.zero_grad(set_to_none=True)
        _loss(model, ids).backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()

    methods = {}
    m = build_model()
    methods["adamw"] = (m, torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01), adamw_update, 0)
    for name, k in [("sam", 1)] + [(f"sam_every_{k}", k) for k in every_ks]:
        m = build_model()
        opt = SAM(m.parameters(), torch.optim.AdamW, rho=rho, every_k=k, lr=lr, weight_decay=0.01)
        methods[name] = (m, opt, lambda model, o: sam_update(o, model, [ids], _loss, max_grad_norm=max_grad_norm), k)
    for m, *_ in methods.values():
        m.train()

    # One update of every method per round (rotating order), so load drifts hit all methods alike.
    # Per-update cost = share of SAM updates * median SAM-update time + share of plain updates *
    # median plain-update time: medians per update kind are robust to a busy machine.
    names = list(methods)
    times = {n: {True: [], False: []} for n in names}  # method -> {is SAM update: [seconds]}
    for rnd in range(warmup + n_steps):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for n in order:
            model, opt, update, k = methods[n]
            kind = k > 0 and opt.sam_due
            t0 = time.perf_counter()
            update(model, opt)
            if rnd >= warmup:
                times[n][kind].append(time.perf_counter() - t0)

    def per_update(n):
        k = methods[n][3]
        if k == 0:
            return statistics.median(times[n][False])
        plain = statistics.median(times[n][False]) if k > 1 else 0.0
        return statistics.median(times[n][True]) / k + plain * (k - 1) / k

    med = {n: per_update(n) for n in names}
    out = {f"{n}_s_per_update": med[n] for n in names}
    for n in names[1:]:
        out[f"{n}_over_adamw"] = med[n] / med["adamw"]
    out["efficient_sam_over_adamw"] = med[f"sam_every_{efficient_k}"] / med["adamw"]
    out["efficient_mode"] = f"every_k={efficient_k}"
    out["config"] = dict(batch=batch, seq=seq, timed_updates_per_method=n_steps,
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
    ap.add_argument("--steps", type=int, default=24, help="timed updates per method")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the result dict here")
    args = ap.parse_args(argv)
    res = run(n_steps=args.steps, threads=args.threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()

"""CPU threading figures of `make bench`: what the study's runs gain from more threads, more
processes, torch.compile and DataLoader workers on this machine, to choose how to use its cores.

    python -m kl_utils bench            (the "CPU threading" part; `--compile` adds torch.compile)

Measured on the cpu-sized model, each timed side by side: 2 threads vs 1 in one process
(forward-backward on the same batches, medians); two 1-thread processes vs one 2-thread process
(total tokens/s, fixed work timed inside each worker: `python -m kl_utils.tools.bench_threads
--worker THREADS`); torch.compile vs eager in a subprocess, time-limited, since its warm-up can
take minutes; DataLoader with 1 vs 0 worker processes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from functools import partial

import torch

from kl_utils.tools.bench_trainer import labelled_tokens
from kl_utils.training import batching
from kl_utils.tools import bench_sam
from kl_utils.core.paths import ROOT


# ---------------------------------------------------------------- CPU threading
def _step_rate(model, batches, n_rounds=1) -> float:
    """Labelled tokens/s of forward+backward over the batches."""
    t0 = time.perf_counter()
    for _ in range(n_rounds):
        for b in batches:
            model(**b).loss.backward()
    return n_rounds * sum(labelled_tokens(b) for b in batches) / (time.perf_counter() - t0)


def threads_bench(cfg, tok, examples, *, repeats=3, compile_timeout=None, verbose=True) -> dict:
    from kl_utils.training.model import build_model
    pad = tok.pad_token_id
    batches = batching.make_batches(examples, 32, pad, 0, 1, "bucket")[:6]
    model = build_model(cfg["model"], tok, seed=0).train()
    before = torch.get_num_threads()
    rates = {1: [], 2: []}
    _step_rate(model, batches[:2])
    for _ in range(repeats):
        for t in (1, 2):
            torch.set_num_threads(t)
            rates[t].append(_step_rate(model, batches))
    torch.set_num_threads(before)
    out = {f"threads_{t}_tokens_per_s": statistics.median(v) for t, v in rates.items()}
    out["threads_2_over_1"] = out["threads_2_tokens_per_s"] / out["threads_1_tokens_per_s"]
    # Two 1-thread processes side by side vs one 2-thread process (fixed work, timed inside).
    work = [sys.executable, "-m", "kl_utils.tools.bench_threads", "--worker"]
    one = _run_workers([work + ["2"]])
    two = _run_workers([work + ["1"], work + ["1"]])
    out["two_1thread_procs_over_one_2thread"] = sum(two) / sum(one)
    out.update(compile_bench(compile_timeout) if compile_timeout else {"compile": "not run (--compile)"})
    out.update(workers_bench(cfg, tok, examples))
    if verbose:
        print(f"  threads: 2 vs 1 in one process x{out['threads_2_over_1']:.2f}; two 1-thread processes vs one "
              f"2-thread process x{out['two_1thread_procs_over_one_2thread']:.2f} (total tokens/s)")
        print(f"  torch.compile: {out['compile']}; DataLoader workers 1 vs 0: x{out['workers_1_over_0']:.2f}")
    return out


def _run_workers(cmds) -> list[float]:
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for c in cmds]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1])["tokens_per_s"] for p in procs]


def _worker(threads: int, seconds: float = 8.0) -> None:
    """Subprocess: fwd+bwd on a fixed batch of the cpu-sized model for `seconds` (after warm-up)."""
    torch.set_num_threads(threads)
    model = bench_sam.build_model().train()
    ids = torch.randint(0, 1200, (32, 64), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model(input_ids=ids, labels=ids).loss.backward()
        n += 1
    print(json.dumps({"tokens_per_s": n * ids.numel() / (time.perf_counter() - t0)}))


def compile_bench(timeout: float) -> dict:
    """torch.compile of the cpu-sized model (fixed shape) in a subprocess, time-limited."""
    code = ("import json,time,torch; from kl_utils.tools.bench_sam import build_model\n"
            "m=build_model().train(); ids=torch.randint(0,1200,(32,64))\n"
            "def rate(f,n=8):\n t=time.perf_counter()\n for _ in range(n): f(input_ids=ids,labels=ids).loss.backward()\n"
            " return (time.perf_counter()-t)/n\n"
            "rate(m,2); eager=rate(m); c=torch.compile(m); t=time.perf_counter(); c(input_ids=ids,labels=ids).loss.backward()\n"
            "warm=time.perf_counter()-t; rate(c,2); comp=rate(c); eager2=rate(m)\n"
            "print(json.dumps({'eager_s':(eager+eager2)/2,'compiled_s':comp,'warmup_s':warm}))")
    try:
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        r = json.loads(res.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"compile": f"warm-up longer than {timeout} s: not used"}
    except (json.JSONDecodeError, IndexError):
        return {"compile": "failed: " + (res.stderr.strip().splitlines() or ["?"])[-1][:200]}
    speed = r["eager_s"] / r["compiled_s"]
    return {"compile_speedup": speed, "compile_warmup_s": r["warmup_s"],
            "compile": f"x{speed:.2f} per step after {r['warmup_s']:.0f} s warm-up (fixed shapes; "
                       "every new batch shape recompiles)"}


def workers_bench(cfg, tok, examples, repeats=3) -> dict:
    """One epoch-slice of fwd+bwd fed by a DataLoader with 0 vs 1 worker processes."""
    from torch.utils.data import DataLoader
    from kl_utils.training.model import build_model
    model = build_model(cfg["model"], tok, seed=0).train()
    subset = examples[:32 * 6]
    collate = partial(batching.pad_collate, pad_id=tok.pad_token_id)
    t = {0: [], 1: []}
    for _ in range(repeats):
        for w in (0, 1):
            t0 = time.perf_counter()
            for b in DataLoader(subset, batch_size=32, collate_fn=collate, num_workers=w):
                model(**b).loss.backward()
            t[w].append(time.perf_counter() - t0)
    return {"workers_1_over_0": statistics.median(t[0]) / statistics.median(t[1])}


def main(argv=None) -> None:
    """The worker subprocess of threads_bench (not a bench of its own: run `python -m kl_utils bench`)."""
    ap = argparse.ArgumentParser(description="a worker of kl_utils.tools.bench's threads figure")
    ap.add_argument("--worker", type=int, required=True, help="torch threads of this worker")
    _worker(ap.parse_args(argv).worker)


if __name__ == "__main__":
    main()

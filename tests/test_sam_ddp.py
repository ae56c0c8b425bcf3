"""SAM under real 2-process DDP (accelerate MULTI_CPU, gloo) against a single-process simulation.

sam_update perturbs per replica (pass 1 under no_sync), so the math says the DDP update equals:
for each replica r, g_r = its local gradient, h_r = gradient of its local loss at w + rho*g_r/||g_r||;
then one AdamW step (after clipping) with mean_r h_r. The test checks exactly that, and that it
differs from SAM with a single global perturbation (so the test can tell the two apart)."""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
WORKER_PATH = HERE / "_sam_ddp_worker.py"
TRAINER_WORKER_PATH = HERE / "_sam_trainer_ddp_worker.py"

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo unavailable")


def _load_worker():
    spec = importlib.util.spec_from_file_location("_sam_ddp_worker", WORKER_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


W = _load_worker()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out_dir, timeout=90, worker=WORKER_PATH):
    port = _free_port()
    procs, logs = [], []
    for rank in range(W.WORLD):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(W.WORLD),
               "LOCAL_WORLD_SIZE": str(W.WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore,default::RuntimeWarning"}
        log = open(out_dir / f"rank{rank}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, str(worker), str(out_dir)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent))
    try:
        rcs = [p.wait(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        rcs = None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = ""
    for log in logs:
        log.seek(0)
        text += log.read()[-3000:]
        log.close()
    return rcs, text


def _grads(model, batches, loss_fn):
    params = list(model.parameters())
    loss = sum(loss_fn(model, b) for b in batches) / len(batches)
    return loss.detach(), [torch.zeros_like(p) if g is None else g
                           for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]


def _perturbed_grad(model, batches, g):
    """Gradient on `batches` at w + rho*g/||g|| (weights restored afterwards)."""
    params = list(model.parameters())
    norm = torch.cat([x.flatten() for x in g]).norm()
    w0 = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, gi in zip(params, g):
            p.add_(W.RHO * gi / norm)
    _, h = _grads(model, batches, W.loss_fn)
    with torch.no_grad():
        for p, w in zip(params, w0):
            p.copy_(w)
    return h


def simulate(per_replica=True, batches=W.rank_batches, weight_decay=W.WD):
    """Single process: returns (final params, per-rank pass-1 losses, gradients of the base steps).
    batches(step, rank): that rank's micro-batches of that update."""
    model = W.build_model()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=W.LR, weight_decay=weight_decay, eps=W.EPS)
    losses, applied = {r: [] for r in range(W.WORLD)}, []
    for step in range(W.STEPS):
        data = [batches(step, r) for r in range(W.WORLD)]
        local = [_grads(model, data[r], W.loss_fn) for r in range(W.WORLD)]
        for r in range(W.WORLD):
            losses[r].append(float(local[r][0]))
        if step == W.POISONED[0]:
            continue  # one rank had a NaN gradient: the whole update is skipped everywhere
        if per_replica:
            hs = [_perturbed_grad(model, data[r], local[r][1]) for r in range(W.WORLD)]
        else:
            g = [sum(local[r][1][i] for r in range(W.WORLD)) / W.WORLD for i in range(len(params))]
            hs = [_perturbed_grad(model, data[r], g) for r in range(W.WORLD)]
        h = [sum(hr[i] for hr in hs) / W.WORLD for i in range(len(params))]
        total = torch.cat([x.flatten() for x in h]).norm()
        coef = min(1.0, W.CLIP / (float(total) + 1e-6))
        for p, hi in zip(params, h):
            p.grad = hi * coef
        applied.append([p.grad.clone() for p in params])
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {n: p.detach() for n, p in model.named_parameters()}, losses, applied


def test_ddp_two_processes_match_per_replica_simulation(tmp_path):
    rcs, log = _launch(tmp_path)
    if rcs is not None and any(rcs) and "address already in use" in log.lower():
        # one retry: the free port was taken between probing it and binding it
        rcs, log = _launch(tmp_path)
    assert rcs is not None and not any(rcs), f"workers failed (rcs={rcs}):\n{log}"
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(W.WORLD)]
    assert "another rank had a bad gradient" in log  # rank 0 learnt of rank 1's NaN and skipped

    # replicas stay in sync (identical all-reduced gradient, identical restore)
    for n, p in res[0]["params"].items():
        assert torch.equal(p, res[1]["params"][n]), n

    sim, sim_losses, sim_grads = simulate(per_replica=True)
    # the gradient reaching AdamW: mean over replicas of each replica's own perturbed gradient
    assert len(res[0]["grads"]) == len(sim_grads) == W.STEPS - 1  # the poisoned update was skipped
    for step, (got, want) in enumerate(zip(res[0]["grads"], sim_grads)):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4, msg=lambda s: f"update {step}: {s}")
    for r in range(W.WORLD):
        for step, (a, b) in enumerate(zip(res[r]["losses"], sim_losses[r])):
            if step == W.POISONED[0] and r == W.POISONED[1]:
                assert a != a  # NaN loss reported on the poisoned rank
            else:
                assert abs(a - b) < 1e-5, (r, step, a, b)
    init = dict(W.build_model().named_parameters())
    for n, p in res[0]["params"].items():
        torch.testing.assert_close(p, sim[n], atol=1e-5, rtol=0, msg=lambda s: f"{n}: {s}")
    err = max(float((p - sim[n]).abs().max()) for n, p in res[0]["params"].items())
    assert any(not torch.equal(p, init[n]) for n, p in res[0]["params"].items())

    # the check is sharp: SAM with one global perturbation gives a measurably different result
    glob, _, _ = simulate(per_replica=False)
    gap = max(float((res[0]["params"][n] - glob[n]).abs().max()) for n in glob)
    print(f"max |DDP - per-replica sim| = {err:.2e}; max |DDP - global-perturbation sim| = {gap:.2e}")
    assert gap > 1e-4


def test_sam_trainer_ddp_two_processes_match_per_replica_simulation(tmp_path):
    """SAMTrainer under the Trainer's own DDP (2 CPU processes): the same per-replica SAM as sam_update,
    on the micro-batches each rank's sampler gave it, including the update every rank skips."""
    rcs, log = _launch(tmp_path, timeout=180, worker=TRAINER_WORKER_PATH)
    if rcs is not None and any(rcs) and "address already in use" in log.lower():
        rcs, log = _launch(tmp_path, timeout=180, worker=TRAINER_WORKER_PATH)
    assert rcs is not None and not any(rcs), f"workers failed (rcs={rcs}):\n{log}"
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(W.WORLD)]
    assert not torch.equal(res[0]["batches"][0][0], res[1]["batches"][0][0])  # the ranks saw different data
    for n, p in res[0]["params"].items():
        assert torch.equal(p, res[1]["params"][n]), n
    sim, sim_losses, sim_grads = simulate(per_replica=True, batches=lambda step, r: res[r]["batches"][step],
                                          weight_decay=0.0)
    assert len(res[0]["grads"]) == len(sim_grads) == W.STEPS - 1  # the poisoned update was skipped
    for step, (got, want) in enumerate(zip(res[0]["grads"], sim_grads)):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4, msg=lambda s: f"update {step}: {s}")
    for n, p in res[0]["params"].items():
        torch.testing.assert_close(p, sim[n], atol=1e-5, rtol=0, msg=lambda s: f"{n}: {s}")
    # the Trainer logs pass 1's loss averaged over ranks (at the poisoned update its NaN filter steps in)
    assert len(res[0]["losses"]) == W.STEPS
    for step, got in enumerate(res[0]["losses"]):
        want = sum(sim_losses[r][step] for r in range(W.WORLD)) / W.WORLD
        assert step == W.POISONED[0] or abs(got - want) < 1e-5, (step, got, want)
    glob, _, _ = simulate(per_replica=False, batches=lambda step, r: res[r]["batches"][step], weight_decay=0.0)
    assert max(float((res[0]["params"][n] - glob[n]).abs().max()) for n in glob) > 1e-4

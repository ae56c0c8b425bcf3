"""Why SAM helps (C4): sharpness of the CPT training loss at the models the main arms found.

Two measures on a fixed set of batches (the first `n_docs` CPT documents of the new people, the
same for every model), with the model in eval mode (no dropout; the models have none anyway):
* worst-case loss increase within a *global* L2 ball of radius rho over all parameters (no
  filter- or layer-wise normalisation): `steps` of projected, normalised gradient ascent from
  the minimum (step size rho, so the first step is exactly SAM's perturbation), reporting the
  largest loss found minus the unperturbed loss (>= 0, and 0 at rho = 0);
* the top eigenvalue of the Hessian of the training loss, by power iteration on Hessian-vector
  products (double backward).
A random-direction increase at the same radius is reported as a reference. Records: kind
"sharpness", one per (arm, seed) checkpoint.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from kl_utils.core import records
from kl_utils.data import dataset as data
from kl_utils.analysis import stats
from kl_utils.config.arms import current_arm_records
from kl_utils.core.spec import config_hash
from kl_utils.core.paths import results_dir
from kl_utils.analysis.summary import verdict
from kl_utils.training.batching import pad_collate as collate

METRICS = {"worst_case_increase": "worst-case loss increase (L2 ball)",
           "top_eigenvalue": "top Hessian eigenvalue"}


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def mean_loss(losses) -> torch.Tensor:
    total, n = 0.0, 0
    for loss in losses():
        total, n = total + loss.detach(), n + 1
    return total / n


def _grad(params, losses, create_graph=False):
    """Gradient of the mean over the loss terms, accumulated term by term (bounded memory)."""
    terms = losses()
    total = [torch.zeros_like(p) for p in params]
    n = 0
    for loss in terms:
        gs = torch.autograd.grad(loss, params, create_graph=create_graph)
        total = [t + g for t, g in zip(total, gs)]
        n += 1
    return [t / n for t in total]


def _norm(vs):
    return torch.sqrt(sum((v * v).sum() for v in vs))


@torch.no_grad()
def _set(params, origin, delta=None):
    """params <- origin (+ delta); restoring by copy keeps the weights bit-exact."""
    for i, (p, o) in enumerate(zip(params, origin)):
        p.copy_(o if delta is None else o + delta[i])


def worst_case_increase(params, losses, rho: float, steps: int = 5) -> dict:
    """max L(w + d) - L(w) over ||d|| <= rho, approximated by projected normalised gradient ascent.
    `losses()` returns the batch losses at the current parameters; params are restored."""
    with torch.no_grad():
        base = mean_loss(losses).item()
    if rho <= 0 or steps <= 0:
        return {"loss": base, "perturbed_loss": base, "increase": 0.0}
    origin = [p.detach().clone() for p in params]
    delta = [torch.zeros_like(p) for p in params]
    best = base
    for _ in range(steps):
        _set(params, origin, delta)
        g = _grad(params, losses)
        _set(params, origin)
        gnorm = _norm(g)
        if not torch.isfinite(gnorm) or gnorm == 0:  # at an exact stationary point: nothing to follow
            break
        delta = [d + rho * gi / gnorm for d, gi in zip(delta, g)]
        scale = min(1.0, rho / _norm(delta).item())  # project back onto the ball
        delta = [d * scale for d in delta]
        _set(params, origin, delta)
        with torch.no_grad():
            best = max(best, mean_loss(losses).item())
        _set(params, origin)
    return {"loss": base, "perturbed_loss": best, "increase": best - base}


def random_increase(params, losses, rho: float, n_dirs: int = 3, seed: int = 0) -> float:
    """Mean loss increase along random directions of norm rho (reference for the worst case)."""
    gen = torch.Generator().manual_seed(seed)
    origin = [p.detach().clone() for p in params]
    with torch.no_grad():
        base = mean_loss(losses).item()
        out = []
        for _ in range(n_dirs):
            d = [torch.randn(p.shape, generator=gen).to(p) for p in params]
            n = _norm(d)
            d = [x * rho / n for x in d]
            _set(params, origin, d)
            out.append(mean_loss(losses).item() - base)
            _set(params, origin)
    return sum(out) / len(out)


def top_hessian_eigenvalue(params, losses, iters: int = 10, seed: int = 0, tol: float = 1e-3) -> float:
    """Largest-magnitude Hessian eigenvalue by power iteration; Hv = d(g . v)/dw (double backward)."""
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen).to(p) for p in params]
    n = _norm(v)
    v = [x / n for x in v]
    eig = 0.0
    for _ in range(iters):
        hv, k = [torch.zeros_like(p) for p in params], 0
        for loss in losses():  # one batch graph at a time
            g = torch.autograd.grad(loss, params, create_graph=True)
            dot = sum((gi * vi).sum() for gi, vi in zip(g, v))
            hv = [h + x for h, x in zip(hv, torch.autograd.grad(dot, params))]
            k += 1
        hv = [h / k for h in hv]
        new = sum((h * x).sum() for h, x in zip(hv, v)).item()  # Rayleigh quotient v.Hv
        n = _norm(hv)
        if n == 0:
            return 0.0
        v = [h / n for h in hv]
        done = abs(new - eig) <= tol * max(abs(new), 1e-12)
        eig = new
        if done:
            break
    return eig


def lm_losses(model, batches):
    """Closure for the measures above: the model's LM loss on each fixed batch."""
    return lambda: (model(**b).loss for b in batches)


def fixed_batches(tok, docs: list[str], batch_size: int) -> list[dict]:
    enc = data.encode_documents(docs, tok)
    return [collate(enc[i:i + batch_size], tok.pad_token_id) for i in range(0, len(enc), batch_size)]


def sharpness_docs(ds, n_docs: int) -> list[str]:
    """The fixed document set: the single CPT biography of the first n_docs new people."""
    new = ds.filter(lambda r: r["population"] == "new")
    return data.documents(new.select(range(min(n_docs, len(new)))), n_paraphrases=1)


def measure(model, batches, sc: dict) -> dict:
    model.eval()
    params, losses = _params(model), lm_losses(model, batches)
    wc = worst_case_increase(params, losses, sc["rho"], sc["ascent_steps"])
    return {"train_loss": wc["loss"], "worst_case_increase": wc["increase"],
            "random_increase": random_increase(params, losses, sc["rho"]),
            "top_eigenvalue": top_hessian_eigenvalue(params, losses, sc["power_iters"])}


def arm_checkpoints(profile: str, arms=("baseline", "sam"), cfg: dict | None = None) -> list[tuple[dict, Path]]:
    """(arm record, model dir) of every finished run of the given arms: the model at the end of CPT
    (`ckpt/<run_id>/after_cpt`, saved by experiment.run_arm), i.e. the minimum of the CPT loss.
    arms=None: every arm. With cfg: only runs of the profile's current config."""
    out = []
    for r in current_arm_records(profile, cfg):
        path = results_dir(profile) / "ckpt" / r["run_id"] / "after_cpt"
        if (arms is None or r.get("arm") in arms) and (path / "config.json").exists():
            out.append((r, path))
    return out


def checkpoint_sources(profile: str, cfg: dict, arms, kind: str, run_id_of) -> tuple[list[tuple[dict, Path]], list[str]]:
    """For an analysis of CPT checkpoints (sharpness, the C1 probe): (the (arm record, checkpoint)
    pairs to pass to it, the run ids it cannot cover). A run whose analysis record exists needs no
    checkpoint (a fresh clone has records, not checkpoints: git ignores them); one with neither is
    reported, not fatal."""
    sources, missing = [], []
    for r in current_arm_records(profile, cfg):
        if arms is not None and r.get("arm") not in arms:
            continue
        path = results_dir(profile) / "ckpt" / r["run_id"] / "after_cpt"
        if (path / "config.json").exists() or records.existing_record(profile, run_id_of(r), kind=kind) is not None:
            sources.append((r, path))
        else:
            missing.append(r["run_id"])
    return sources, missing


def missing_line(what: str, missing: list[str]) -> str:
    """One line for the notebooks: which records could not be made here, and the command that makes them."""
    return (f"{len(missing)} run(s) have no {what} record and no CPT checkpoint on disk (checkpoints are not in git): "
            f"`make reproduce` recomputes them; shown without them: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")


def sources(profile: str, cfg: dict, arms=("baseline", "sam")) -> tuple[list[tuple[dict, Path]], list[str]]:
    """checkpoint_sources for the sharpness measurement of `arms`."""
    sc = cfg["analysis"]["sharpness"]
    return checkpoint_sources(profile, cfg, arms, "sharpness", lambda r: f"sharpness-{r['run_id']}-{config_hash(sc)}")


def run(profile: str, cfg: dict, ds, tok, checkpoints, log=print) -> list[dict]:
    """Measure every checkpoint; writes one record each (kind "sharpness") and returns them."""
    from transformers import AutoModelForCausalLM
    sc = cfg["analysis"]["sharpness"]
    batches = fixed_batches(tok, sharpness_docs(ds, sc["n_docs"]), sc["batch_size"])
    out = []
    for rec, path in checkpoints:
        run_id = f"sharpness-{rec['run_id']}-{config_hash(sc)}"
        done = records.existing_record(profile, run_id, kind="sharpness", config={"sharpness": sc})
        if done is not None:  # measured before (or committed): nothing to recompute
            out.append(done)
            continue
        t0 = time.time()
        # eager attention: double backward through every op is supported there
        model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager")
        metrics = {**measure(model, batches, sc), "test_em": rec["metrics"]["test_em"]}
        extra = {"arm": rec["arm"], "source_run_id": rec["run_id"]}
        records.write_run_record(profile, run_id, kind="sharpness", config={"sharpness": sc}, seed=rec["seed"],
                                 metrics=metrics, wall_time_s=time.time() - t0, extra=extra)
        log(f"{rec['arm']} seed {rec['seed']}: worst-case increase {metrics['worst_case_increase']:.4f}, "
            f"top eigenvalue {metrics['top_eigenvalue']:.2f}, test EM {metrics['test_em']:.3f} ({time.time() - t0:.0f} s)")
        out.append({"run_id": run_id, "kind": "sharpness", "seed": rec["seed"], "metrics": metrics, **extra})
    return out


def claim_rows(recs: list[dict], a: str = "baseline", b: str = "sam") -> list[dict]:
    """C4 flatness rows: sharpness of SAM minus AdamW, paired over seeds. C4 predicts a *negative*
    difference (SAM flatter), so the verdict is `supported` when the whole CI is below 0."""
    recs = [r for r in recs if r.get("kind") == "sharpness"]
    if len({(r["arm"], r["seed"]) for r in recs}) < len(recs):
        raise ValueError("two sharpness records for one arm and seed (stale settings?): pass the records of one run")
    rows = []
    for metric, label in METRICS.items():
        vals = {arm: {r["seed"]: r["metrics"][metric] for r in recs if r["arm"] == arm} for arm in (a, b)}
        if not vals[a] or not vals[b] or not set(vals[a]) & set(vals[b]):
            continue
        d = stats.paired_diff_ci(vals[a], vals[b])
        flipped = verdict({"n": d["n"], "low": -d["high"], "high": -d["low"]})
        rows.append({"claim": "C4", "comparison": f"{b} vs {a} (flatness; lower is flatter)",
                     "budget": "epochs", "metric": label,
                     "mean_a": stats.mean_ci(vals[a].values())["mean"], "mean_b": stats.mean_ci(vals[b].values())["mean"],
                     "diff": d["mean"], "ci_low": d["low"], "ci_high": d["high"], "n_seeds": d["n"], "verdict": flipped,
                     "test": "superiority (lower is better)"})
    # does flatter go with better extraction? C4 predicts a negative correlation over the runs
    pts = [r for r in recs if r["arm"] in (a, b)]
    if len(pts) >= 3:
        x, y = [r["metrics"]["worst_case_increase"] for r in pts], [r["metrics"]["test_em"] for r in pts]
        c = stats.bootstrap_corr_ci(x, y, method="spearman")
        rows.append({"claim": "C4", "comparison": f"worst-case loss increase vs test EM over {a} and {b} runs",
                     "budget": "epochs", "metric": "spearman r (negative: flatter extracts better)",
                     "mean_a": sum(x) / len(x), "mean_b": sum(y) / len(y), "diff": c["r"], "ci_low": c["low"],
                     "ci_high": c["high"], "n_seeds": len({r["seed"] for r in pts}),
                     "verdict": verdict({"n": len(pts), "low": -c["high"], "high": -c["low"]}), "test": "descriptive"})
    return rows

"""Sharpness measures: exact answers on quadratics, invariants on a tiny LM, and the claim rows."""
import math

import pytest
import torch

from kl_utils.core import records
from kl_utils.analysis import sharpness
from kl_utils.protocol.experiment import vocabulary_texts
from kl_utils.training.model import build_model
from kl_utils.data.tokenizer import build_word_tokenizer

EIGS = torch.tensor([5.0, 2.0, 1.0, 0.5, 0.1])


def quadratic(x0):
    """f(x) = 1/2 x^T A x with known spectrum (A = Q diag(EIGS) Q^T)."""
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0)))
    a = q @ torch.diag(EIGS) @ q.T
    x = torch.nn.Parameter(x0.clone())
    return [x], (lambda: iter([0.5 * x @ a @ x])), a


def test_power_iteration_finds_top_eigenvalue():
    params, losses, _ = quadratic(torch.ones(5))
    assert sharpness.top_hessian_eigenvalue(params, losses, iters=200, tol=1e-8) == pytest.approx(5.0, rel=1e-3)


def test_worst_case_increase_bounds():
    params, losses, a = quadratic(torch.full((5,), 0.01))
    x = params[0].detach().clone()
    g = a @ x
    rho = 0.1
    assert sharpness.worst_case_increase(params, losses, 0.0)["increase"] == 0.0
    wc = sharpness.worst_case_increase(params, losses, rho, steps=20)["increase"]
    rnd = sharpness.random_increase(params, losses, rho, n_dirs=20)
    upper = g.norm().item() * rho + 0.5 * 5.0 * rho ** 2   # g.d + 1/2 lambda_max rho^2
    assert rnd < wc <= upper + 1e-6
    assert wc > 0.9 * 0.5 * 5.0 * rho ** 2                 # finds (nearly) the top-eigenvector direction
    assert torch.equal(params[0].detach(), x)               # parameters restored


@pytest.fixture(scope="module")
def tiny_lm():
    tok = build_word_tokenizer(vocabulary_texts())
    model = build_model({"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}, tok, seed=0)
    model.config._attn_implementation = "eager"
    docs = ["Ann Lee was born on March 3, 1990. She studied at Yale University.",
            "Bob Ray was born in Paris. He worked for Apple."] * 2
    return model, sharpness.fixed_batches(tok, docs, batch_size=2)


def test_measure_on_tiny_lm_restores_weights(tiny_lm):
    model, batches = tiny_lm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = sharpness.measure(model, batches, {"rho": 0.05, "ascent_steps": 3, "power_iters": 5})
    assert all(math.isfinite(v) for v in m.values())
    assert m["worst_case_increase"] >= max(m["random_increase"], 0.0)
    assert m["top_eigenvalue"] != 0  # random init: not at a minimum, so the sign is free
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_run_reads_checkpoints_and_writes_records(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path))
    model, _ = tiny_lm
    tok = build_word_tokenizer(vocabulary_texts())
    for arm, seed, em in (("baseline", 0, 0.1), ("sam", 0, 0.2), ("format", 0, 0.3)):
        run_id = f"{arm}-s{seed}-x"
        model.save_pretrained(tmp_path / "toy" / "ckpt" / run_id / "after_cpt")
        records.write_run_record("toy", run_id, kind="arm", config={}, seed=seed, metrics={"test_em": em},
                                 wall_time_s=0, extra={"arm": arm})
    ckpts = sharpness.arm_checkpoints("toy")
    assert sorted(r["arm"] for r, _ in ckpts) == ["baseline", "sam"]
    import datasets
    ds = datasets.Dataset.from_list([{"population": "new", "bios": ["Ann Lee was born in Paris."]}] * 4)
    cfg = {"analysis": {"sharpness": {"n_docs": 4, "batch_size": 2, "rho": 0.05, "ascent_steps": 2, "power_iters": 2}}}
    out = sharpness.run("toy", cfg, ds, tok, ckpts, log=lambda *a: None)
    recs = records.load_run_records("toy", kind="sharpness")
    assert len(out) == len(recs) == 2 and {r["arm"] for r in recs} == {"baseline", "sam"}
    assert all(r["metrics"]["worst_case_increase"] >= 0 for r in recs)


def test_claim_rows_sign_and_verdict():
    def rec(arm, seed, wc, eig, em):
        return {"kind": "sharpness", "arm": arm, "seed": seed,
                "metrics": {"worst_case_increase": wc, "top_eigenvalue": eig, "test_em": em}}
    recs = [rec("baseline", s, 1.0 + 0.01 * s, 10.0 + s, 0.2) for s in range(3)] + \
           [rec("sam", s, 0.5 + 0.02 * s, 10.0 + s * 1.5, 0.25) for s in range(3)]
    rows = sharpness.claim_rows(recs)
    keys = ["claim", "comparison", "budget", "metric", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "n_seeds", "verdict",
            "test"]
    assert all(list(r) == keys for r in rows)
    wc, eig, corr = rows
    assert wc["test"] == eig["test"] == "superiority (lower is better)" and corr["test"] == "descriptive"
    assert wc["diff"] == pytest.approx(-0.49) and wc["verdict"] == "supported"   # SAM flatter: supports C4
    assert eig["verdict"] == "inconclusive"
    assert corr["diff"] < 0 and corr["metric"].startswith("spearman")

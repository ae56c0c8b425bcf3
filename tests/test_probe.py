"""The C1 probe: exact fact spans, token positions, a memorising model, the per-fact tables and
the correlation CI."""
import random

import pytest
import torch

from kl_utils.data import bios, dataset as data
from kl_utils.analysis import probe, stats
from kl_utils.training.model import build_model
from kl_utils.training.train import train
from tests.conftest import TINY_DATA


def test_heldout_spans_are_exact(people):
    for row in people:
        spans = probe.heldout_spans(row, TINY_DATA["n_train_templates"])
        assert [row["heldout_bio"][s:e] for s, e in spans] == [row[a] for a in bios.ATTRIBUTES]


def test_fact_positions_are_the_value_tokens(tok, people):
    row = people[0]
    ids, pos = probe.encode_with_spans(tok, row["bios"][0], row["fact_spans"][0])
    for attr, p in zip(bios.ATTRIBUTES, pos):
        assert tok.decode([ids[i] for i in p]) == tok.decode(tok(row[attr], add_special_tokens=False)["input_ids"])


def test_probe_on_a_memorised_document(tok, people):
    row = people.select([len(people) - 1])
    model = build_model({"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}, tok, seed=0)
    cfg = {"epochs": 150, "batch_size": 1, "lr": 3e-3, "warmup_frac": 0.0, "min_lr_frac": 1.0}
    train(model, data.encode_documents([row[0]["bios"][0]], tok), cfg, seed=0, pad_id=tok.pad_token_id)
    res = probe.probe(model, tok, row, TINY_DATA["n_train_templates"])
    assert len(res["facts"]) == 6 * len(probe.CONTEXTS)
    s = probe.summarize(res["facts"])
    assert s["train_acc"] == 1.0 and s["train_loss"] < 0.1 < s["heldout_loss"]
    t = res["tokens"]  # memorised document: tiny loss everywhere; unseen templates: large
    assert t["train_doc_fact_loss"] < 0.1 and t["train_doc_other_loss"] < 0.1 < t["heldout_doc_other_loss"]


def test_fact_tables_count_every_fact():
    rng = random.Random(0)
    h, t, a = ([rng.randint(0, 1) for _ in range(101)] for _ in range(3))
    cells = probe.two_by_two(h, a)
    assert sum(cells.values()) == 101 and cells[(1, 1)] == sum(1 for x, y in zip(h, a) if x and y)
    table = probe.fact_table(h, t, a)
    assert sum(r["facts"] for r in table) == 101
    assert table[0]["answered"] == cells[(1, 1)] and table[0]["not answered"] == cells[(1, 0)]


def test_bootstrap_corr_ci_covers_truth():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, generator=gen)
    y = 0.6 * x + 0.8 * torch.randn(400, generator=gen)   # true Pearson r = 0.6
    c = stats.bootstrap_corr_ci(x.tolist(), y.tolist(), n_boot=500)
    assert c["low"] < 0.6 < c["high"] and c["high"] - c["low"] < 0.2
    cube = [v ** 3 for v in x.tolist()]                   # monotone: Spearman exactly 1
    assert stats.correlation(x.tolist(), cube, "spearman") == pytest.approx(1.0)
    assert stats.correlation([1, 2, 2, 3], [1, 2, 2, 3], "spearman") == pytest.approx(1.0)  # ties


def test_claim_rows_from_records():
    def rec(seed, n, accs, ems, facts):
        hist = [{"passes": p, "test_heldout_acc": x, "test_heldout_loss": 1 - x, "test_em": e}
                for p, x, e in zip(range(1, 9), accs, ems)]
        return {"kind": "diversity", "run_id": f"r{seed}{n}", "seed": seed, "paraphrases": n, "history": hist,
                "final_facts": facts}
    facts = {"heldout": [1, 1, 0, 0, 0], "train": [1, 1, 1, 1, 0], "qa_em": [1, 1, 0, 0, 0]}
    recs = [rec(s, 1, [0.1 * i for i in range(1, 5)], [0.1 * i + 0.01 * s for i in range(1, 5)], facts) for s in range(3)]
    rows = probe.claim_rows(recs, n_boot=200)
    keys = ["claim", "comparison", "budget", "metric", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "n_seeds", "verdict",
            "test"]
    assert [list(r) for r in rows] == [keys + ["p_value"]] + [keys] * 3
    stratified, pearson, spearman, per_fact = rows
    assert pearson["diff"] > 0.9 and spearman["verdict"] == "supported"
    assert {pearson["test"], spearman["test"], per_fact["test"]} == {"descriptive"}
    assert per_fact["mean_b"] == 1.0 and per_fact["mean_a"] == 0.0 and per_fact["verdict"] == "supported"
    assert stratified["test"] == "CMH (stratified by run)" and stratified["diff"] == pytest.approx(1.0)
    assert "15 facts in 3 runs" in stratified["metric"] and stratified["p_value"] < 0.01


def test_stratified_fact_row_removes_between_run_association():
    """Two runs, each with no association between predicting a fact in a held-out paraphrase and
    answering its question; the better run predicts and answers more: pooled facts show a strong
    association (the unstratified bootstrap row), the per-run CMH row none."""
    def rec(seed, h, a):
        return {"kind": "diversity", "run_id": f"r{seed}", "seed": seed, "paraphrases": 1, "passes": 1,
                "history": [{"passes": 1, "test_heldout_acc": sum(h) / len(h), "test_heldout_loss": 0.0,
                             "test_em": sum(a) / len(a)}],
                "final_facts": {"heldout": h, "train": [1] * len(h), "qa_em": a}}
    good = rec(0, [1] * 80 + [0] * 20, [1] * 72 + [0] * 8 + [1] * 18 + [0] * 2)     # 0.9 vs 0.9
    bad = rec(1, [1] * 20 + [0] * 80, [1] * 2 + [0] * 18 + [1] * 8 + [0] * 72)      # 0.1 vs 0.1
    row = probe.stratified_fact_row([good, bad])
    assert row["diff"] == pytest.approx(0.0, abs=1e-12) and row["verdict"] == "inconclusive" and row["p_value"] > 0.5
    assert row["mean_b"] == pytest.approx(0.74) and row["mean_a"] == pytest.approx(0.26)  # pooled answer rates


def test_probe_checkpoints_of_main_arms(tok, people, tmp_path, monkeypatch):
    from kl_utils.core import records
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path))
    model = build_model({"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}, tok, seed=0)
    ckpts = []
    for i, arm in enumerate(("baseline", "sam", "format")):
        model.save_pretrained(tmp_path / arm)
        ckpts.append(({"run_id": f"{arm}-s0", "arm": arm, "seed": 0, "metrics": {"test_em": 0.1 * i}}, tmp_path / arm))
    cfg = {"data": TINY_DATA, "analysis": {"probe_batch_size": 64}}
    probe.probe_checkpoints("toy", cfg, people, tok, ckpts, n_people=2, log=lambda *a: None)
    recs = records.load_run_records("toy", kind="probe_arm")
    assert len(recs) == 3 and all(0 <= r["metrics"]["heldout_acc"] <= 1 for r in recs)
    rows = probe.claim_rows(recs)
    assert [r["metric"] for r in rows] == ["pearson r (3 runs)", "spearman r (3 runs)"]


def test_a_run_copied_under_another_arm_name_is_one_stratum():
    """Main-experiment arm records probed after CPT: a copy of one run under a second arm name
    (same_run_as, kl_utils.protocol.run.adopt_same_runs) must not enter the per-fact CMH row twice."""
    facts = {"heldout": [1, 1, 0, 0, 1], "train": [1] * 5, "qa_em": [1, 0, 0, 0, 1]}
    runs = [{"kind": "arm", "run_id": f"baseline-s{s}-x", "arm": "baseline", "seed": s, "final_facts": facts}
            for s in range(2)]
    copy = {**runs[0], "run_id": "sam-s0-x", "arm": "sam", "same_run_as": runs[0]["run_id"]}
    rows = probe.claim_rows(runs + [copy], n_boot=50)
    assert "10 facts in 2 runs" in rows[0]["metric"]

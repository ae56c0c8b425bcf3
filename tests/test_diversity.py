"""C2 runs: document sets at a fixed budget, a toy end-to-end run with its record, claim rows."""
import pytest

from kl_utils.core import records
from kl_utils.data import dataset as data
from kl_utils.protocol import experiment
from kl_utils.analysis import diversity
from kl_utils.config.profiles import read_profile
from tests.conftest import TINY_DATA


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path))
    cfg = read_profile("smoke")
    cfg["data"] = dict(TINY_DATA)
    cfg["model"] = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
    cfg["base"] = {**cfg["base"], "enabled": False}
    cfg["analysis"] = {**cfg["analysis"], "n_train_people": 4, "n_test_people": 3, "passes": 2,
                       "qa_checkpoints": [1], "seeds": [0]}
    ds, tok, _ = experiment.prepare_data("toy", cfg)
    return cfg, ds, tok


def test_documents_and_people(toy):
    cfg, ds, _ = toy
    assert diversity.paraphrase_counts(cfg) == [1, 2]           # capped by new_paraphrases = 3
    people = diversity.select_people(ds, 4, 3)
    assert [r["split"] for r in people] == ["train"] * 4 + ["test"] * 3
    for n in (1, 2):
        docs = diversity.one_copy_documents(people, n)
        assert len(docs) == 7 * n and docs[:n] == people[0]["bios"][:n]


def test_run_writes_a_diversity_record(toy):
    cfg, ds, tok = toy
    out = diversity.run("toy", cfg, ds, tok, paraphrases=1, seed=0, log=lambda *a: None)
    rec = records.load_run_records("toy", kind="diversity")[0]
    assert rec["run_id"] == out["run_id"] and rec["paraphrases"] == 1
    assert [h["passes"] for h in rec["history"]] == [0, 1, 2]
    assert "test_em" in rec["history"][1] and rec["history"][-1]["test_em"] == rec["metrics"]["test_em"]
    assert {len(v) for v in rec["final_facts"].values()} == {3 * 6}
    assert 0 <= rec["metrics"]["test_heldout_acc"] <= 1 and rec["optimizer_steps"] == 2
    for key in ("train_doc_fact_loss", "train_doc_other_loss", "heldout_doc_fact_loss", "heldout_doc_other_loss"):
        assert rec["metrics"][key] > 0


def test_claim_rows_pairs_seeds():
    recs = [{"kind": "diversity", "paraphrases": n, "seed": s, "passes": 8, "metrics": {"test_em": em + 0.001 * s * n}}
            for s in range(3) for n, em in ((1, 0.2), (2, 0.25), (8, 0.3))]
    (row,) = diversity.claim_rows(recs)   # paired diffs 0.1, 0.107, 0.114
    assert row["claim"] == "C2" and row["diff"] == pytest.approx(0.107) and row["n_seeds"] == 3
    assert row["mean_a"] == pytest.approx(0.201) and row["verdict"] == "supported"
    recs[-1]["metrics"]["test_em"] = 0.0  # seed 2: 8 paraphrases worse -> CI spans 0
    assert diversity.claim_rows(recs)[0]["verdict"] == "inconclusive"

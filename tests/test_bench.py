"""kl_utils.tools.bench helpers at tiny size: the cpu-run breakdown and the figure table (and
kl_utils.tools.implementation_check's pairing by seed)."""
import json

from kl_utils.tools import bench


def test_time_breakdown_reads_timing_and_records(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path))
    assert bench.time_breakdown("cpu") == ({"cpu_reproduce_s": "not measured"}, [])
    (tmp_path / "cpu" / "runs").mkdir(parents=True)
    (tmp_path / "cpu" / "timing.json").write_text(json.dumps(
        {"profile": "cpu", "wall_time_s": 1200.0, "per_notebook_s": {"01_data.ipynb": 30.0}}))
    (tmp_path / "cpu" / "runs" / "a.json").write_text(json.dumps(
        {"run_id": "a", "wall_time_s": 50.0, "timing": {"cpt_s": 40.0, "it_s": 8.0, "eval_s": 2.0}}))
    (tmp_path / "cpu" / "runs" / "b.json").write_text(json.dumps({"run_id": "b", "wall_time_s": 9.0}))
    figures, rows = bench.time_breakdown("cpu")
    assert figures == {"cpu_reproduce_s": 1200.0}
    assert rows == [("notebook 01_data.ipynb", 30.0), ("run a cpt_s", 40.0), ("run a it_s", 8.0),
                    ("run a eval_s", 2.0), ("run b", 9.0)]
    bench._print_table({"sam_over_adamw": 2.5, "batched_eval_over_per_example": 12.0, "test_s": "not run"})
    out = capsys.readouterr().out
    assert "MISSED" in out and " ok" in out and "not run" in out


def test_train_throughput_times_each_mode_and_both_trainers(tmp_path, monkeypatch):
    """Every variant of our loop and both Trainer optimizers get a positive labelled-tokens/s figure."""
    from kl_utils.core import paths
    from kl_utils.data import dataset as data
    from kl_utils.tools import bench
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    cfg, ds, tok = bench._setup("smoke")
    docs = data.encode_documents(data.documents(ds.filter(lambda r: r["population"] == "new")), tok)[:40]
    out = bench.train_throughput(cfg, tok, docs, n_steps=2, repeats=1, verbose=False)
    assert set(out["tokens_per_s"]) == {"pad", "bucket", "pack", "fast", "hf_trainer", "hf_trainer_foreach"}
    assert all(v > 0 for v in out["tokens_per_s"].values()) and out["config"]["steps"] == 2


def test_first_batches_run_on_into_the_next_epoch():
    """A timed run longer than an epoch trains on the next epoch's batches: count those tokens too."""
    from kl_utils.training import batching
    from kl_utils.tools import bench
    ex = [{"input_ids": [1] + [5] * (3 + i % 7), "labels": [1] + [5] * (3 + i % 7)} for i in range(10)]
    got = bench.first_batches(ex, 4, 0, seed=1, mode="pad", n=5)  # 3 batches per epoch
    want = batching.make_batches(ex, 4, 0, 1, 1, "pad") + batching.make_batches(ex, 4, 0, 1, 2, "pad")[:2]
    assert len(got) == 5 and all(a["input_ids"].equal(b["input_ids"]) for a, b in zip(got, want))


def test_implementation_check_pairs_arms_by_seed(tmp_path, monkeypatch):
    from kl_utils.tools.implementation_check import implementation_check
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path))
    for folder, ems in (("runs-v1", [0.10, 0.20, 0.30]), ("runs", [0.12, 0.21, 0.33])):
        (tmp_path / "cpu" / folder).mkdir(parents=True)
        for seed, em in enumerate(ems):
            (tmp_path / "cpu" / folder / f"baseline-s{seed}-x.json").write_text(json.dumps(
                {"kind": "arm", "arm": "baseline", "seed": seed, "metrics": {"test_em": em}}))
        (tmp_path / "cpu" / folder / "probe-x.json").write_text(json.dumps({"kind": "probe_arm", "metrics": {}}))
    (tmp_path / "cpu" / "runs" / "sam-s0-y.json").write_text(json.dumps(
        {"kind": "arm", "arm": "sam", "seed": 0, "metrics": {"test_em": 0.5}}))  # no previous record
    rows = implementation_check(("cpu", "runs-v1"), ("cpu", "runs"), verbose=False)
    assert set(rows) == {"baseline"}
    d = rows["baseline"]["current_minus_previous"]
    assert d["n"] == 3 and abs(d["mean"] - 0.02) < 1e-9 and d["low"] < d["mean"] < d["high"]


def test_hf_trainer_run_counts_the_batches_it_trained_on(tmp_path):
    """Trainer's dataloader collates one batch ahead of the step (7 collations for 6 steps); the
    tokens a timed HF run reports are those of its 6 steps: 6 x 8 rows x 10 labelled tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from kl_utils.tools.bench_trainer import hf_trainer_run
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    examples = [{"input_ids": list(range(1, 12)), "labels": list(range(1, 12))} for _ in range(100)]
    cfg = {"batch_size": 8, "lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_frac": 0.05, "grad_clip": 1.0}
    tokens, seconds = hf_trainer_run(model, examples, cfg, 6, 0, 0, str(tmp_path))
    assert tokens == 6 * 8 * 10 and seconds > 0

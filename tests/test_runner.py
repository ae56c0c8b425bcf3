"""The experiment runner: grids, step-matched budgets, and resuming after a crash or kill -9."""
import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from kl_utils.core import paths, records
from kl_utils.training import train
from kl_utils.protocol import experiment, run
from kl_utils.config.profiles import read_profile
from kl_utils.core.paths import cache_dir
from kl_utils.training.model import build_model
from tests.conftest import TINY_DATA
from tests.test_model_train_eval import TINY_MODEL, TRAIN

ROOT = Path(__file__).resolve().parents[1]


def _tok_and_examples():
    from kl_utils.data import dataset as data
    from kl_utils.data.tokenizer import build_word_tokenizer
    tok = build_word_tokenizer(experiment.vocabulary_texts())
    people = data.build_people(TINY_DATA)
    return tok, data.encode_documents([row["bios"][0] for row in people.select(range(10))], tok)


@pytest.fixture
def tiny_cfg(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.delenv("KL_RESULTS_ROOT", raising=False)
    cfg = read_profile("smoke")
    cfg["data"] = dict(TINY_DATA)
    for stage in ("base", "cpt", "it"):
        cfg[stage] = {**cfg[stage], "epochs": 1}
    cfg["cpt"]["epochs"] = 2
    cfg["eval"] = {**cfg["eval"], "per_epoch": False}
    cfg.pop("ablations", None)  # its generated arms refer to arms this fixture replaces
    cfg["arms"] = {"format_steps": {"budget": "steps", "cpt": {"augmentation": {"k": 1}}},
                   "format": {"cpt": {"augmentation": {"k": 1}}},
                   "pit": {"order": "pit"}}
    cfg["grids"] = {"main": [{"arms": ["baseline", "format_steps"], "seeds": [0, 1]}, {"arms": ["baseline"], "seeds": [1, 2]}]}
    return cfg


def test_resumed_training_equals_uninterrupted(tmp_path, monkeypatch):
    tok, examples = _tok_and_examples()
    cfg = {**TRAIN, "epochs": 3, "batch_size": 4}
    a = build_model(TINY_MODEL, tok, seed=0)
    hist_a = train.train(a, examples, cfg, seed=0, pad_id=tok.pad_token_id)
    # crash in the middle of the second epoch (after a checkpoint), then rerun on a fresh model
    ckpt, real_update, calls = tmp_path / "stage.pt", train._update, []

    def crashing_update(*args, **kw):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt("simulated crash")
        return real_update(*args, **kw)
    monkeypatch.setattr(train, "_update", crashing_update)
    with pytest.raises(KeyboardInterrupt):
        train.train(build_model(TINY_MODEL, tok, seed=0), examples, cfg, seed=0, pad_id=tok.pad_token_id,
                    checkpoint=ckpt, checkpoint_every=2)
    assert torch.load(ckpt, weights_only=False)["step"] == 4 and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(train, "_update", real_update)
    b = build_model(TINY_MODEL, tok, seed=0)
    hist_b = train.train(b, examples, cfg, seed=0, pad_id=tok.pad_token_id, checkpoint=ckpt, checkpoint_every=2)
    assert hist_b["loss"] == hist_a["loss"]
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    # a finished stage is not trained again: its checkpoint just loads
    c = build_model(TINY_MODEL, tok, seed=1)
    assert train.train(c, examples, cfg, seed=0, pad_id=tok.pad_token_id, checkpoint=ckpt)["loss"] == hist_a["loss"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_epoch_order_depends_only_on_seed_and_epoch():
    _, examples = _tok_and_examples()
    one = train.epoch_batches(examples, 3, 0, seed=5, epoch=2)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(one, train.epoch_batches(examples, 3, 0, 5, 2)))
    other = train.epoch_batches(examples, 3, 0, seed=5, epoch=3)
    assert any(not torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(one, other))
    assert sum(int((b["labels"] != -100).sum()) for b in one) == sum(len(e["input_ids"]) for e in examples)


def test_step_budget_matches_baseline_steps_and_pit_order(tiny_cfg):
    ds, tok, _ = experiment.prepare_data("toy", tiny_cfg)
    quiet = dict(log=lambda *a: None)
    base = experiment.run_arm("toy", tiny_cfg, ds, tok, arm="baseline", seed=0, **quiet)
    steps = experiment.run_arm("toy", tiny_cfg, ds, tok, arm="format_steps", seed=0, **quiet)
    epochs = experiment.run_arm("toy", tiny_cfg, ds, tok, arm="format", seed=0, **quiet)
    assert steps["n_cpt_documents"] == epochs["n_cpt_documents"] == 2 * base["n_cpt_documents"]
    assert steps["optimizer_steps"] == base["optimizer_steps"]
    assert epochs["optimizer_steps"]["cpt"] == train.total_steps(2 * base["n_cpt_documents"], tiny_cfg["cpt"])
    assert epochs["optimizer_steps"]["cpt"] > base["optimizer_steps"]["cpt"]
    pit = experiment.run_arm("toy", tiny_cfg, ds, tok, arm="pit", seed=0, **quiet)
    assert set(pit["optimizer_steps"]) == {"pit", "cpt"}
    # finished runs keep their models (for the sharpness analysis), not their stage checkpoints
    ckpt = experiment.checkpoint_dir("toy", base["run_id"])
    assert (ckpt / "model" / "config.json").exists() and (ckpt / "after_cpt" / "model.safetensors").exists()
    assert not list(ckpt.glob("*.pt"))


def test_grid_cells_and_errors(tiny_cfg):
    assert run.grid_cells(tiny_cfg, "main") == [("baseline", 0), ("baseline", 1), ("format_steps", 0),
                                                ("format_steps", 1), ("baseline", 2)]
    with pytest.raises(ValueError, match="unknown grid 'nope'"):
        run.grid_cells(tiny_cfg, "nope")
    tiny_cfg["grids"]["bad"] = [{"arms": ["missing"]}]
    with pytest.raises(ValueError, match="unknown arm 'missing'"):
        run.grid_cells(tiny_cfg, "bad")
    with pytest.raises(ValueError, match="unknown keys"):
        experiment.arm_spec({**tiny_cfg, "arms": {"x": {"cpt": {}, "oops": 1}}}, "x", 0)


def test_run_grid_skips_finished_runs(tiny_cfg, capsys):
    cells = [("baseline", 0)]
    first = run.run_grid("toy", tiny_cfg, cells, workers=1)
    out = capsys.readouterr().out
    assert "0 of 1 runs already have records" in out
    again = run.run_grid("toy", tiny_cfg, cells, workers=1)
    assert "1 of 1 runs already have records; 0 to run" in capsys.readouterr().out
    assert [r["run_id"] for r in again] == [r["run_id"] for r in first]
    # a finished grid needs no base model (a clone has the records but not the cache)
    for cached in cache_dir("toy").glob("base-*"):
        shutil.rmtree(cached)
    run.run_grid("toy", tiny_cfg, cells, workers=1)
    assert not list(cache_dir("toy").glob("base-*"))


def _profile_file(tmp_path) -> Path:
    """A smoke-sized profile whose CPT lasts long enough to be killed in the middle."""
    cfg = read_profile("smoke")
    cfg["data"] = dict(TINY_DATA, n_new=40)
    cfg["base"] = {**cfg["base"], "epochs": 1}
    cfg["cpt"] = {**cfg["cpt"], "epochs": 60, "batch_size": 8}
    cfg["checkpoint_every"] = 10
    cfg["threads"] = 1
    path = tmp_path / "killme.yaml"
    path.write_text(yaml.safe_dump({"profile": "killme", "config": cfg}))
    return path


def _run(profile, results, **kw):
    env = {**os.environ, "KL_RESULTS_ROOT": str(results), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kl_utils.protocol.run", "--profile", str(profile), "--arms", "baseline", "--seeds", "0",
           "--workers", "1"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, **kw)


def test_kill_9_then_resume_gives_the_same_result(tmp_path):
    profile = _profile_file(tmp_path)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = _run(profile, killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = list(killed.glob("killme/ckpt/*/cpt.pt"))
        if found and torch.load(found[0], weights_only=False)["step"] >= 30:
            ckpt = found[0]
            break
        time.sleep(0.2)
    assert ckpt is not None and proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(ckpt, weights_only=False)["step"]
    assert not list(killed.glob("killme/runs/baseline-*.json"))
    assert _run(profile, killed).wait() == 0
    assert _run(profile, clean).wait() == 0
    resumed = json.loads(next(killed.glob("killme/runs/baseline-*.json")).read_text())
    fresh = json.loads(next(clean.glob("killme/runs/baseline-*.json")).read_text())
    assert 30 <= step_at_kill < resumed["optimizer_steps"]["cpt"]
    assert resumed["metrics"] == fresh["metrics"]
    assert resumed["resumed_stages"] == ["cpt"] and "resumed_stages" not in fresh  # its timing is partial
    assert 0 < fresh["cpu_time_s"] and 0 < resumed["cpu_time_s"]  # CPU seconds, not inflated by waiting
    assert set(fresh["timing_cpu"]) == {"cpt_s", "it_s"} and 0 < fresh["timing_cpu"]["cpt_s"] <= fresh["cpu_time_s"]
    assert resumed["history"]["cpt"]["loss"] == fresh["history"]["cpt"]["loss"]


def test_run_grid_in_a_redraw_trains_nothing_and_names_the_command(tiny_cfg, monkeypatch):
    """With training off (make figures), a grid whose runs have no record is drawn from the records it has
    (none here), with one line naming the command that makes the rest; nothing is trained."""
    monkeypatch.setenv("KL_NO_TRAIN", "1")
    lines = []
    out = run.run_grid("toy", tiny_cfg, run.grid_cells(tiny_cfg, "main"), workers=1, log=lines.append)
    assert out == [] and len(lines) == 1
    assert lines[0].startswith("5 of 5 runs have no record and training is off") and "make reproduce PROFILE=toy" in lines[0]


def test_worker_records_name_the_commit_the_grid_started_at(tiny_cfg, monkeypatch):
    """Two worker processes: their records carry the commit the parent pinned at the grid's start."""
    monkeypatch.setattr(records, "_PINNED_COMMIT", "pinned-at-start")
    monkeypatch.setenv("KL_RESULTS_ROOT", str(paths.ROOT / "results"))  # spawned workers see no monkeypatched ROOT
    cells = [("baseline", 0), ("format_steps", 0)]
    out = run.run_grid("toy", tiny_cfg, cells, workers=2, log=lambda *a: None)
    assert len(out) == 2 and {r["env"]["git_commit"] for r in out} == {"pinned-at-start"}


def test_the_same_run_under_two_arm_names_is_trained_once(tiny_cfg):
    """`sam` set to the rho a `sam_rho<v>` sweep arm ran is the same run (same seed, same spec hash):
    trained once, the other cell gets a copy of the record marked same_run_as; a later grid with a
    new name for it adopts the existing record instead of training."""
    tiny_cfg["arms"] = {"sam": {"cpt": {"optimizer": "sam", "rho": 0.05}},
                        "sam_rho0.05": {"cpt": {"optimizer": "sam", "rho": 0.05}},
                        "sam_rho0.1": {"cpt": {"optimizer": "sam", "rho": 0.1}}}
    lines = []
    out = run.run_grid("toy", tiny_cfg, [("sam_rho0.05", 0), ("sam", 0), ("sam_rho0.1", 0)], workers=1,
                       log=lines.append)
    by_arm = {r["arm"]: r for r in out}
    assert set(by_arm) == {"sam", "sam_rho0.05", "sam_rho0.1"}
    assert by_arm["sam"]["same_run_as"] == by_arm["sam_rho0.05"]["run_id"] and "same_run_as" not in by_arm["sam_rho0.05"]
    assert by_arm["sam"]["metrics"] == by_arm["sam_rho0.05"]["metrics"]
    assert by_arm["sam"]["run_id"].rsplit("-", 1)[1] == by_arm["sam_rho0.05"]["run_id"].rsplit("-", 1)[1]
    assert "sam_rho0.1" not in by_arm["sam"]["run_id"] and "same_run_as" not in by_arm["sam_rho0.1"]
    assert any("2 to run" in line for line in lines)
    # a new arm name for an existing run: adopted, nothing trained
    tiny_cfg["arms"]["sam_best"] = {"cpt": {"optimizer": "sam", "rho": 0.1}}
    lines.clear()
    again = run.run_grid("toy", tiny_cfg, [("sam_best", 0)], workers=1, log=lines.append)
    assert again[0]["same_run_as"] == by_arm["sam_rho0.1"]["run_id"]
    assert any("0 to run" in line for line in lines)

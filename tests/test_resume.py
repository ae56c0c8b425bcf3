"""Resume from a mid-run checkpoint where it matters: in smoke, CPT is shorter than
`checkpoint_every`, so a killed run simply restarts. Here a smoke-sized run is interrupted one
update after a checkpoint was written in CPT, rerun and interrupted again after a checkpoint in
IT, then rerun to the end: it ends with the metrics and loss history of an uninterrupted run, and
the reruns did continue from the checkpoints (they ran only the updates that were missing)."""
from collections import Counter
from pathlib import Path

import pytest
import torch

from kl_utils.training import train
from kl_utils.protocol import experiment
from kl_utils.config.profiles import read_profile
from tests.conftest import TINY_DATA


class Interrupted(KeyboardInterrupt):
    """Stands for a kill or Ctrl-C in the middle of a stage."""


@pytest.fixture
def cfg():
    cfg = read_profile("smoke")
    cfg["data"] = dict(TINY_DATA)  # 20 new people: 10 train (60 QA pairs), 2 valid, 8 test
    cfg["base"] = {**cfg["base"], "enabled": False}  # a seeded random model: no base stage to wait for
    cfg["cpt"] = {**cfg["cpt"], "epochs": 3, "batch_size": 4}
    cfg["it"] = {**cfg["it"], "epochs": 2, "batch_size": 8}
    cfg["eval"] = {**cfg["eval"], "per_epoch": True}  # IT's history carries per-epoch evaluations
    cfg.update(checkpoint_every=4, threads=1)
    return cfg


def _run(monkeypatch, root: Path, cfg, ds, tok, interrupt: str | None = None) -> tuple[dict | None, Counter]:
    """run_arm under results root `root`; with `interrupt` ("cpt" or "it"), it is interrupted one
    update after that stage wrote its first mid-run checkpoint. Returns (result, updates per stage)."""
    monkeypatch.setenv("KL_RESULTS_ROOT", str(root))
    updates, stage, armed = Counter(), [None], []
    real_train, real_update, real_save = experiment.train, train._update, train._save_checkpoint

    def counting_train(*args, desc="", **kw):
        stage[0] = desc.split()[-1].lower()  # "baseline s0 CPT" -> "cpt"
        return real_train(*args, desc=desc, **kw)

    def update(*args, **kw):
        if armed and len(armed) == 2:
            raise Interrupted(f"after the {interrupt} checkpoint")
        if armed:
            armed.append("one more update, lost with the interruption")
        updates[stage[0]] += 1
        return real_update(*args, **kw)

    def save(path, state):
        real_save(path, state)
        if Path(path).name == f"{interrupt}.pt" and not state["done"] and not armed:
            armed.append(state["step"])

    monkeypatch.setattr(experiment, "train", counting_train)
    monkeypatch.setattr(train, "_update", update)
    monkeypatch.setattr(train, "_save_checkpoint", save)
    try:
        return experiment.run_arm("resume", cfg, ds, tok, arm="baseline", seed=0, log=lambda *a: None), updates
    except Interrupted:
        return None, updates
    finally:
        monkeypatch.setattr(experiment, "train", real_train)
        monkeypatch.setattr(train, "_update", real_update)
        monkeypatch.setattr(train, "_save_checkpoint", real_save)


def test_run_resumed_after_checkpoints_in_cpt_and_it_equals_an_uninterrupted_run(tmp_path, monkeypatch, cfg):
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path / "data"))
    ds, tok, _ = experiment.prepare_data("resume", cfg)
    fresh, full = _run(monkeypatch, tmp_path / "fresh", cfg, ds, tok)
    n_cpt, n_it = fresh["optimizer_steps"]["cpt"], fresh["optimizer_steps"]["it"]
    assert full == {"cpt": n_cpt, "it": n_it} and n_cpt > 2 * cfg["checkpoint_every"] < n_it  # mid-run checkpoints exist
    root = tmp_path / "interrupted"
    ckpt = experiment.checkpoint_dir("resume", fresh["run_id"]).relative_to(tmp_path / "fresh")

    def state(stage):
        return torch.load(root / ckpt / f"{stage}.pt", weights_only=False)

    result, updates = _run(monkeypatch, root, cfg, ds, tok, interrupt="cpt")
    assert result is None and not list(root.glob("resume/runs/*.json"))
    at_cpt = state("cpt")["step"]
    assert not state("cpt")["done"] and at_cpt == cfg["checkpoint_every"] and updates == {"cpt": at_cpt + 1}

    result, updates = _run(monkeypatch, root, cfg, ds, tok, interrupt="it")
    assert result is None and state("cpt")["done"] and not state("it")["done"]
    at_it = state("it")["step"]
    assert at_it == cfg["checkpoint_every"] and updates == {"cpt": n_cpt - at_cpt, "it": at_it + 1}

    resumed, updates = _run(monkeypatch, root, cfg, ds, tok)
    assert updates == {"it": n_it - at_it}  # CPT loaded its finished checkpoint; IT continued from its own
    assert resumed["run_id"] == fresh["run_id"]
    assert resumed["metrics"] == fresh["metrics"]
    assert resumed["history"] == fresh["history"]  # loss of every step, and IT's per-epoch evaluations
    assert len(resumed["history"]["it"]["epochs"]) == cfg["it"]["epochs"]
    assert not list((root / ckpt).glob("*.pt"))  # the stage checkpoints are gone once the run is finished

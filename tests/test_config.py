import inspect
import json
import os
import subprocess
import sys

import pytest
import yaml

from kl_utils.config import arms, profiles as config
from kl_utils.core import spec
from kl_utils.core.paths import PROFILES_DIR

REQUIRED = ("data", "model", "base", "cpt", "it", "eval", "seeds")


def test_profiles_exist_and_are_complete():
    names = config.available_profiles()
    assert {"smoke", "cpu"} <= set(names)
    for name in names:
        doc = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())
        assert doc["profile"] == name
        cfg = config.read_profile(name)  # with its parent's values when it `extends:` one
        for key in REQUIRED:
            assert key in cfg, f"{name}.yaml lacks config.{key}"
        from kl_utils.protocol import experiment, run
        for arm, seed in run.grid_cells(cfg) if cfg.get("grids") else []:
            experiment.arm_spec(cfg, arm, seed)  # every arm of every grid is defined


def test_extends_merges_the_parent_and_papermill_gets_the_full_config():
    full = config.read_profile("cpu-full")
    cpu = config.read_profile("cpu")
    assert full["model"] == cpu["model"] and full["ablations"] and "para4" in full["arms"] and "sam" in full["arms"]
    params = yaml.safe_load(config.resolved_parameters("cpu-full"))
    assert params == {"profile": "cpu-full", "config": full}


def test_profile_given_as_a_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"profile": "mine", "extends": "smoke", "config": {"seeds": [7]}}))
    name, cfg = config.load_config(str(path))
    assert name == "mine" and cfg["seeds"] == [7] and cfg["model"] == config.read_profile("smoke")["model"]


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown profile 'bogus'.*cpu.*smoke"):
        config.resolve_profile("bogus")


def test_env_var_chooses_profile_when_nothing_injected(monkeypatch):
    monkeypatch.setenv("KL_PROFILE", "smoke")
    name, cfg = config.load_config(None, None)
    assert name == "smoke" and cfg == config.read_profile("smoke")
    monkeypatch.delenv("KL_PROFILE")
    assert config.load_config(None, None)[0] == "cpu"


def test_injected_config_wins_and_is_copied():
    injected = {"data": {"seed": 9}}
    name, cfg = config.load_config("smoke", injected)
    assert name == "smoke" and cfg == injected and cfg is not injected


def test_merge_and_hash():
    a = {"x": {"y": 1, "z": 2}, "w": 3}
    m = spec.merge(a, {"x": {"y": 5}})
    assert m == {"x": {"y": 5, "z": 2}, "w": 3} and a["x"]["y"] == 1
    assert spec.config_hash({"a": 1, "b": 2}) == spec.config_hash({"b": 2, "a": 1})
    assert spec.config_hash({"a": 1}) != spec.config_hash({"a": 2})


def test_lr_ablation_of_an_unknown_arm_is_a_clear_error():
    from kl_utils.protocol.experiment import all_arms
    with pytest.raises(ValueError, match=r"ablations.lr.arms names 'nope'"):
        all_arms({"arms": {"sam": {}}, "cpt": {"lr": 1e-3}, "ablations": {"lr": {"arms": ["nope"], "factors": [2.0]}}})


# ---------------------------------------------------------------------------------------------
# The schema (kl_utils.config.schema): checks before any work, adds nothing to what is hashed

def _raw(name: str) -> dict:
    """A profile's config straight from its YAML files (the parent's merged in), unchecked."""
    doc = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())
    return spec.merge(_raw(doc["extends"]), doc["config"]) if doc.get("extends") else doc["config"]


def test_validation_adds_nothing_to_the_config():
    for name in config.available_profiles():
        raw = _raw(name)
        assert config.load_config(name)[1] == raw and config.read_profile(name) == raw, name


def test_every_committed_arm_record_matches_its_profiles_run_id():
    """Every arm record under results/<profile>/runs (not runs-v1, records of an older cpu config) has
    the run id its profile gives its arm and seed today: the schema changed no run id."""
    from kl_utils.protocol import experiment
    from kl_utils.core.paths import ROOT
    mismatched, checked = {}, {}
    for runs in sorted((ROOT / "results").glob("*/runs")):
        profile = runs.parent.name
        cfg = config.read_profile(profile)
        for path in sorted(runs.glob("*.json")):
            rec = json.loads(path.read_text())
            if rec.get("kind") != "arm":
                continue
            checked[profile] = checked.get(profile, 0) + 1
            if experiment.arm_spec(cfg, rec["arm"], rec["seed"])[2] != rec["run_id"]:
                mismatched.setdefault(profile, []).append(rec["run_id"])
    assert {"cpu", "cpu-full", "cpu-base1", "cpu-impl"} <= set(checked) and sum(checked.values()) >= 278
    assert mismatched == {}


def test_defaults_are_written_once():
    from kl_utils.config import schema
    from kl_utils.training import batching, train
    assert schema.default("checkpoint_every") == 100  # every committed record was made with 100
    assert inspect.signature(train.train).parameters["checkpoint_every"].default == schema.default("checkpoint_every")
    assert arms.IMPLEMENTATION_DEFAULTS == {"batching": "pad", "logits": "all", "fused": False}  # run ids hash these
    assert train.OPTIMIZERS == ("adamw", "sam") and batching.MODES == schema.BATCHING
    assert schema.default("cpt.betas") == (0.9, 0.999) and schema.default("data.valid_frac") == 0.1
    for stage in ("base", "cpt", "it"):  # every train key has a default or is required (epochs | max_steps, ...)
        assert set(schema.TRAIN) <= set(schema.SCHEMA[stage])


def test_checking_a_profile_imports_no_torch():
    # what keeps a profile check fast is that it imports no torch / datasets (no wall-clock bound here:
    # timings belong in `make bench`, and a loaded machine would fail such a test for nothing)
    code = ("import sys; from kl_utils.config import profiles as config\n"
            "for p in config.available_profiles(): config.load_config(p)\n"
            "assert 'torch' not in sys.modules and 'datasets' not in sys.modules, 'heavy import'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=config.ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(config.ROOT)})
    assert proc.returncode == 0, proc.stderr


def test_injected_config_is_checked_too():
    with pytest.raises(config.ProfileError, match=r"injected for profile smoke: key cpt.rho: is -1"):
        config.load_config("smoke", {**config.read_profile("smoke"), "cpt": {"rho": -1}})


def test_suggestions():
    from kl_utils.config import schema
    assert schema.suggestion("learning_rate", schema.TRAIN) == "lr"
    assert schema.suggestion("batchsize", schema.TRAIN) == "batch_size"
    assert schema.suggestion("zzz", schema.TRAIN) is None


def test_home_grid_of_an_arm_is_the_grid_that_runs_it_on_most_seeds():
    cfg = config.read_profile("cpu-llm")
    homes = arms.home_grids(cfg)
    assert homes["baseline"] == "main"          # main runs it on 3 seeds, the lr sweep on one
    assert homes["sam_rho0.01"] == "sweep_rho"
    assert set(homes) == {arm for grid in cfg["grids"] for arm, _ in arms.grid_cells(cfg, grid)}

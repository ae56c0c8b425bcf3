import pytest
import yaml

from kl_utils import config
from kl_utils.paths import PROFILES_DIR

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
        from kl_utils import experiment, run
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
    m = config.merge(a, {"x": {"y": 5}})
    assert m == {"x": {"y": 5, "z": 2}, "w": 3} and a["x"]["y"] == 1
    assert config.config_hash({"a": 1, "b": 2}) == config.config_hash({"b": 2, "a": 1})
    assert config.config_hash({"a": 1}) != config.config_hash({"a": 2})


def test_lr_ablation_of_an_unknown_arm_is_a_clear_error():
    from kl_utils.experiment import all_arms
    with pytest.raises(ValueError, match=r"ablations.lr.arms names 'nope'"):
        all_arms({"arms": {"sam": {}}, "cpt": {"lr": 1e-3}, "ablations": {"lr": {"arms": ["nope"], "factors": [2.0]}}})

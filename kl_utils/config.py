"""Profiles: one YAML parameter file per profile under profiles/, passed to papermill with -f.

A profile file holds `profile: <name>` and `config: {...}`. Papermill injects both into a
notebook's `parameters` cell. When nothing was injected (JupyterLab, nbval), the notebook calls
`load_config(None, None)`, which takes the profile from the KL_PROFILE environment variable, or
`cpu` by default, and reads its file.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import yaml

from kl_utils.paths import PROFILES_DIR

DEFAULT_PROFILE = "cpu"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _profile_file(name: str):
    """A profile given as a path to a YAML file (your own profile), or None."""
    return Path(name) if name.endswith((".yaml", ".yml")) and Path(name).is_file() else None


def resolve_profile(profile: str | None) -> str:
    """The profile's name: a name under profiles/, or the `profile:` of a YAML file given by path."""
    name = profile or os.environ.get("KL_PROFILE") or DEFAULT_PROFILE
    if _profile_file(name):
        return _read(_profile_file(name))[0]
    valid = available_profiles()
    if name not in valid:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(valid)} (or a path to a .yaml file)")
    return name


def _read(path: Path, expect: str | None = None) -> tuple[str, dict]:
    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or "config" not in doc or not isinstance(doc.get("profile"), str) \
            or (expect is not None and doc["profile"] != expect):
        raise ValueError(f"{path}: expected top-level keys 'profile: {expect or '<name>'}' and 'config:'")
    if doc.get("extends"):  # a variant: the parent profile's config with these values on top
        return doc["profile"], merge(read_profile(doc["extends"]), doc["config"])
    return doc["profile"], doc["config"]


def read_profile(name: str) -> dict:
    if _profile_file(name):
        return _read(_profile_file(name))[1]
    return _read(PROFILES_DIR / f"{resolve_profile(name)}.yaml", expect=name)[1]


def load_config(profile: str | None = None, config: dict | None = None) -> tuple[str, dict]:
    """Return (profile name, config). `config` is what papermill injected (or None). `profile`
    may also be a path to a profile YAML file."""
    name = profile or os.environ.get("KL_PROFILE") or DEFAULT_PROFILE
    cfg = copy.deepcopy(config) if config is not None else read_profile(name)
    return resolve_profile(name), cfg


def merge(base: dict, override: dict | None) -> dict:
    """Recursive dict merge: values of `override` win; neither input is modified."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Training-stage keys that select an implementation of the same computation (kl_utils.train), with
# the value each had before the key existed. A stage that sets one to this value hashes as if the
# key were absent, so records made before the key was introduced keep their run ids.
IMPLEMENTATION_DEFAULTS = {"batching": "pad", "logits": "all", "fused": False}
STAGES = ("base", "cpt", "it")


def canonical_spec(spec: dict) -> dict:
    """`spec` with each stage's implementation keys left out where they have their default value."""
    def stage(cfg):
        if not isinstance(cfg, dict):
            return cfg
        return {k: v for k, v in cfg.items() if not (k in IMPLEMENTATION_DEFAULTS and v == IMPLEMENTATION_DEFAULTS[k])}
    return {k: stage(v) if k in STAGES else v for k, v in spec.items()}


def config_hash(obj) -> str:
    """Stable short hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolved_parameters(profile: str) -> str:
    """The papermill parameters file of a profile: `profile` and its full config (with a parent
    profile's values merged in when it `extends:` one)."""
    name = resolve_profile(profile)
    return yaml.safe_dump({"profile": name, "config": read_profile(profile)}, sort_keys=False)


if __name__ == "__main__":
    import sys
    if len(sys.argv) != 3 or sys.argv[1] != "resolve":
        sys.exit("usage: python -m kl_utils.config resolve PROFILE   (prints papermill parameters)")
    print(resolved_parameters(sys.argv[2]), end="")

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

import yaml

from kl_utils.paths import PROFILES_DIR

DEFAULT_PROFILE = "cpu"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def resolve_profile(profile: str | None) -> str:
    name = profile or os.environ.get("KL_PROFILE") or DEFAULT_PROFILE
    valid = available_profiles()
    if name not in valid:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(valid)}")
    return name


def read_profile(name: str) -> dict:
    path = PROFILES_DIR / f"{resolve_profile(name)}.yaml"
    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or "config" not in doc or doc.get("profile") != name:
        raise ValueError(f"{path}: expected top-level keys 'profile: {name}' and 'config:'")
    return doc["config"]


def load_config(profile: str | None = None, config: dict | None = None) -> tuple[str, dict]:
    """Return (profile name, config). `config` is what papermill injected (or None)."""
    name = resolve_profile(profile)
    cfg = copy.deepcopy(config) if config is not None else read_profile(name)
    return name, cfg


def merge(base: dict, override: dict | None) -> dict:
    """Recursive dict merge: values of `override` win; neither input is modified."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_hash(obj) -> str:
    """Stable short hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]

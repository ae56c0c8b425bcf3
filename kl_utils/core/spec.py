"""Config dicts: a recursive merge (a profile's values over its parent's, an arm's over its
profile's) and the stable short hash that run ids are made of."""
from __future__ import annotations

import copy
import hashlib
import json


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

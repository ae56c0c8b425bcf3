"""Run records: one JSON file per run with config, seed, git commit, package versions, metrics
and wall time. Written atomically (kl_utils.core.atomic: temp file + rename): a crash never leaves a partial record.
Figures and tables are built only from these records."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from kl_utils.core.atomic import atomic_write_json, atomic_write_text  # noqa: F401 (re-exported)
from kl_utils.core import precision
from kl_utils.core.paths import ROOT, runs_dir

PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "numpy", "papermill",
            "nbval", "matplotlib", "seaborn", "kl_utils")


def git_commit() -> str:
    """HEAD commit; when tracked files differ from it, '<sha>+dirty.<first 12 hex of the sha256 of
    `git diff HEAD`>', so two records made from different uncommitted changes never share a commit
    string ('unknown' outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        if not dirty:
            return head
        diff = subprocess.run(["git", "diff", "HEAD", "--no-color", "--no-ext-diff"], cwd=ROOT, capture_output=True,
                              check=True).stdout
        return f"{head}+dirty.{hashlib.sha256(diff).hexdigest()[:12]}"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# The commit of the code a long-running process loaded: taken when its work starts (run.run_grid, a
# worker's first run), not when a record is written minutes or hours later, when HEAD may have moved.
_PINNED_COMMIT: str | None = None


def pin_commit(commit: str | None = None) -> str:
    """Record this process's commit now, or the given one (a worker gets its parent's); idempotent.
    environment() then reports it."""
    global _PINNED_COMMIT
    if _PINNED_COMMIT is None:
        _PINNED_COMMIT = commit or git_commit()
    return _PINNED_COMMIT


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ISA extensions that change which float kernels torch picks (and so the last bits of a result):
# records name them, because training is bit-identical run to run on one CPU kind, not across kinds.
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile", "avx_vnni")


def cpu_info() -> dict:
    """The CPU's model name and the ISA flags of ISA_FLAGS it has (Linux /proc/cpuinfo, flags read by
    precision.cpu_flags; else what platform knows)."""
    model = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
            break
    flags = precision.cpu_flags(text)
    return {"model": model, "isa": [f for f in ISA_FLAGS if f in flags]}


def environment() -> dict:
    import torch
    return {"git_commit": _PINNED_COMMIT or git_commit(), "packages": package_versions(),
            "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "cpu": cpu_info(),
            "torch_threads": torch.get_num_threads(), "arithmetic": precision.host_arithmetic(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def stage_precisions(config: dict) -> dict[str, str]:
    """The arithmetic of each training stage a record's config has ({"cpt": "bf16", "it": "fp32"}):
    `mixed_precision` as resolved on this host (a run id's config has `auto` resolved already)."""
    stages = {k: v for k, v in (config or {}).items() if k in ("base", "cpt", "it") and isinstance(v, dict)}
    return {k: precision.label(precision.resolve(v.get("mixed_precision", "no"))) for k, v in stages.items()
            if not (k == "base" and v.get("enabled") is False)}


def record_precision(rec: dict) -> dict[str, str]:
    """A record's stage precisions: written by write_run_record since they were recorded, else read
    from its config (the records before that named them only there)."""
    return rec.get("precision") or stage_precisions(rec.get("config") or {})


def write_run_record(profile: str, run_id: str, *, kind: str, config: dict, seed: int,
                     metrics: dict, wall_time_s: float, extra: dict | None = None) -> Path:
    record = {"run_id": run_id, "profile": profile, "kind": kind, "config": config, "seed": seed,
              "precision": stage_precisions(config), "metrics": metrics, "wall_time_s": round(wall_time_s, 3), "env": environment(),
              **(extra or {})}
    path = runs_dir(profile) / f"{run_id}.json"
    atomic_write_json(path, record)
    return path


def as_stored(obj):
    """`obj` as it reads back from a record (JSON, with non-JSON values as strings)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def reuse_or_write(profile: str, run_id: str, *, kind: str, config: dict, seed: int, compute) -> dict:
    """The record `run_id` of the profile when one exists with this kind and config; otherwise
    `compute()` -> (metrics, extra or None) is run and its record written. Analyses whose records
    are committed are thus redrawn without recomputing (`make figures`), and recomputed in a
    fresh results tree (`make reproduce`)."""
    done = existing_record(profile, run_id, kind=kind, config=config)
    if done is not None:
        return done
    t0 = time.time()
    metrics, extra = compute()
    path = write_run_record(profile, run_id, kind=kind, config=config, seed=seed, metrics=metrics,
                            wall_time_s=time.time() - t0, extra=extra)
    return json.loads(path.read_text())


def existing_record(profile: str, run_id: str, *, kind: str, config: dict | None = None) -> dict | None:
    """The record `run_id` of the profile if it exists with this kind (and config, when given)."""
    path = runs_dir(profile) / f"{run_id}.json"
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    if rec.get("kind") != kind or (config is not None and rec.get("config") != as_stored(config)):
        return None
    return rec


def distinct_runs(recs: list[dict]) -> list[dict]:
    """The records without the copies of one run under another arm name (`same_run_as`, written by
    kl_utils.protocol.run.adopt_same_runs): for whatever pools over runs (the C1 per-fact strata, wall time)
    rather than comparing arms."""
    return [r for r in recs if not r.get("same_run_as")]


def load_run_records(profile: str, kind: str | None = None, folder: str = "runs") -> list[dict]:
    """All records of a profile (optionally of one kind), sorted by run id; `folder`: another
    folder of records under results/<profile> (e.g. runs-v1, records of a superseded config)."""
    records = []
    for path in sorted((runs_dir(profile).parent / folder).glob("*.json")):
        with open(path) as f:
            rec = json.load(f)
        if kind is None or rec.get("kind") == kind:
            records.append(rec)
    return records

"""Run records: one JSON file per run with config, seed, git commit, package versions, metrics
and wall time. Written atomically (temp file + rename): a crash never leaves a partial record.
Figures and tables are built only from these records."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from kl_utils.paths import ROOT, runs_dir

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


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict:
    import torch
    return {"git_commit": git_commit(), "packages": package_versions(),
            "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def atomic_write_json(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_run_record(profile: str, run_id: str, *, kind: str, config: dict, seed: int,
                     metrics: dict, wall_time_s: float, extra: dict | None = None) -> Path:
    record = {"run_id": run_id, "profile": profile, "kind": kind, "config": config, "seed": seed,
              "metrics": metrics, "wall_time_s": round(wall_time_s, 3), "env": environment(),
              **(extra or {})}
    path = runs_dir(profile) / f"{run_id}.json"
    atomic_write_json(path, record)
    return path


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

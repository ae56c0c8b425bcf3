"""Notebook housekeeping for `make reproduce`.

    python -m kl_utils.tools.notebooks publish SCRATCH_DIR notebooks/

copies the executed notebooks over the committed ones, without papermill's injected-parameters
cell (so a notebook opened in JupyterLab runs with its own defaults, and nbval keeps running
the smoke profile through KL_PROFILE). Called only after every notebook of the cpu profile ran
(`make reproduce PUBLISH=1`, `make figures`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def strip_injected(nb):
    """Without papermill's injected-parameters cell, and without what changes on every execution and says
    nothing about the results (per-cell timestamps and durations, the run's paths and times), so that
    publishing the same results twice leaves the notebooks byte-identical."""
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    run = nb.metadata.get("papermill")
    if run is not None:
        nb.metadata["papermill"] = {k: run[k] for k in ("parameters", "version") if k in run}
    return nb


def publish(scratch: Path, dest: Path) -> list[Path]:
    written = []
    for src in sorted(Path(scratch).glob("*.ipynb")):
        nb = strip_injected(nbformat.read(src, as_version=4))
        target = Path(dest) / src.name
        tmp = target.with_suffix(".ipynb.tmp")
        nbformat.write(nb, tmp)
        tmp.replace(target)
        written.append(target)
    return written


def write_timing(profile: str, per: dict[str, int]) -> dict:
    """results/<profile>/timing.json from the seconds per notebook of `make reproduce`: the
    end-to-end wall time of the whole sequence and of each notebook, with the commit and machine."""
    from kl_utils.core.paths import results_dir
    from kl_utils.core.records import atomic_write_json, environment
    env = environment()
    out = {"profile": profile, "wall_time_s": sum(per.values()), "per_notebook_s": dict(per),
           "git_commit": env["git_commit"], "machine": {k: env[k] for k in ("platform", "cpu_count", "cpu")}}
    atomic_write_json(results_dir(profile) / "timing.json", out)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "publish":
        for path in publish(Path(sys.argv[2]), Path(sys.argv[3])):
            print(f"published {path}")
    else:
        sys.exit("usage: python -m kl_utils.tools.notebooks publish SCRATCH_DIR DEST_DIR")

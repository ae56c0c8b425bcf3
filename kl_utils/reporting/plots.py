"""One figure style for the whole study: seaborn, colour-blind-safe palette, PNG + PDF under
figures/<profile>/."""
from __future__ import annotations

import json

import numpy as np
import matplotlib.pyplot as plt  # headless runs fall back to Agg by themselves; notebooks keep inline
import seaborn as sns

from kl_utils.analysis import stats
from kl_utils.core.paths import figures_dir

PALETTE = "colorblind"


def set_style() -> None:
    sns.set_theme(style="whitegrid", palette=PALETTE, context="notebook")
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


def strip(**kwargs):
    """sns.stripplot with the same jitter on every redraw: seaborn jitters from numpy's global random
    state, so draw from a fixed seed and give the caller's state back."""
    state = np.random.get_state()
    np.random.seed(0)
    try:
        return sns.stripplot(**kwargs)
    finally:
        np.random.set_state(state)


def t_interval(values) -> tuple[float, float]:
    """Seaborn `errorbar=` callable: the 95% t-interval over seeds, the interval of every table (stats.mean_ci),
    instead of seaborn's bootstrap, which is narrower at 3 seeds and redraws differently every time.
    With one value: no bar (nan)."""
    ci = stats.mean_ci(values)
    return ci["low"], ci["high"]


def savefig(fig, profile: str, name: str, run_ids=None, source: str | None = None) -> list[str]:
    """Save as PNG and PDF under figures/<profile>/; returns the paths relative to the project root.
    The figure's provenance goes to figures/<profile>/manifest.json: `run_ids`, the run records it
    was drawn from (the provenance test checks each exists and matches the profile), or, for a
    figure of generated data rather than of runs, `source` saying what it was computed from."""
    from kl_utils.core.records import atomic_write_json
    out = figures_dir(profile)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out / f"{name}.{ext}"
        # no creation date in the PDF: a redraw of unchanged records leaves the file byte-identical
        fig.savefig(path, metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(str(path.relative_to(out.parents[1])))
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[name] = {"run_ids": sorted(set(list(run_ids) if run_ids is not None else [])), **({"source": source} if source else {})}
    atomic_write_json(manifest_path, manifest)
    return paths

"""Every path resolved from the project root, never from the working directory (papermill runs in
the caller's directory, nbval in the notebook's)."""
import contextlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = ROOT / "profiles"
# Data files shipped with the package (pyproject.toml: package-data).
PACKAGE_FILES = Path(__file__).resolve().parents[1] / "data" / "files"
BIOS_FIELDS_DIR = PACKAGE_FILES / "bios_fields"
WIKI_SAMPLE = PACKAGE_FILES / "wiki2023_bio_sample.jsonl"


def results_dir(profile: str) -> Path:
    """results/<profile>; KL_RESULTS_ROOT moves the whole results tree (tests, scratch runs)."""
    return Path(os.environ.get("KL_RESULTS_ROOT") or ROOT / "results") / profile


def runs_dir(profile: str) -> Path:
    return results_dir(profile) / "runs"


def data_dir(profile: str) -> Path:
    """Generated data and tokenizer (not committed: rebuilt byte-identically from the seed)."""
    return results_dir(profile) / "data"


def cache_dir(profile: str) -> Path:
    """Cached model checkpoints (e.g. the base model, keyed by config hash)."""
    return results_dir(profile) / "cache"


def figures_dir(profile: str) -> Path:
    """figures/<profile>; KL_FIGURES_ROOT moves the figures tree (a reproduction's fresh tree, tests)."""
    return Path(os.environ.get("KL_FIGURES_ROOT") or ROOT / "figures") / profile


@contextlib.contextmanager
def environ(**values):
    """Set environment variables (e.g. KL_RESULTS_ROOT) for the duration of the block, restoring what
    was there before; processes and kernels started in it inherit them."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

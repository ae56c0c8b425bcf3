"""Shared code of the knowledge-learning study. Notebooks stay thin and call into it; `python -m
kl_utils <verb>` (kl_utils.cli) is its one command line.

The package is layered along the data flow. Each subpackage imports only from the ones above it
in this list (tests/test_import_graph.py checks it, and that there is no import cycle):

  core/       paths, run records (atomic writes, provenance), config hashing, command-line errors, loading by folder or hub id
  data/       people and the bioS generator, documents and their formats, tokenizer, datasets
  augment/    sentence segmentation, formatting families (facts protected), rewriting baselines, audit, datasets map / CLI
  config/     profiles: the schema (keys, defaults, checks), loading, arms and run ids
  training/   model factory, pretrained models, batching, training loop, SAM (and in the HF Trainer), evaluation
  protocol/   one run (experiment), the grid runner, the plan of a profile, predictions
  analysis/   C1 probe, C2 diversity, sharpness, statistics, per-arm tables: measure and record
  reporting/  claims and their verdicts, figures, tables, REPORT.md, reproduction comparison
  tools/      speed benchmarks, GPU plan, notebook housekeeping, `make reproduce`

and, on top: cli.py (the verbs of `python -m kl_utils`) and __main__.py.
"""
from kl_utils.core.paths import ROOT

# The layers, lowest first (the docstring's order): a module may import its own layer and those before it.
LAYERS = ("core", "data", "augment", "config", "training", "protocol", "analysis", "reporting", "tools")

__all__ = ["LAYERS", "ROOT"]

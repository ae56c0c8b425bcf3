"""Shared code of the knowledge-learning study: data, tokenizer, model, training, evaluation,
run records. Notebooks stay thin and call into these modules."""
from kl_utils.paths import ROOT

__all__ = ["ROOT"]

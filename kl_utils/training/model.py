"""Model factory: a small Llama-style model from a config dict (random init), or a pretrained
causal LM from a local directory or hub id."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


def build_model(model_cfg: dict, tokenizer, seed: int) -> LlamaForCausalLM:
    """LlamaForCausalLM with the given sizes, vocabulary from the tokenizer, seeded init."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg["hidden_size"],
        num_hidden_layers=model_cfg["num_layers"],
        num_attention_heads=model_cfg["num_heads"],
        num_key_value_heads=model_cfg.get("num_kv_heads", model_cfg["num_heads"]),
        intermediate_size=model_cfg["intermediate_size"],
        max_position_embeddings=model_cfg.get("max_position_embeddings", 512),
        tie_word_embeddings=model_cfg.get("tie_word_embeddings", True),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def load_model(path_or_id: str | Path, dtype: torch.dtype | str = "auto", **kwargs):
    """A pretrained causal LM from a local directory or a hub id (the hub only when reachable; else a
    one-line ModelUnavailable)."""
    from kl_utils.core.hub import from_pretrained
    return from_pretrained(AutoModelForCausalLM, path_or_id, "model", dtype=dtype, **kwargs)


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())

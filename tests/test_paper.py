"""The paper path on CPU at tiny size: a random Qwen2-architecture model and a byte-level BPE
tokenizer saved to a temporary folder stand in for Qwen/Qwen2-1.5B (no download), and the same
code as on GPUs runs end to end: profile -> data -> pretrained model -> CPT -> IT -> EM."""
import json

import pytest
import torch

from kl_utils.core import paths
from kl_utils.core.paths import WIKI_SAMPLE
from kl_utils.data import documents
from kl_utils.protocol import experiment
from kl_utils.tools import paper
from kl_utils.config.profiles import read_profile
from tests.conftest import TINY_DATA

SAMPLE = WIKI_SAMPLE


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    """A folder laid out like a hub checkpoint: Qwen2 config + weights + Qwen2 tokenizer (no BOS,
    like the real one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    texts = [json.loads(line)["evidence_text"] for line in SAMPLE.read_text().splitlines()]
    texts += experiment.vocabulary_texts()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model_json = json.loads(bpe.to_str())["model"]
    tok = Qwen2Tokenizer(vocab=model_json["vocab"], merges=[tuple(m) for m in model_json["merges"]])
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture
def paper_cfg(monkeypatch, tmp_path, tiny_qwen2):
    """The paper profile itself, with only sizes and the model path changed."""
    monkeypatch.setattr(paths, "ROOT", tmp_path)  # results, caches and records go to tmp_path
    cfg = read_profile("paper")
    cfg.update(threads=1, seeds=[0])
    cfg["data"] = {**TINY_DATA, "n_base": 0}
    cfg["model"] = {**cfg["model"], "pretrained": str(tiny_qwen2)}
    for stage in ("cpt", "it"):
        cfg[stage] = {**cfg[stage], "epochs": 1, "batch_size": 8, "grad_accum": 2, "lr": 1e-3}
    cfg["eval"] = {**cfg["eval"], "batch_size": 64, "max_new_tokens": 6}
    return cfg


def test_paper_profile_defaults():
    cfg = read_profile("paper")
    assert cfg["model"]["pretrained"] == "Qwen/Qwen2-1.5B" and cfg["model"]["gradient_checkpointing"]
    assert cfg["base"]["enabled"] is False
    assert cfg["cpt"]["mixed_precision"] == cfg["it"]["mixed_precision"] == "bf16"
    # the cpu design's arms, less its near-convergence controls (96-192 CPT epochs of the miniature; grid
    # `converged` of its pairs), which are not part of the paper-scale design
    converged = {a for cell in read_profile("cpu-draw1")["grids"]["converged"] for a in cell["arms"]}
    assert converged and converged <= set(read_profile("cpu")["arms"])
    assert set(cfg["arms"]) == set(read_profile("cpu")["arms"]) - converged == set(read_profile("paper-wiki")["arms"])
    assert read_profile("paper-wiki")["data"]["documents"]


def test_paper_pipeline_on_biographies(paper_cfg):
    ds, tok, root = experiment.prepare_data("paper", paper_cfg)
    assert root.name.startswith("people-") and tok.bos_token == tok.eos_token == "<|endoftext|>"
    assert set(ds["population"]) == {"new"}
    model, base = experiment.initial_model("paper", paper_cfg, ds, tok, seed=0, log=lambda *a: None)
    assert base is None and model.config.model_type == "qwen2" and model.is_activation_checkpointing
    out = experiment.run_arm("paper", paper_cfg, ds, tok, arm="baseline", seed=0, log=lambda *a: None)
    for key in ("train_em", "valid_em", "test_em"):
        assert 0.0 <= out["metrics"][key] <= 1.0


def test_paper_pipeline_on_wiki_documents_with_format_and_sam(paper_cfg, capsys):
    paper_cfg["data"] = {"seed": 0, "documents": str(SAMPLE), "format": "auto", "valid_frac": 0.2}
    ds, tok, root = experiment.prepare_data("paper", paper_cfg)
    assert root.name.startswith("documents-") and len(ds) == 20 and set(ds["split"]) == {"train", "valid", "test"}
    # the plan: tokens, steps, memory and time of both stages, as one table
    p = paper.plan(paper_cfg, ds, tok, arm="format_sam", n_gpus=2, gpu="H100")
    assert [s["stage"] for s in p["stages"]] == ["CPT", "IT"]
    cpt = p["stages"][0]
    assert cpt["examples"] == 40 and cpt["tokens"] > 40 * 50 and cpt["steps"] == 5 and cpt["hours"] > 0
    assert "mem GiB/GPU" in capsys.readouterr().out
    out = experiment.run_arm("paper", paper_cfg, ds, tok, arm="format_sam", seed=0, log=lambda *a: None)
    assert out["n_cpt_documents"] == 40 and 0.0 <= out["metrics"]["test_em"] <= 1.0
    # a changed document file means a new data cache, never a stale one
    changed = paper_cfg["data"]["documents"] = str(root.parent / "changed.jsonl")
    documents.convert(SAMPLE, changed)
    with open(changed, "a") as f:
        f.write(json.dumps({"id": "extra", "text": "Extra text.", "qa": [{"question": "Extra?", "answer": "Yes"}],
                            "split": "train"}) + "\n")
    ds2, _, root2 = experiment.prepare_data("paper", paper_cfg)
    assert root2 != root and len(ds2) == 21


def test_model_shape_matches_qwen2_1_5b(tmp_path):
    from transformers import Qwen2Config
    Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True).save_pretrained(tmp_path)
    shape = paper.model_shape({"pretrained": str(tmp_path)})
    assert shape["params"] == pytest.approx(1.54e9, rel=0.01)  # Qwen2-1.5B: 1.54 B (biases ignored)
    stage = {"optimizer": "adamw"}
    mem = paper.memory_gib(shape, stage, seq_len=512, micro_batch=16)
    assert 25 < mem < 60  # ~23 GiB of fp32 state + activations and logits
    assert paper.memory_gib(shape, {"optimizer": "sam"}, 512, 16) > mem
    assert paper.memory_gib(shape, stage, 512, 16, n_gpus=8, sharded=True) < mem
    assert paper.gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and paper.gpu_peak_flops("mystery") is None


def test_gpu_check_runs_on_cpu_at_tiny_size(paper_cfg):
    paper_cfg["cpt"] = {**paper_cfg["cpt"], "batch_size": 4, "grad_accum": 1}
    out = paper.gpu_check(paper_cfg, steps=3, seq_len=32, log=lambda *a: None)
    assert out["tokens_per_s"] > 0 and out["steps"] == 3 and out["processes"] == 1
    if not torch.cuda.is_available():
        assert out["mfu"] is None and out["peak_memory_gib"] is None


def test_generation_stops_at_newline_with_a_bpe_tokenizer(tiny_qwen2):
    from kl_utils.training import evaluate
    from kl_utils.data.tokenizer import load_tokenizer
    tok = load_tokenizer(tiny_qwen2)
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1 and newline[0] in evaluate.stop_token_ids(tok)

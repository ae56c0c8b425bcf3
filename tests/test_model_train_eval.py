"""Model factory, local-path loading (the hub path's code, on a tiny model saved by the test),
the training loop and the batched evaluation."""
import copy

import pytest
import torch

from kl_utils.data import dataset as data
from kl_utils.training import evaluate, train
from kl_utils.training.model import build_model, load_model, n_parameters
from kl_utils.data.tokenizer import load_tokenizer
from tests.conftest import TINY_DATA

TINY_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
TRAIN = {"epochs": 30, "batch_size": 8, "lr": 3e-3, "weight_decay": 0.0, "betas": [0.9, 0.98],
         "warmup_frac": 0.05, "min_lr_frac": 0.1, "grad_clip": 1.0, "optimizer": "adamw"}


def test_build_model_is_seeded(tok):
    a, b = build_model(TINY_MODEL, tok, seed=0), build_model(TINY_MODEL, tok, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.config.vocab_size == len(tok) and n_parameters(a) > 0


def test_load_from_local_directory(tmp_path, tok):
    model = build_model(TINY_MODEL, tok, seed=0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, loaded_tok = load_model(tmp_path / "m", dtype=torch.float32), load_tokenizer(tmp_path / "m")
    ids = torch.tensor([loaded_tok("Question: What did Ann study?")["input_ids"]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_scheduler_warmup_and_cosine_floor():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = train.make_scheduler(opt, {"warmup_frac": 0.1, "min_lr_frac": 0.1}, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert min(lrs) >= 0.1 - 1e-9 and lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_unknown_optimizer_and_fp16_are_clear_errors(tok):
    model = build_model(TINY_MODEL, tok, seed=0)
    with pytest.raises(ValueError, match="adamw"):
        train.make_optimizer(model, {"optimizer": "sgd", "lr": 1e-3})
    with pytest.raises(ValueError, match="bf16"):
        train.train(model, [{"input_ids": [1, 2], "labels": [1, 2]}], {**TRAIN, "mixed_precision": "fp16"},
                    seed=0, pad_id=0)


def test_weight_decay_skips_norms_and_biases(tok):
    opt = train.make_optimizer(build_model(TINY_MODEL, tok, seed=0), {"lr": 1e-3, "weight_decay": 0.1})
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in opt.param_groups[0]["params"])
    assert all(p.ndim < 2 for p in opt.param_groups[1]["params"])


def test_collate_masks_padding():
    batch = train.collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_grad_accumulation_matches_full_batch(tok, people, monkeypatch):
    """4 micro-batches of 2 equal one batch of 8 (equal-length documents, so means agree). Through plain SGD
    (lr 1), so the parameters move by the gradient itself: AdamW's first update is lr x sign(g), and the sign
    of a gradient within rounding of 0 depends on the CPU's kernels and the thread count (0.1% of the
    parameters moved by 2 lr under 1 vs 2 threads), which says nothing about accumulation."""
    monkeypatch.setattr(train, "make_optimizer", lambda model, cfg: torch.optim.SGD(model.parameters(), lr=1.0))
    texts = [row["bios"][0] for row in people][:8]
    examples = data.encode_documents(texts, tok)
    width = min(len(e["input_ids"]) for e in examples)
    examples = [{"input_ids": e["input_ids"][:width], "labels": e["labels"][:width]} for e in examples]
    cfg = {**TRAIN, "max_steps": 1, "batch_size": 8, "warmup_frac": 0.0, "grad_clip": None}
    a, b = build_model(TINY_MODEL, tok, seed=0), build_model(TINY_MODEL, tok, seed=0)
    train.train(a, examples, cfg, seed=0, pad_id=tok.pad_token_id)
    train.train(b, examples, {**cfg, "grad_accum": 4}, seed=0, pad_id=tok.pad_token_id)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
    init = build_model(TINY_MODEL, tok, seed=0)
    assert sum((p - q).abs().sum().item() for p, q in zip(a.parameters(), init.parameters())) > 1e-2  # it did train


def test_training_memorizes_and_evaluation_is_exact(tok, people):
    """A tiny model trained on QA pairs answers them: loss falls, EM on the trained pairs is high,
    and batched left-padded greedy decoding equals decoding one example at a time."""
    qa = data.qa_examples(people, "train")[:12]
    model = build_model({**TINY_MODEL, "hidden_size": 64, "intermediate_size": 128}, tok, seed=0)
    # lr 3e-3, not 1e-2: at 1e-2 the loss spiked to ~1 late in training, and the EM it ended at depended on
    # the CPU's rounding (1.0 with AVX-512, 0.917 with the AVX2 path forced, 0.833 on an AVX2-only EPYC). At
    # 3e-3 the loss falls smoothly to ~0.006 nats a token on both paths and EM is 1.0 on both: the bar of
    # 11 of 12 has a question's room.
    history = train.train(model, data.encode_qa(qa, tok), {**TRAIN, "epochs": 100, "batch_size": 4, "lr": 3e-3},
                          seed=0, pad_id=tok.pad_token_id, callback=lambda epoch, m: {"epoch_seen": epoch})
    assert history["loss"][-1] < 0.01 * history["loss"][0], (history["loss"][0], history["loss"][-1])
    assert history["epochs"][-1]["epoch_seen"] == 100
    res = evaluate.evaluate_qa(model, tok, qa, batch_size=5)
    assert res["em"] >= 11 / 12, res
    one_by_one = [evaluate.generate_answers(model, tok, [ex], batch_size=1)[0] for ex in qa]
    assert one_by_one == res["predictions"]
    # rows finish at different steps and leave the batch: the answers are still those of `generate`
    lengths = {len(tok(p, add_special_tokens=False)["input_ids"]) for p in res["predictions"]}
    assert len(lengths) > 1, lengths
    hf = evaluate.generate_answers(model, tok, qa, batch_size=5, decoder="hf")
    assert hf == res["predictions"]
    with pytest.raises(ValueError, match="decoder"):
        evaluate.generate_answers(model, tok, qa, decoder="beam")


def test_max_steps_budget(tok, people):
    examples = data.encode_documents([row["bios"][0] for row in people], tok)
    history = train.train(build_model(TINY_MODEL, tok, seed=0), examples, {**TRAIN, "max_steps": 7},
                          seed=0, pad_id=tok.pad_token_id)
    assert history["step"] == list(range(1, 8))
    assert train.total_steps(40, {"epochs": 3, "batch_size": 8, "grad_accum": 2}) == 15
    assert train.total_steps(20, {"epochs": 1, "batch_size": 16, "grad_accum": 2}) == 2  # micro 8: 8+8 | 4


@pytest.mark.parametrize("pred,gold,em", [
    ("The Ohio State University.", "Ohio State University", True),
    ("McDonald ' s", "McDonald's", False),
    ("  march 3 ,  1990", "March 3, 1990", True),
    ("Boston", "Boston, MA", False),
])
def test_exact_match_normalization(pred, gold, em):
    assert evaluate.exact_match(pred, gold) is em


def test_gold_round_trip_makes_perfect_predictions_match(tok):
    """Every answer value of the bioS pools, when generated token by token, counts as a hit."""
    from kl_utils.data import bios
    fields = bios.load_fields()
    values = list(fields["city"]) + list(fields["university"]) + [c for pair in fields["company"] for c in pair]
    for v in values:
        predicted = tok.decode(tok(" " + v, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
        assert evaluate.exact_match(predicted, evaluate.as_decoded(tok, v)), v


def test_token_f1():
    assert evaluate.token_f1("Ann Arbor", "Ann Arbor, MI") == pytest.approx(0.8)
    assert evaluate.token_f1("x", "y") == 0.0


def test_a_bf16_accelerator_state_left_behind_does_not_leak_into_fp32_training(tok):
    """A Hugging Face `Trainer` with bf16=True leaves bf16 in accelerate's shared state; a model our loop
    prepares afterwards must still compute in fp32 (it ran under bf16 autocast before this was fixed)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=False)
    assert Accelerator(mixed_precision="bf16").mixed_precision == "bf16"  # what Trainer(bf16=True) leaves
    acc = train.get_accelerator()
    assert acc.mixed_precision == "no" and Accelerator().mixed_precision == "no"
    model = build_model(TINY_MODEL, tok, seed=0)
    ids = torch.tensor([tok("Question: What did Ann study?")["input_ids"]])
    plain = model(ids).logits
    assert torch.equal(acc.prepare(copy.deepcopy(model))(ids).logits, plain)

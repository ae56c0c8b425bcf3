"""C2 (and the training runs of the C1 probe): held-out QA as a function of the number of distinct
training paraphrases per person at a fixed budget.

Every run shows each person `passes` documents during CPT (the token / step budget, the same for
every n): its first n paraphrases, each `passes / n` times (one epoch = one copy of each).
n = 1 is the single biography repeated `passes` times, the repetition control. Small on purpose:
a subset of the new people (train half for IT, test half held out), the cached base model.
After every epoch the C1 probe runs on the test people; at the `qa_checkpoints` (in passes) of
the first seed, a copy of the model is instruction-tuned and evaluated, so that held-out QA can
be compared with the probe over checkpoints. Records: kind "diversity".
"""
from __future__ import annotations

import copy
import time

from kl_utils.core import records
from kl_utils.data import dataset as data
from kl_utils.training import evaluate
from kl_utils.protocol import experiment
from kl_utils.analysis import probe, stats
from kl_utils.config.arms import canonical_spec
from kl_utils.core.spec import config_hash, merge
from kl_utils.analysis.summary import verdict
from kl_utils.training.train import train


def paraphrase_counts(cfg: dict) -> list[int]:
    """The analysis' paraphrase counts, capped by what the data has (new_paraphrases)."""
    return [n for n in cfg["analysis"]["paraphrases"] if n <= cfg["data"]["new_paraphrases"]]


def select_people(ds, n_train: int, n_test: int):
    """The first n_train train and n_test test people of the new population."""
    train_idx = [i for i, r in enumerate(ds) if r["split"] == "train"][:n_train]
    test_idx = [i for i, r in enumerate(ds) if r["split"] == "test"][:n_test]
    return ds.select(train_idx + test_idx)


def one_copy_documents(people, n: int) -> list[str]:
    return [doc for row in people for doc in row["bios"][:n]]


def _qa_eval(model, tok, people, cfg, seed, split="test") -> dict:
    """IT on the train people's QA (as in the main protocol), then greedy QA on `split`."""
    train(model, data.encode_qa(data.qa_examples(people, "train"), tok), cfg["it"], seed=seed,
          pad_id=tok.pad_token_id, desc="IT")
    examples = data.qa_examples(people, split)
    res = evaluate.evaluate_qa(model, tok, examples, batch_size=cfg["eval"]["batch_size"],
                               max_new_tokens=cfg["eval"]["max_new_tokens"])
    hits = [int(evaluate.exact_match(p, evaluate.as_decoded(tok, ex["answer"])))
            for p, ex in zip(res["predictions"], examples)]
    return {"em": res["em"], "hits": hits}


def _probe_summary(model, tok, people, cfg) -> tuple[dict, list[dict]]:
    """The C1 probe on the test people only (their QA is never trained on; half the cost)."""
    test = people.filter(lambda r: r["split"] == "test")
    res = probe.probe(model, tok, test, cfg["data"]["n_train_templates"], cfg["analysis"]["probe_batch_size"],
                      cfg["data"].get("templates", "default"))
    s = {f"test_{k}": v for k, v in probe.summarize(res["facts"], "test").items()}
    return {**s, **res["tokens"]}, res["facts"]


def run(profile: str, cfg: dict, ds, tok, *, paraphrases: int, seed: int, log=print) -> dict:
    """One C2 condition and seed. Writes and returns the run record."""
    an = cfg["analysis"]
    n, passes = paraphrases, an["passes"]
    if passes % n:
        raise ValueError(f"passes ({passes}) must be a multiple of the paraphrase count ({n})")
    spec = canonical_spec({"data": cfg["data"], "model": cfg["model"], "base": cfg["base"], "cpt": cfg["cpt"],
                           "it": cfg["it"], "eval": cfg["eval"], "analysis": an, "paraphrases": n})
    run_id = f"diversity-n{n}-s{seed}-{config_hash(spec)}"
    done = records.existing_record(profile, run_id, kind="diversity", config=spec)
    if done is not None:  # committed or already run: redraw from it (a fresh results tree recomputes)
        return done
    t0 = time.time()
    people = select_people(ds, an["n_train_people"], an["n_test_people"])
    model, _ = experiment.initial_model(profile, cfg, ds, tok, seed, log=log)
    qa_at = set(an["qa_checkpoints"]) if seed == an["seeds"][0] else set()
    history = [{"passes": 0, **_probe_summary(model, tok, people, cfg)[0]}]

    def after_epoch(epoch, m):
        out = {"passes": epoch * n, **_probe_summary(m, tok, people, cfg)[0]}
        if epoch * n in qa_at and epoch * n < passes:
            out["test_em"] = _qa_eval(copy.deepcopy(m), tok, people, cfg, seed)["em"]
        return out
    docs = one_copy_documents(people, n)
    hist = train(model, data.encode_documents(docs, tok), merge(cfg["cpt"], {"epochs": passes // n}), seed=seed,
                 pad_id=tok.pad_token_id, desc=f"diversity n={n} s{seed}", callback=after_epoch)
    history += [{k: v for k, v in h.items() if k not in ("epoch", "step")} for h in hist["epochs"]]
    final, facts = _probe_summary(model, tok, people, cfg)
    flags = probe.fact_flags(facts, "test")
    qa = _qa_eval(model, tok, people, cfg, seed)
    history[-1]["test_em"] = qa["em"]
    keys = [(r["person_id"], q["attribute"]) for r in people if r["split"] == "test" for q in r["qa"]]
    final_facts = {"heldout": [flags[k]["heldout"] for k in keys], "train": [flags[k]["train"] for k in keys],
                   "qa_tf": [flags[k]["qa"] for k in keys], "qa_em": qa["hits"]}
    metrics = {"test_em": qa["em"], **final}
    extra = {"paraphrases": n, "passes": passes, "optimizer_steps": len(hist["step"]),
             "n_cpt_documents": len(docs) * (passes // n), "history": history, "final_facts": final_facts}
    records.write_run_record(profile, run_id, kind="diversity", config=spec, seed=seed, metrics=metrics,
                             wall_time_s=time.time() - t0, extra=extra)
    log(f"diversity n={n} seed {seed}: test EM {qa['em']:.3f}, held-out-paraphrase fact acc "
        f"{final['test_heldout_acc']:.3f} ({time.time() - t0:.0f} s)")
    return {"run_id": run_id, "kind": "diversity", "seed": seed, "metrics": metrics, **extra}


def claim_rows(recs: list[dict]) -> list[dict]:
    """C2: held-out QA EM with the most paraphrases minus with one (the single biography repeated),
    paired over seeds, at the same number of documents per person."""
    recs = [r for r in recs if r.get("kind") == "diversity"]
    if not recs:
        return []
    by_n = {}
    for r in recs:
        if r["seed"] in by_n.setdefault(r["paraphrases"], {}):
            raise ValueError(f"two diversity records for n={r['paraphrases']} seed {r['seed']} (stale settings?): "
                             "pass diversity.load_records(profile, cfg)")
        by_n[r["paraphrases"]][r["seed"]] = r["metrics"]["test_em"]
    lo_n, hi_n = min(by_n), max(by_n)
    if lo_n == hi_n:
        return []
    d = stats.paired_diff_ci(by_n[lo_n], by_n[hi_n])
    passes = recs[0]["passes"]
    return [{"claim": "C2", "comparison": f"{hi_n} paraphrases vs {lo_n} (single biography repeated)",
             "budget": "steps", "metric": "test_em",
             "mean_a": stats.mean_ci(by_n[lo_n].values())["mean"], "mean_b": stats.mean_ci(by_n[hi_n].values())["mean"],
             "diff": d["mean"], "ci_low": d["low"], "ci_high": d["high"], "n_seeds": d["n"], "verdict": verdict(d)}]


def load_records(profile: str, cfg: dict) -> list[dict]:
    """The diversity records of this profile's current data / model / analysis settings."""
    keep = ("data", "model", "base", "cpt", "it", "analysis")
    return [r for r in records.load_run_records(profile, kind="diversity")
            if all(r["config"].get(k) == cfg.get(k) for k in keep)]


def history_frame(recs: list[dict]):
    """One row per (run, probe point): paraphrases, seed, passes and every probe / QA number."""
    import pandas as pd
    return pd.DataFrame([{"paraphrases": r["paraphrases"], "seed": r["seed"], **h} for r in recs for h in r["history"]])

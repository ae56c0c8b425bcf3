"""The C1 probe: fact tokens as labels of an implicit supervised task.

For every person and attribute, the model's loss / probability / greedy accuracy on the tokens of
the fact value given
  (a) `train`:   the training biography (the person's first, single CPT document),
  (b) `heldout`: the same fact in a biography written with held-out templates (never trained on:
                 the "test input" of the implicit supervised task),
  (c) `qa`:      the QA prompt (teacher-forced answer tokens).
"Greedy accuracy" = every fact token is the argmax given the true prefix, i.e. greedy decoding
would write the value. Also the supervised view of training: mean loss on fact tokens vs on the
other tokens, in training documents vs held-out documents (the generalization gap).
All forward passes are batched; nothing here trains.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from kl_utils import bios, data, records, stats
from kl_utils.summary import verdict

CONTEXTS = ("train", "heldout", "qa")


def heldout_spans(row: dict, n_train_templates: int, templates: str = "default") -> list[list[int]]:
    """Character spans of the facts in `row["heldout_bio"]` (per attribute in bios.ATTRIBUTES order).

    The held-out biography is rendered in ATTRIBUTES order, every sentence starting with the full
    name, so each sentence is exactly one held-out template with its value: we match the template
    head, which makes the span exact (a plain `find` could hit the value inside a name)."""
    text, cursor, out = row["heldout_bio"], 0, []
    _, pool = bios.split_templates(n_train_templates, templates)
    pos = "her" if row["gender"] == "female" else "his"
    for attr in bios.ATTRIBUTES:
        value = row[attr]
        for template in pool[attr]:
            head, tail = template.split("{value}")
            head, tail = head.format(subj=row["name"], pos=pos), tail.format(subj=row["name"], pos=pos)
            start = cursor + len(head)
            if text.startswith(head, cursor) and text.startswith(value + tail, start):
                out.append([start, start + len(value)])
                cursor = start + len(value) + len(tail) + 1  # + the space between sentences
                break
        else:
            raise ValueError(f"cannot locate {attr!r} in held-out biography of {row['name']!r}")
    return out


def encode_with_spans(tok, text: str, spans) -> tuple[list[int], list[list[int]]]:
    """BOS + tokens + EOS, and for each char span the indices (into that list) of its tokens."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [tok.bos_token_id] + enc["input_ids"] + [tok.eos_token_id]
    # A byte-level BPE token carries the space before a word (" Paris" spans the space too): a token
    # is a fact token when its text without leading whitespace lies inside the span.
    starts = [a + len(text[a:b]) - len(text[a:b].lstrip()) for a, b in enc["offset_mapping"]]
    positions = [[i + 1 for i, ((_, b), a) in enumerate(zip(enc["offset_mapping"], starts)) if a >= s and b <= e and b > a]
                 for s, e in spans]
    return ids, positions


@torch.no_grad()
def token_scores(model, seqs: list[list[int]], pad_id: int, batch_size: int = 128):
    """For each sequence: (nll, correct) per position 1..len-1 (of predicting token t from < t)."""
    model.eval()
    device = next(model.parameters()).device
    out = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # little padding per batch
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, :len(seqs[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        target = ids[:, 1:].to(device)
        nll = -torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]
        correct = logits.argmax(-1) == target
        for r, i in enumerate(idx):
            n = len(seqs[i]) - 1
            out[i] = (nll[r, :n].cpu(), correct[r, :n].cpu())
    return out


def probe(model, tok, people, n_train_templates: int, batch_size: int = 128, templates: str = "default") -> dict:
    """Per-fact scores in the three contexts, and token-level losses (fact vs other tokens) in
    training and held-out documents. Returns {"facts": [row...], "tokens": {...}}; a fact row has
    person_id, split, attribute, context, loss (mean NLL per fact token), logprob (sum), acc (0/1)."""
    seqs, meta = [], []  # meta: (kind, row, positions per attribute)
    for row in people:
        for kind, text, spans in (("train", row["bios"][0], row["fact_spans"][0]),
                                  ("heldout", row["heldout_bio"], heldout_spans(row, n_train_templates, templates))):
            ids, pos = encode_with_spans(tok, text, spans)
            seqs.append(ids)
            meta.append((kind, row, pos))
        for qa, enc in zip(row["qa"], data.encode_qa(row["qa"], tok)):
            answer = [i for i, lab in enumerate(enc["labels"]) if lab != -100][:-1]  # answer tokens, not EOS
            seqs.append(enc["input_ids"])
            meta.append(("qa", row, {qa["attribute"]: answer}))
    scores = token_scores(model, seqs, tok.pad_token_id, batch_size)
    facts, sums = [], defaultdict(lambda: [0.0, 0])
    for (kind, row, pos), (nll, correct) in zip(meta, scores):
        by_attr = pos if isinstance(pos, dict) else dict(zip(bios.ATTRIBUTES, pos))
        fact_mask = torch.zeros(len(nll), dtype=torch.bool)
        for attr, p in by_attr.items():
            if not p:
                raise ValueError(f"no tokens for {attr!r} of {row['name']!r} ({kind})")
            t = torch.tensor(p) - 1  # position i is predicted at score index i-1
            fact_mask[t] = True
            facts.append({"person_id": row["person_id"], "split": row["split"], "attribute": attr, "context": kind,
                          "loss": nll[t].mean().item(), "logprob": -nll[t].sum().item(),
                          "acc": int(correct[t].all())})
        if kind != "qa":  # the supervised view: fact tokens (labels) vs every other token
            for part, m in (("fact", fact_mask), ("other", ~fact_mask)):
                sums[(kind, part)][0] += nll[m].sum().item()
                sums[(kind, part)][1] += int(m.sum())
    tokens = {f"{kind}_doc_{part}_loss": s / max(n, 1) for (kind, part), (s, n) in sums.items()}
    return {"facts": facts, "tokens": tokens}


def summarize(facts: list[dict], split=None) -> dict:
    """Mean acc / loss / probability per context (optionally for one split of people)."""
    out = {}
    for ctx in CONTEXTS:
        rows = [f for f in facts if f["context"] == ctx and (split is None or f["split"] == split)]
        if rows:
            out[f"{ctx}_acc"] = float(np.mean([f["acc"] for f in rows]))
            out[f"{ctx}_loss"] = float(np.mean([f["loss"] for f in rows]))
            out[f"{ctx}_prob"] = float(np.mean([math.exp(f["logprob"]) for f in rows]))
    return out


def fact_flags(facts: list[dict], split: str = "test") -> dict[tuple, dict]:
    """{(person_id, attribute): {train: 0/1, heldout: 0/1, qa: 0/1}} for the people of a split."""
    out = defaultdict(dict)
    for f in facts:
        if f["split"] == split:
            out[(f["person_id"], f["attribute"])][f["context"]] = f["acc"]
    return dict(out)


def fact_table(heldout: list[int], train: list[int], answered: list[int]) -> list[dict]:
    """The per-fact table: does the model answer the question (greedy QA exact match) when it
    predicts the fact in an unseen paraphrase, only in the training context, or in neither?
    The first two groups' complements form the 2x2 (held-out predicted yes/no x answered yes/no)."""
    groups = {"held-out paraphrase": lambda h, t: h == 1,
              "training context only": lambda h, t: h == 0 and t == 1,
              "neither": lambda h, t: h == 0 and t == 0}
    rows = []
    for name, keep in groups.items():
        hits = [a for h, t, a in zip(heldout, train, answered) if keep(h, t)]
        rows.append({"fact predicted in": name, "facts": len(hits), "answered": sum(hits),
                     "not answered": len(hits) - sum(hits),
                     "answer rate": sum(hits) / len(hits) if hits else float("nan")})
    return rows


def two_by_two(heldout: list[int], answered: list[int]) -> dict[tuple, int]:
    """Counts of (held-out paraphrase predicted, question answered), 4 cells summing to the facts."""
    return {(h, a): sum(1 for x, y in zip(heldout, answered) if (x, y) == (h, a)) for h in (1, 0) for a in (1, 0)}


def checkpoint_points(recs: list[dict]) -> list[dict]:
    """One point per (run, checkpoint with QA): held-out-paraphrase fact accuracy of the test
    people vs their held-out QA exact match. Reads `history` of diversity records."""
    pts = []
    for r in recs:
        for h in r["history"]:
            if "test_em" in h:
                pts.append({"run_id": r["run_id"], "seed": r["seed"], "paraphrases": r["paraphrases"],
                            "passes": h["passes"], "heldout_acc": h["test_heldout_acc"],
                            "heldout_loss": h["test_heldout_loss"], "test_em": h["test_em"]})
    return pts


def probe_run_id(arm_record: dict, n_people: int) -> str:
    from kl_utils.config import config_hash
    return f"probe-{arm_record['run_id']}-{config_hash({'n_people': n_people})}"


def probe_checkpoints(profile: str, cfg: dict, ds, tok, checkpoints, n_people: int, log=print) -> list[dict]:
    """C1 across the main experiments' arms: the probe on each run's model after CPT (the first
    n_people test people) next to the run's held-out QA EM. One record each (kind "probe_arm")."""
    import time
    from transformers import AutoModelForCausalLM
    from kl_utils import records
    from kl_utils.config import config_hash
    test = ds.filter(lambda r: r["split"] == "test")
    test = test.select(range(min(n_people, len(test))))
    out = []
    for rec, path in checkpoints:
        run_id = probe_run_id(rec, n_people)
        done = records.existing_record(profile, run_id, kind="probe_arm", config={"n_people": n_people})
        if done is not None:  # probed before (or committed)
            out.append(done)
            continue
        t0 = time.time()
        model = AutoModelForCausalLM.from_pretrained(str(path))
        res = probe(model, tok, test, cfg["data"]["n_train_templates"], cfg["analysis"]["probe_batch_size"],
                    cfg["data"].get("templates", "default"))
        metrics = {**summarize(res["facts"]), **res["tokens"], "test_em": rec["metrics"]["test_em"]}
        extra = {"arm": rec["arm"], "source_run_id": rec["run_id"]}
        records.write_run_record(profile, run_id, kind="probe_arm", config={"n_people": n_people}, seed=rec["seed"],
                                 metrics=metrics, wall_time_s=time.time() - t0, extra=extra)
        out.append({"run_id": run_id, "kind": "probe_arm", "seed": rec["seed"], "metrics": metrics, **extra})
    log(f"probe records of {len(out)} runs on {len(test)} test people")
    return out


def _row(claim, comparison, budget, metric, a, b, d, lo, hi, n_seeds, test="descriptive"):
    return {"claim": claim, "comparison": comparison, "budget": budget, "metric": metric, "mean_a": a, "mean_b": b,
            "diff": d, "ci_low": lo, "ci_high": hi, "n_seeds": n_seeds,
            "verdict": verdict({"n": n_seeds, "low": lo, "high": hi}), "test": test}


def stratified_fact_row(recs: list[dict], runs: str = "run") -> dict | None:
    """The primary C1 row: per fact, is a question answered more often when the model predicts the
    fact in an unseen (held-out-template) paraphrase? One 2x2 table (held-out predicted x answered)
    per run, so that differences between runs (arms, seeds, checkpoints of training) cannot create the
    association: Cochran-Mantel-Haenszel test over the runs, effect = Mantel-Haenszel risk difference
    of the answer rate (predicted minus not predicted) with its Sato-Greenland-Robins 95% CI."""
    from kl_utils import meta
    tables = []
    for r in recs:
        cells = two_by_two(r["final_facts"]["heldout"], r["final_facts"]["qa_em"])
        tables.append([cells[(1, 1)], cells[(1, 0)], cells[(0, 1)], cells[(0, 0)]])
    if not tables:
        return None
    cmh, rd = meta.cmh_test(tables), meta.mh_risk_difference(tables)
    t = np.asarray(tables, dtype=float).sum(0)
    row = _row("C1", f"QA answer rate: fact predicted vs not predicted in a held-out paraphrase, stratified by {runs}",
               "per fact", f"answer rate, Mantel-Haenszel ({cmh['n']} facts in {cmh['strata']} runs; CMH chi2 {cmh['chi2']:.1f})",
               float(t[2] / (t[2] + t[3])), float(t[0] / (t[0] + t[1])), rd["rd"], rd["low"], rd["high"],
               len({r["seed"] for r in recs}), test="CMH (stratified by run)")
    return {**row, "p_value": cmh["p"]}


def claim_rows(recs: list[dict], n_boot: int = 2000) -> list[dict]:
    """C1 rows for results/<profile>/claims.csv from diversity and probe_arm records: the correlation
    of held-out-paraphrase fact accuracy with held-out QA EM over the main arms' runs (probe_arm) and
        over checkpoints and paraphrase counts (diversity) (diff = r, CI by bootstrap over points), and per fact the answer-rate difference between facts predicted in
    the unseen paraphrase and facts predicted only in the training context (bootstrap over facts):
    all descriptive (runs and checkpoints differ in more than the probe). The tested row is
    stratified_fact_row, the per-fact association within each run."""
    rows = []
    probed = [r for r in records.distinct_runs(recs) if r.get("kind") == "arm" and r.get("final_facts")]  # probe_after_cpt (cpu-llm)
    if probed:
        rows.append(stratified_fact_row(probed, runs="main-experiment run (probe after CPT)"))
    arms = [r for r in recs if r.get("kind") == "probe_arm"]
    if len(arms) >= 3:
        x, y = [r["metrics"]["heldout_acc"] for r in arms], [r["metrics"]["test_em"] for r in arms]
        for method in ("pearson", "spearman"):
            c = stats.bootstrap_corr_ci(x, y, method=method, n_boot=n_boot)
            rows.append(_row("C1", "held-out-paraphrase fact acc after CPT vs held-out QA EM (main arms x seeds)",
                             "arms", f"{method} r ({len(arms)} runs)", float(np.mean(x)), float(np.mean(y)),
                             c["r"], c["low"], c["high"], len({r["seed"] for r in arms})))
    recs = [r for r in recs if r.get("kind") == "diversity"]
    if not recs:
        return rows
    n_seeds = len({r["seed"] for r in recs})
    rows.append(stratified_fact_row(recs))
    pts = checkpoint_points(recs)
    x, y = [p["heldout_acc"] for p in pts], [p["test_em"] for p in pts]
    for method in ("pearson", "spearman"):
        c = stats.bootstrap_corr_ci(x, y, method=method, n_boot=n_boot)
        rows.append(_row("C1", "held-out-paraphrase fact acc vs held-out QA EM (checkpoints x arms)",
                         "checkpoints", f"{method} r ({len(pts)} points)", float(np.mean(x)), float(np.mean(y)),
                         c["r"], c["low"], c["high"], n_seeds))
    h, t, a = (sum((r["final_facts"][k] for r in recs), []) for k in ("heldout", "train", "qa_em"))
    only = [ai for hi, ti, ai in zip(h, t, a) if hi == 0 and ti == 1]
    pred = [ai for hi, ai in zip(h, a) if hi == 1]
    if only and pred:
        rng = np.random.default_rng(0)
        boots = [rng.choice(pred, len(pred)).mean() - rng.choice(only, len(only)).mean() for _ in range(n_boot)]
        lo, hi = np.percentile(boots, [2.5, 97.5])
        rows.append(_row("C1", "QA answer rate: fact predicted in held-out paraphrase vs only in training context",
                         "steps", f"answer rate (EM, {len(h)} facts)", float(np.mean(only)),
                         float(np.mean(pred)), float(np.mean(pred) - np.mean(only)), float(lo), float(hi), n_seeds))
    return rows

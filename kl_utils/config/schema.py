"""The profile schema: every key a profile (profiles/*.yaml) may set, what its value must be, and
its default -- the one place the defaults are written (the code reads them from here).

`validate(cfg, source)` checks a profile's config before any work starts and raises ProfileError
with one line, `FILE: key PATH: what is wrong`: unknown keys (with a suggestion), values of the
wrong type or range, missing required keys (the names a profile refers to -- arms of its grids,
other profiles -- are checked by kl_utils.config.profiles.check_references). It only reads the
config: no default is written into it, so the run ids hashed from it (kl_utils.config.arms) stay
what they were. Imports neither torch nor datasets: a profile is checked in milliseconds.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, NamedTuple

from kl_utils.augment.formatting import FAMILIES
from kl_utils.core.command import UserError
from kl_utils.core.precision import PRECISIONS  # no | bf16 | auto (fp16 is refused: SAM's two passes and a GradScaler do not mix)
from kl_utils.data.documents import FORMATS

OPTIMIZERS = ("adamw", "sam")
LOGITS = ("all", "labelled")
BATCHING = ("pad", "bucket", "pack")  # kl_utils.training.batching
DTYPES = ("float32", "bfloat16", "float16")


class ProfileError(UserError, ValueError):
    """A profile that cannot be used, in one line naming its file and key. exit_code: 2 for a usage
    error (a profile name that does not exist), 1 for a profile file that is wrong."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class Check(NamedTuple):
    """A value's test, what it expects (for the message), and its default when absent (None: the
    key is optional and absent means off, or it is required: see _complete)."""
    ok: Callable[[Any], bool]
    what: str
    default: Any = None
    names: tuple = ()  # a choice's valid names (for a suggestion)


class Each(NamedTuple):
    """A mapping of names the profile chooses (arms, grids) to values of one node."""
    node: Any


class Items(NamedTuple):
    """A list whose items are of one node."""
    node: Any
    nonempty: bool = False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(ge: int | None = None, le: int | None = None, default=None) -> Check:
    what = "an integer" + (f" >= {ge}" if ge is not None else "") + (f" <= {le}" if le is not None else "")
    return Check(lambda v: _is_int(v) and (ge is None or v >= ge) and (le is None or v <= le), what, default)


def number(gt=None, ge=None, lt=None, le=None, default=None) -> Check:
    bounds = [(gt, ">", lambda v, b: v > b), (ge, ">=", lambda v, b: v >= b), (lt, "<", lambda v, b: v < b),
              (le, "<=", lambda v, b: v <= b)]
    what = "a number" + " and".join(f" {op} {b}" for b, op, _ in bounds if b is not None)
    return Check(lambda v: _is_num(v) and all(b is None or f(v, b) for b, _, f in bounds), what, default)


def choice(*names: str, default=None) -> Check:
    return Check(lambda v: isinstance(v, str) and v in names, "one of " + ", ".join(names), default, names)


def boolean(default=None) -> Check:
    return Check(lambda v: isinstance(v, bool), "true or false", default)


TEXT = Check(lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")
BETAS = Check(lambda v: isinstance(v, list) and len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v),
              "a list of two numbers in [0, 1)", (0.9, 0.999))

# The training keys of every stage (kl_utils.training.train); base, cpt and it add their own below.
TRAIN = {
    "epochs": integer(ge=1), "max_steps": integer(ge=1), "batch_size": integer(ge=1),
    "grad_accum": integer(ge=1, default=1), "lr": number(gt=0), "weight_decay": number(ge=0, default=0.0),
    "betas": BETAS, "warmup_frac": number(ge=0, le=1, default=0.0), "min_lr_frac": number(ge=0, le=1, default=0.0),
    "grad_clip": number(ge=0), "optimizer": choice(*OPTIMIZERS, default="adamw"), "rho": number(ge=0, default=0.05),
    "adaptive": boolean(False), "sam_every_k": integer(ge=1, default=1),
    "mixed_precision": choice(*PRECISIONS, default="no"),
    # how the same arithmetic is done (arms.IMPLEMENTATION_DEFAULTS: these defaults hash as absent)
    "batching": choice(*BATCHING, default="pad"), "logits": choice(*LOGITS, default="all"), "fused": boolean(False),
}
AUGMENTATION = {"k": integer(ge=0, default=0), "families": Items(choice(*FAMILIES), nonempty=True),
                "method": choice("format", "eda", default="format")}
CPT = {**TRAIN, "augmentation": AUGMENTATION, "paraphrases": integer(ge=1, default=1)}
IT = {**TRAIN, "augmentation": AUGMENTATION}
BASE = {**TRAIN, "enabled": boolean(True), "qa_frac": number(ge=0, le=1), "seed": integer(ge=0)}
ARM = {"cpt": CPT, "it": IT, "budget": choice("epochs", "steps", default="epochs"),
       "order": choice("standard", "pit", default="standard")}
STAGE_DEFAULTS = {k: c.default for k, c in {**CPT, **BASE}.items() if isinstance(c, Check)}

SCHEMA = {
    "threads": integer(ge=1), "workers": integer(ge=1, default=1), "checkpoint_every": integer(ge=1, default=100),
    "keep_models": boolean(True), "seeds": Items(integer(ge=0), nonempty=True),
    "data": {
        "seed": integer(ge=0), "n_base": integer(ge=0, default=0), "n_new": integer(ge=1),
        "splits": {s: number(ge=0, le=1) for s in ("train", "valid", "test")},
        "n_train_templates": integer(ge=1), "base_paraphrases": integer(ge=1), "new_paraphrases": integer(ge=1),
        "permute_paraphrases": boolean(True), "name_every_sentence": boolean(False),
        "templates": choice("default", "rich", default="default"), "draw_per_seed": boolean(False),
        "documents": TEXT, "format": choice(*FORMATS, default="auto"), "valid_frac": number(ge=0, lt=1, default=0.1)},
    "model": {
        "hidden_size": integer(ge=1), "num_layers": integer(ge=1), "num_heads": integer(ge=1),
        "intermediate_size": integer(ge=1), "num_kv_heads": integer(ge=1), "vocab_size": integer(ge=1),
        "max_position_embeddings": integer(ge=1, default=512), "tie_word_embeddings": boolean(True),
        "pretrained": TEXT, "dtype": choice(*DTYPES, default="float32"), "gradient_checkpointing": boolean(False)},
    "base": BASE, "cpt": CPT, "it": IT,
    "eval": {"batch_size": integer(ge=1), "max_new_tokens": integer(ge=1), "per_epoch": boolean(False),
             "decoder": choice("kv", "hf", default="kv")},
    "augment_audit": {"n_synthetic": integer(ge=1), "k": integer(ge=1), "seed": integer(ge=0)},
    "arms": Each(ARM),
    "grids": Each(Items({"arms": Items(TEXT, nonempty=True), "seeds": Items(integer(ge=0), nonempty=True)},
                        nonempty=True)),
    "ablations": {"rho": Items(number(ge=0)), "k": Items(integer(ge=1)), "families": Items(choice(*FAMILIES)),
                  "rho_k": boolean(False),
                  "lr": {"arms": Items(TEXT), "factors": Items(number(gt=0))}},
    "controls": {"profile": TEXT, "run": boolean(True), "base_models": Items(TEXT)},
    "pairs": Items(TEXT),
    "beside": Items(TEXT),  # REPORT.md: the claims of these profiles next to this one's (kl_utils.reporting.report)
    "notebooks": Items(integer(ge=1, le=99), nonempty=True),
    "analysis": {
        "n_train_people": integer(ge=0), "n_test_people": integer(ge=0), "paraphrases": Items(integer(ge=1)),
        "passes": integer(ge=1), "qa_checkpoints": Items(integer(ge=1)), "seeds": Items(integer(ge=0)),
        "probe_batch_size": integer(ge=1), "probe_people": integer(ge=1), "probe_after_cpt": boolean(False),
        "sharpness": {"n_docs": integer(ge=1), "batch_size": integer(ge=1), "rho": number(ge=0),
                      "ascent_steps": integer(ge=1), "power_iters": integer(ge=1)}},
}
# What a profile file holds around its config (kl_utils.config.profiles).
DOCUMENT = {"profile": TEXT, "extends": TEXT, "config": Check(lambda v: isinstance(v, dict), "a mapping")}

# Names people use for a key elsewhere (HF Trainer, papers), so a suggestion can reach a short name
# difflib would not: `learning_rate` -> `lr`.
ALIASES = {"learning_rate": "lr", "num_epochs": "epochs", "n_epochs": "epochs", "num_train_epochs": "epochs",
           "steps": "max_steps", "gradient_accumulation_steps": "grad_accum", "max_grad_norm": "grad_clip",
           "warmup": "warmup_frac", "warmup_ratio": "warmup_frac", "precision": "mixed_precision",
           "optim": "optimizer", "sam_rho": "rho", "train_batch_size": "batch_size", "extend": "extends"}


def default(path: str):
    """The default of a key, by its dotted path (`checkpoint_every`, `cpt.rho`, `data.valid_frac`)."""
    node = SCHEMA
    for part in path.split("."):
        node = node[part]
    return node.default


def _show(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "empty (null)"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return repr(v)


def _hint(value, check: Check) -> str:
    if isinstance(value, str) and check.what.startswith(("a number", "an integer")):
        try:
            float(value)
        except ValueError:
            return ""
        if "e" in value.lower() and "." not in value:
            return f"; YAML reads {value} as a string: write it with a decimal point, e.g. 1.0e-3"
        return "; a quoted number is a string: write it without quotes"
    if isinstance(value, bool) and check.names:
        return "; quote it: YAML reads a bare no / yes as false / true"
    close = suggestion(value, check.names) if isinstance(value, str) and check.names else None
    return f"; did you mean {close!r}?" if close else ""


def suggestion(key, valid) -> str | None:
    names = list(valid) + [alias for alias, real in ALIASES.items() if real in valid]
    match = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    return ALIASES.get(match[0], match[0]) if match else None


def error(source: str, path: str, problem: str) -> ProfileError:
    return ProfileError(f"{source}: key {path}: {problem}")


def _walk(value, node, path: str, source: str) -> None:
    if isinstance(node, Check):
        if not node.ok(value):
            raise error(source, path, f"is {_show(value)} (expected {node.what}{_hint(value, node)})")
    elif isinstance(node, Items):
        if not isinstance(value, list) or (node.nonempty and not value):
            raise error(source, path, f"is {_show(value) if value != [] else 'empty'} (expected a"
                                       f"{' non-empty' if node.nonempty else ''} list)")
        for i, item in enumerate(value):
            _walk(item, node.node, f"{path}[{i}]", source)
    elif not isinstance(value, dict):
        raise error(source, path, f"is {_show(value)} (expected a mapping)")
    elif isinstance(node, Each):
        for name, item in value.items():
            _walk(item, node.node, f"{path}.{name}", source)
    elif isinstance(node, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in node:
                hint = suggestion(key, node)
                raise error(source, sub, f"unknown key {key!r} ({f'did you mean {hint!r}? ' if hint else ''}"
                                          f"valid: {', '.join(node)})")
            _walk(item, node[key], sub, source)


def check_document(doc, source: str) -> None:
    """The file level: a mapping with `profile:`, `config:` and perhaps `extends:`."""
    if not isinstance(doc, dict):
        raise ProfileError(f"{source}: is {_show(doc)} at the top, not a profile (expected 'profile: <name>' "
                           "and 'config: {...}')")
    _walk(doc, DOCUMENT, "", source)
    for key in ("profile", "config"):
        if key not in doc:
            raise error(source, key, "missing (a profile file holds 'profile: <name>' and 'config: {...}')")


def validate(cfg: dict, source: str, partial: bool = False) -> None:
    """Check a profile's config (raises ProfileError). partial: a variant's own values (the keys it
    sets on top of the profile it extends), so nothing is required."""
    _walk(cfg, SCHEMA, "", source)
    if not partial:
        _complete(cfg, source)


def _require(section: dict, path: str, keys, source: str) -> None:
    for key in keys:
        if key not in section:
            raise error(source, f"{path}.{key}" if path else key, "missing (required)")


def _complete(cfg: dict, source: str) -> None:
    """Required keys: each conditional on what the profile does."""
    _require(cfg, "", ("seeds", "data", "model", "base", "cpt", "it", "eval"), source)
    data = cfg["data"]
    _require(data, "data", ("seed",) if data.get("documents") else
             ("seed", "n_new", "splits", "n_train_templates", "base_paraphrases", "new_paraphrases"), source)
    if not cfg["model"].get("pretrained"):
        _require(cfg["model"], "model", ("hidden_size", "num_layers", "num_heads", "intermediate_size"), source)
    stages = ("cpt", "it") + (("base",) if cfg["base"].get("enabled", default("base.enabled")) else ())
    for stage in stages:
        _require(cfg[stage], stage, ("batch_size", "lr") + (("qa_frac",) if stage == "base" else ()), source)
        if "epochs" not in cfg[stage] and "max_steps" not in cfg[stage]:
            raise error(source, f"{stage}.epochs", "missing (required: epochs or max_steps)")
    _require(cfg["eval"], "eval", ("batch_size", "max_new_tokens"), source)
    for section in ("augment_audit", "analysis"):
        if section in cfg:
            _require(cfg[section], section, [k for k, v in SCHEMA[section].items()
                                             if k != "probe_after_cpt"], source)
    if "sharpness" in cfg.get("analysis", {}):
        _require(cfg["analysis"]["sharpness"], "analysis.sharpness", SCHEMA["analysis"]["sharpness"], source)
    for name, blocks in (cfg.get("grids") or {}).items():
        for i, block in enumerate(blocks):
            _require(block, f"grids.{name}[{i}]", ("arms",), source)
    if "controls" in cfg:
        _require(cfg["controls"], "controls", ("profile",), source)

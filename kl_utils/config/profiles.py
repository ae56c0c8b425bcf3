"""Profiles: one YAML parameter file per profile under profiles/, passed to papermill with -f.

A profile file holds `profile: <name>` and `config: {...}`. Papermill injects both into a
notebook's `parameters` cell. When nothing was injected (JupyterLab, nbval), the notebook calls
`load_config(None, None)`, which takes the profile from the KL_PROFILE environment variable, or
`cpu` by default, and reads its file.

Every profile is checked (kl_utils.config.schema) as it is read, before any work: a wrong one raises
ProfileError, one line naming the file and the key. The check adds nothing to the config (the
defaults live in the schema and the code reads them from there), so run ids do not change.
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import yaml

from kl_utils.config import schema
from kl_utils.config.arms import all_arms
from kl_utils.config.schema import ProfileError
from kl_utils.core.paths import PROFILES_DIR, ROOT
from kl_utils.core.spec import merge

DEFAULT_PROFILE = "cpu"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _is_path(name: str) -> bool:
    """A profile given as a path to a YAML file (your own profile), not a name under profiles/."""
    return name.endswith((".yaml", ".yml"))


def profile_exists(name: str) -> bool:
    return Path(name).is_file() if _is_path(name) else name in available_profiles()


def _profile_path(name: str) -> Path:
    """The file of a profile name or path; ProfileError when there is none."""
    if _is_path(name):
        return Path(name)
    if name not in available_profiles():
        raise ProfileError(f"unknown profile {name!r}; valid profiles: {', '.join(available_profiles())} "
                           "(or a path to a .yaml file)", exit_code=2)
    return PROFILES_DIR / f"{name}.yaml"


def shown(path: Path) -> str:
    """A profile file as messages name it: relative to the project root when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def resolve_profile(profile: str | None) -> str:
    """The profile's name: a name under profiles/, or the `profile:` of a YAML file given by path."""
    name = profile or os.environ.get("KL_PROFILE") or DEFAULT_PROFILE
    return _read(_profile_path(name), expect=None if _is_path(name) else name)[0]


def _load_yaml(path: Path):
    source = shown(path)
    if not path.is_file():
        raise ProfileError(f"{source}: no such profile file" if not path.exists() else f"{source}: is not a file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ProfileError(f"{source}: not a text file (byte {err.start} is not UTF-8)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ProfileError(f"{source}: not valid YAML ({where}{problem})") from None


def _read(path: Path, expect: str | None = None) -> tuple[str, dict]:
    """(name, config) of a profile file, checked (kl_utils.config.schema) before it is returned."""
    source = shown(path)
    doc = _load_yaml(path)
    schema.check_document(doc, source)
    if expect is not None and doc["profile"] != expect:
        raise ProfileError(f"{source}: key profile: is {doc['profile']!r} (expected {expect!r}, the file's name)")
    cfg = doc["config"]
    if doc.get("extends"):  # a variant: the parent profile's config with these values on top
        if not profile_exists(doc["extends"]):
            raise ProfileError(f"{source}: key extends: unknown profile {doc['extends']!r}; valid profiles: "
                               f"{', '.join(available_profiles())} (or a path to a .yaml file)")
        schema.validate(cfg, source, partial=True)
        cfg = merge(read_profile(doc["extends"]), cfg)
    schema.validate(cfg, source)
    check_references(cfg, source)
    return doc["profile"], cfg


def read_profile(name: str) -> dict:
    return _read(_profile_path(name), expect=None if _is_path(name) else name)[1]


def load_config(profile: str | None = None, config: dict | None = None) -> tuple[str, dict]:
    """Return (profile name, config), the config checked against kl_utils.config.schema (ProfileError: one
    line naming the file and the key). `config` is what papermill injected (or None). `profile`
    may also be a path to a profile YAML file."""
    name = profile or os.environ.get("KL_PROFILE") or DEFAULT_PROFILE
    resolved, cfg = _read(_profile_path(name), expect=None if _is_path(name) else name)
    if config is not None:
        cfg = copy.deepcopy(config)
        schema.validate(cfg, f"the config injected for profile {resolved}", partial=True)
    return resolved, cfg


def check_references(cfg: dict, source: str) -> None:
    """Names that must exist: the arms of grids and of lr ablations; the profiles of controls and pairs."""
    base = dict(cfg.get("arms") or {})
    for i, arm in enumerate((cfg.get("ablations") or {}).get("lr", {}).get("arms", [])):
        if arm != "baseline" and arm not in all_arms({**cfg, "ablations": {**cfg["ablations"], "lr": {}}}):
            raise schema.error(source, f"ablations.lr.arms[{i}]", f"unknown arm {arm!r} (arms: baseline, {', '.join(base)})")
    arms = ["baseline", *all_arms(cfg)]
    for name, blocks in (cfg.get("grids") or {}).items():
        for i, block in enumerate(blocks):
            for j, arm in enumerate(block["arms"]):
                if arm not in arms:
                    hint = schema.suggestion(arm, arms)
                    raise schema.error(source, f"grids.{name}[{i}].arms[{j}]",
                                 f"unknown arm {arm!r} ({f'did you mean {hint!r}? ' if hint else ''}arms: baseline, "
                                 f"{', '.join(base)}, or one the profile's ablations generate)")
    controls = cfg.get("controls") or {}
    named = [("controls.profile", controls.get("profile"))]
    named += [(f"controls.base_models[{i}]", p) for i, p in enumerate(controls.get("base_models") or [])]
    named += [(f"{key}[{i}]", p) for key in ("pairs", "beside") for i, p in enumerate(cfg.get(key) or [])]
    for path, name in named:
        if name is not None and not profile_exists(name):
            raise schema.error(source, path, f"unknown profile {name!r}")


def resolved_parameters(profile: str) -> str:
    """The papermill parameters file of a profile: `profile` and its full config (with a parent
    profile's values merged in when it `extends:` one)."""
    name = resolve_profile(profile)
    return yaml.safe_dump({"profile": name, "config": read_profile(profile)}, sort_keys=False)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "resolve":
        print("usage: python -m kl_utils.config.profiles resolve PROFILE   (prints papermill parameters)", file=sys.stderr)
        return 2
    print(resolved_parameters(argv[1]), end="")
    return 0


if __name__ == "__main__":
    from kl_utils.core.command import entry
    sys.exit(entry(main))

"""`python -m kl_utils collect --from OTHER_CHECKOUT --profile P`: bring run records made elsewhere into
this checkout, then redraw everything they feed.

Long grids run in a second checkout (a `git worktree` at a clean commit) so that their records name a
clean commit while this one is being edited. Copying their records over by hand left the other
(base model, data draw) pairs' claims, the profiles set `beside` this one and README's blocks stale
until someone remembered each command. This verb does all of it:

1. Reads every record of the profile and of the profiles it reads (tools.reproduce.read_profiles) under
   OTHER_CHECKOUT/results/<profile>/runs/. Each must be JSON with a run id equal to its file name and
   a clean commit (--allow-dirty: records of uncommitted code too). A record already here must be
   byte-identical; one that differs is an error naming both files. All of this is checked before
   anything is copied: an error leaves this checkout as it was.
2. Copies the new records (atomically, one by one).
3. `make figures PROFILE=P` (tools.reproduce.redraw): the profile's notebooks on the records, then the
   other pairs' claims, the REPORT.md of profiles that set it beside theirs, and README's blocks
   (--no-redraw skips this).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from kl_utils.config.arms import is_current
from kl_utils.config.profiles import load_config, resolve_profile
from kl_utils.core.command import UserError
from kl_utils.core.paths import ROOT


class CollectError(UserError):
    """A record that cannot be collected as it is (named with its file)."""


def _read(path: Path) -> dict:
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CollectError(f"{path}: line {err.lineno}: not a JSON run record ({err.msg})") from None
    if not isinstance(rec, dict) or rec.get("run_id") != path.stem:
        raise CollectError(f"{path}: field run_id is {rec.get('run_id') if isinstance(rec, dict) else None!r}, "
                           f"not the file name {path.stem!r}")
    return rec


def plan(source: Path, profiles: list[str], results_root: Path, allow_dirty: bool = False) -> dict:
    """What collect would do, checked in full: {"new": [(src, dst, record)], "same": n, "stale": [run ids]}.
    Raises CollectError on a record that is not JSON, names another run, was made from uncommitted
    code (unless allow_dirty) or differs from the record of the same run id here."""
    new, same, stale = [], 0, []
    for profile in profiles:
        cfg = load_config(profile)[1]
        for src in sorted((source / "results" / profile / "runs").glob("*.json")):
            dst = results_root / profile / "runs" / src.name
            rec = _read(src)
            if dst.exists():
                if dst.read_bytes() != src.read_bytes():
                    raise CollectError(f"{src} differs from {dst}, the record of the same run here: "
                                       "one run id, two results (compare them; collect never overwrites)")
                same += 1
                continue
            commit = (rec.get("env") or {}).get("git_commit", "unknown")
            if ("dirty" in commit or commit == "unknown") and not allow_dirty:
                raise CollectError(f"{src}: field env.git_commit is {commit!r}: made from uncommitted code "
                                   "(commit it first, or pass --allow-dirty)")
            if rec.get("kind") == "arm" and not is_current(rec, cfg):
                stale.append(f"{profile}/{src.stem}")
            new.append((src, dst, rec))
    return {"new": new, "same": same, "stale": stale}


def collect(source: Path, profile: str, *, results_root: Path = ROOT / "results", figures_root: Path = ROOT / "figures",
            allow_dirty: bool = False, redraw: bool = True, log=print) -> list[Path]:
    """Copy the new records of `profile` and the profiles it reads from `source` (another checkout),
    then redraw (tools.reproduce.redraw). Returns the records copied."""
    from kl_utils.tools import reproduce
    profile, cfg = load_config(profile)
    source = Path(source)
    if not (source / "results").is_dir():
        raise CollectError(f"{source}: no results/ folder (give the root of another checkout of this project)")
    if source.resolve() == results_root.parent.resolve():
        raise CollectError(f"{source} is this checkout")
    profiles = list(dict.fromkeys([profile, *reproduce.read_profiles(cfg)]))
    todo = plan(source, profiles, results_root, allow_dirty)
    copied = []
    for src, dst, rec in todo["new"]:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".json.tmp")
        shutil.copy2(src, tmp)
        tmp.replace(dst)
        copied.append(dst)
        em = (rec.get("metrics") or {}).get("test_em")
        log(f"collected {dst.relative_to(results_root.parent)}" + (f" (held-out EM {em:.3f})" if isinstance(em, float) else ""))
    log(f"{len(copied)} new record(s), {todo['same']} already here (identical), of {', '.join(profiles)}")
    if todo["stale"]:
        log(f"{len(todo['stale'])} of them are not of the current config of their arm (kept, not used by claims): "
            + ", ".join(todo["stale"]))
    if copied and redraw:
        reproduce.redraw(profile, results_root=results_root, figures_root=figures_root, log=log)
    return copied


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", type=Path, required=True, help="root of the other checkout (e.g. a git worktree)")
    ap.add_argument("--profile", default=None, help="profile name (default: KL_PROFILE or cpu)")
    ap.add_argument("--allow-dirty", action="store_true", help="collect records made from uncommitted code too")
    ap.add_argument("--no-redraw", action="store_true", help="only copy the records")
    ap.add_argument("--results-root", type=Path, default=ROOT / "results", help=argparse.SUPPRESS)
    ap.add_argument("--figures-root", type=Path, default=ROOT / "figures", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    collect(args.source, resolve_profile(args.profile), results_root=args.results_root, figures_root=args.figures_root,
            allow_dirty=args.allow_dirty, redraw=not args.no_redraw)
    return 0


if __name__ == "__main__":
    import sys

    from kl_utils.core.command import entry
    sys.exit(entry(main))

"""`make reproduce` and `make figures`: the notebooks in order, run by papermill, two ways.

    python -m kl_utils reproduce --profile cpu              # recompute, then compare (make reproduce)
    python -m kl_utils reproduce --profile cpu --publish    # ... and replace the committed results
    python -m kl_utils reproduce --profile cpu --redraw     # redraw from the committed records (make figures)

Recompute: every run of the profile is trained from scratch in a fresh results tree,
`results/<profile>/reproduction/` (git ignores it); the committed records are not read as a cache.
Profiles the notebooks only *read* (the controls of cpu-full, the other base models) are copied into
that tree as committed. Then the new records are compared with the committed ones run id by run id
(kl_utils.reporting.compare) and `results/<profile>/REPRODUCTION.md` says how close this machine came. An
interrupted reproduction resumes (finished runs of this tree are kept); a finished one, or one
started at another commit, starts over. The committed results change only with --publish, which
refuses records made from uncommitted code unless --allow-dirty.

Redraw: the notebooks run on the committed records with training switched off (KL_NO_TRAIN): every
figure, table, claims.csv and REPORT.md is drawn again from them; nothing is trained. For cpu the
executed notebooks replace the committed ones (their outputs are what a reader sees on opening them),
and what else the records feed is refreshed (refresh_dependents).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from kl_utils.core import records
from kl_utils.reporting import compare
from kl_utils.config.profiles import load_config, resolve_profile
from kl_utils.core.paths import ROOT, environ

NOTEBOOKS_DIR = ROOT / "notebooks"
KERNEL = "kl-study"
QUIET = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


# Notebooks for the methods on a user's own documents: no profile, their own parameters and committed run;
# nbval runs them (make test), `make reproduce` does not.
USER_NOTEBOOKS = ("08_your_documents.ipynb",)


def notebooks(cfg: dict | None = None) -> list[Path]:
    """The study notebooks of a profile, in order: all of them, or those whose number is in the profile's
    `notebooks:` list (cpu-llm leaves out the C2 sweep and the sharpness of saved checkpoints,
    which it covers with arms or does not keep checkpoints for)."""
    wanted = (cfg or {}).get("notebooks")
    return [nb for nb in sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
            if nb.name not in USER_NOTEBOOKS and (wanted is None or int(nb.name[:2]) in wanted)]


def read_profiles(cfg: dict) -> list[str]:
    """Profiles whose records the notebooks of a profile read but do not produce (notebook 06's
    controls and base models; the other (base model, data draw) pairs its claims pool; the profiles
    its report sets `beside` it)."""
    controls = cfg.get("controls") or {}
    out = [] if controls.get("run", True) else [controls.get("profile")]
    out += list(controls.get("base_models") or []) + list(cfg.get("pairs") or []) + list(cfg.get("beside") or [])
    return [p for p in dict.fromkeys(out) if p]


def run_notebooks(profile: str, out_dir: Path, env: dict, log=print) -> dict[str, int]:
    """Execute every notebook with the profile's parameters into out_dir; seconds per notebook.
    `env` is set for the kernels (they inherit this process's environment)."""
    import logging

    import papermill
    import yaml
    # papermill reports each cell and its printed output through its logger: that is the progress of
    # a reproduction that trains for half an hour (tqdm bars are switched off in the kernels).
    plog = logging.getLogger("papermill")
    if not plog.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("   %(message)s"))
        plog.addHandler(handler)
        plog.setLevel(logging.INFO)
        plog.propagate = False
    from kl_utils.config.profiles import resolved_parameters
    params = yaml.safe_load(resolved_parameters(profile))
    out_dir.mkdir(parents=True, exist_ok=True)
    times = {}
    with environ(**env):
        for nb in notebooks(params["config"]):
            log(f"== {nb.name} (profile {profile})")
            t0 = time.time()
            papermill.execute_notebook(str(nb), str(out_dir / nb.name), parameters=params, kernel_name=KERNEL,
                                       cwd=str(NOTEBOOKS_DIR), log_output=True, progress_bar=False)
            times[nb.name] = round(time.time() - t0)
    return times


def _copy_tree(src: Path, dst: Path) -> None:
    if src.exists():
        shutil.copytree(src, dst, dirs_exist_ok=True)


def prepare_tree(profile: str, cfg: dict, tree: Path, committed: Path, fresh: bool) -> dict:
    """The fresh results tree of a reproduction: wiped unless an unfinished one of this commit is
    there to resume; the read-only profiles copied in as committed. Returns its state."""
    state_path = tree / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    commit = records.git_commit()
    if fresh or state is None or state.get("complete") or state.get("commit") != commit:
        shutil.rmtree(tree, ignore_errors=True)
        state = {"profile": profile, "commit": commit, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "complete": False, "resumed": 0, "notebook_s": {}}
    else:
        state["resumed"] += 1
    for other in read_profiles(cfg):
        if other != profile:
            for part in ("runs", "claims.csv"):
                src, dst = committed / other / part, tree / "results" / other / part
                if src.is_dir():
                    _copy_tree(src, dst)
                elif src.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
    records.atomic_write_json(state_path, state)
    return state


def publish_notebooks(profile: str, executed: Path, results_root: Path, log=print) -> list[Path]:
    """The executed notebooks over the committed ones in notebooks/ (tools.notebooks.publish: without
    papermill's injected cell and per-run metadata) — only for cpu, the profile the committed notebooks
    show, and only when the results written are the committed ones."""
    if profile != "cpu" or results_root != ROOT / "results":
        return []
    from kl_utils.tools import notebooks
    written = notebooks.publish(executed, NOTEBOOKS_DIR)
    for path in written:
        log(f"published {path.relative_to(ROOT)}")
    return written


def publish(profile: str, cfg: dict, tree: Path, results_root: Path, figures_root: Path, allow_dirty: bool,
            log=print) -> None:
    """Copy the reproduction's records, claims, report, timing and figures over the committed ones
    (and, for cpu, the executed notebooks over notebooks/)."""
    dirty = [c for c in {r["env"]["git_commit"] for r in records.load_run_records(profile)} if "dirty" in c]
    if dirty and not allow_dirty:
        raise SystemExit(f"not publishing: records of {profile} were made from uncommitted code ({dirty[0]}); "
                         "commit first, or pass --allow-dirty (PUBLISH_DIRTY=1)")
    src = tree / "results" / profile
    for rec in sorted((src / "runs").glob("*.json")):
        dst = results_root / profile / "runs" / rec.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(rec, dst)
    for name in ("claims.csv", "REPORT.md", "timing.json"):
        if (src / name).exists():
            shutil.copy2(src / name, results_root / profile / name)
    for fig_profile in {profile, *read_profiles(cfg)}:
        _copy_tree(tree / "figures" / fig_profile, figures_root / fig_profile)
    publish_notebooks(profile, tree / "notebooks", results_root, log=log)
    log(f"published the reproduction of {profile} into {results_root / profile}")


def reproduce(profile: str, *, results_root: Path, figures_root: Path, fresh: bool = False,
              publish_results: bool = False, allow_dirty: bool = False, log=print) -> dict:
    """Recompute every record of the profile in a fresh tree, draw everything from it, compare with
    the committed records and write REPRODUCTION.md. Returns the comparison."""
    profile, cfg = load_config(profile)
    tree = results_root / profile / "reproduction"
    state = prepare_tree(profile, cfg, tree, results_root, fresh)
    env = {"KL_RESULTS_ROOT": str(tree / "results"), "KL_FIGURES_ROOT": str(tree / "figures"), "KL_PROFILE": profile,
           **QUIET}
    log(f"reproducing {profile} from scratch in {tree}" + (f" (resuming, start {state['resumed'] + 1})" if state["resumed"] else ""))
    t0 = time.time()
    times = run_notebooks(profile, tree / "notebooks", env, log=log)
    state["notebook_s"] = {k: state["notebook_s"].get(k, 0) + v for k, v in times.items()}
    from kl_utils.reporting import report
    from kl_utils.tools import notebooks as nb_tools
    with environ(KL_RESULTS_ROOT=env["KL_RESULTS_ROOT"], KL_FIGURES_ROOT=env["KL_FIGURES_ROOT"]):
        nb_tools.write_timing(profile, state["notebook_s"])
        report.write_report(profile, cfg)  # again, now with the end-to-end wall time
    result = compare.compare_profile(profile, committed=results_root / profile, fresh=tree / "results" / profile)
    result.update(wall_time_s=sum(state["notebook_s"].values()), this_run_s=round(time.time() - t0),
                  resumed=state["resumed"], started=state["started"], commit=state["commit"])
    text = compare.markdown(profile, result)
    records.atomic_write_text(results_root / profile / "REPRODUCTION.md", text)
    records.atomic_write_text(tree / "REPRODUCTION.md", text)
    state["complete"] = True
    records.atomic_write_json(tree / "state.json", state)
    if publish_results:
        with environ(KL_RESULTS_ROOT=str(tree / "results")):
            publish(profile, cfg, tree, results_root, figures_root, allow_dirty, log=log)
    log(f"wrote {results_root / profile / 'REPRODUCTION.md'}")
    log(compare.summary_line(result))
    return result


def dependents(profile: str, cfg: dict) -> dict[str, list[str]]:
    """Profiles whose published tables read this profile's records: the other (base model, data draw)
    pairs of its design (their random-effects columns pool every pair) and the profiles that set it
    `beside` theirs (REPORT.md's 'Beside' section, README's beside block)."""
    from kl_utils.config.profiles import available_profiles
    pairs = [p for p in cfg.get("pairs") or [] if p != profile]
    beside = [name for name in available_profiles() if name != profile and profile in (load_config(name)[1].get("beside") or [])]
    return {"pairs": pairs, "beside": beside}


def refresh_dependents(profile: str, cfg: dict, *, results_root: Path, figures_root: Path,
                       docs: list[Path] = (), log=print) -> list[str]:
    """After the profile's notebooks redrew its own outputs, what else its records feed: every other
    pair's claims.csv (and REPORT.md where it has one), the REPORT.md of every profile that sets it
    beside its own, and the generated blocks (report.doc_blocks) of the profile and all of them in
    the `docs` files (README.md, docs/*.md; none: leave them alone).
    Without this, a record added to one pair left the others' claims stale until someone ran
    `claims` by hand: exactly what the provenance test then failed on. Returns what changed."""
    from kl_utils.reporting import claims, report
    changed = []
    deps = dependents(profile, cfg)
    with environ(KL_RESULTS_ROOT=str(results_root), KL_FIGURES_ROOT=str(figures_root)):
        for other in dict.fromkeys(deps["pairs"] + deps["beside"]):
            ocfg = load_config(other)[1]
            before = {name: (results_root / other / name).read_bytes() if (results_root / other / name).exists() else None
                      for name in ("claims.csv", "REPORT.md")}
            if before["REPORT.md"] is not None:
                claims.write(other, ocfg)
                report.write_report(other, ocfg)
            elif other in deps["pairs"]:
                claims.write(other, ocfg)
            for name, old in before.items():
                path = results_root / other / name
                if path.exists() and path.read_bytes() != old:
                    changed.append(str(path.relative_to(results_root.parent)))
        for path in docs:
            for name in [profile, *deps["pairs"], *deps["beside"]]:
                if report.update_blocks(name, load_config(name)[1], path):
                    changed.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({name} blocks)")
    for item in changed:
        log(f"refreshed {item}")
    return changed


def redraw(profile: str, *, results_root: Path, figures_root: Path, log=print) -> dict[str, int]:
    """Every notebook on the committed records with training switched off, then what else reads
    those records (refresh_dependents; README's and docs' blocks only when the tree is the committed one)."""
    profile, cfg = load_config(profile)
    env = {"KL_RESULTS_ROOT": str(results_root), "KL_FIGURES_ROOT": str(figures_root), "KL_PROFILE": profile,
           "KL_NO_TRAIN": "1", **QUIET}
    with environ(KL_RESULTS_ROOT=str(results_root)):
        n = len(records.load_run_records(profile))
    t0 = time.time()
    times = run_notebooks(profile, results_root / profile / "scratch", env, log=log)
    publish_notebooks(profile, results_root / profile / "scratch", results_root, log=lambda _: None)
    from kl_utils.reporting.report import block_files
    docs = block_files() if results_root == ROOT / "results" else []
    refresh_dependents(profile, cfg, results_root=results_root, figures_root=figures_root, docs=docs, log=log)
    log(f"redrew the figures, tables, claims.csv and REPORT.md of {profile} from {n} committed run records "
        f"in {time.time() - t0:.0f} s, training nothing")
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, help="profile name or YAML path (default: KL_PROFILE or cpu)")
    ap.add_argument("--redraw", action="store_true", help="only redraw from the committed records (make figures)")
    ap.add_argument("--fresh", action="store_true", help="start the reproduction over even if an unfinished one is there")
    ap.add_argument("--publish", action="store_true", help="replace the committed results with the reproduced ones")
    ap.add_argument("--allow-dirty", action="store_true", help="publish even records made from uncommitted code")
    ap.add_argument("--results-root", type=Path, default=ROOT / "results", help=argparse.SUPPRESS)
    ap.add_argument("--figures-root", type=Path, default=ROOT / "figures", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.redraw and (args.fresh or args.publish or args.allow_dirty):
        ap.error("--fresh, --publish and --allow-dirty are options of reproduce; figures (--redraw) trains and publishes nothing")
    profile = resolve_profile(args.profile)  # kl_utils.config.schema.ProfileError: one line (kl_utils.core.command.entry)
    if args.redraw:
        redraw(profile, results_root=args.results_root, figures_root=args.figures_root)
    else:
        reproduce(profile, results_root=args.results_root, figures_root=args.figures_root, fresh=args.fresh,
                  publish_results=args.publish, allow_dirty=args.allow_dirty)
    return 0


if __name__ == "__main__":
    from kl_utils.core.command import entry
    sys.exit(entry(main))

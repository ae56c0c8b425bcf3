"""One command line for the study: `python -m kl_utils <verb> [options]`.

Each verb hands its options to a module's own main(argv), so `python -m kl_utils <verb> --help`
is that module's help and `python -m kl_utils.<layer>.<module>` keeps working. A profile that cannot be
used (unknown name, a file that is missing, not YAML or wrong: kl_utils.config.schema) ends the
command with one line naming the file and the key, exit code 1 (2 for an unknown profile name), and
no traceback (kl_utils.core.command); `--debug` shows it.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from kl_utils.config.profiles import load_config
from kl_utils.core.command import UserError, entry  # noqa: F401 (entry: re-exported)

# Errors in what the user gave (a profile, a document file, a missing model wheel): one line each.
USER_ERRORS = (UserError,)

# verb: (module, arguments put before the user's, what it does)
VERBS = {
    "run": ("kl_utils.protocol.run", [], "run a grid of arms x seeds (runs that have a record are skipped)"),
    "plan": ("kl_utils.protocol.plan", [], "print the runs of a profile's grid: run ids, steps, gradient evaluations, "
                                           "records, time; trains nothing"),
    "reproduce": ("kl_utils.tools.reproduce", [], "recompute every run in a fresh tree, redraw, compare with the "
                                                  "committed records"),
    "figures": ("kl_utils.tools.reproduce", ["--redraw"], "redraw figures, tables, claims and report from the committed "
                                                          "records (= reproduce --redraw)"),
    "collect": ("kl_utils.tools.collect", [], "copy run records from another checkout (a worktree running a grid), then "
                                              "redraw everything they feed"),
    "claims": ("kl_utils.reporting.claims", [], "write claims.csv (the verdicts) of a profile"),
    "report": ("kl_utils.reporting.report", [], "write claims.csv and REPORT.md of a profile"),
    "bench": ("kl_utils.tools.bench", [], "speed benchmarks"),
    "documents": ("kl_utils.data.documents", [], "validate or convert a document dataset (validate | convert)"),
    "augment": ("kl_utils.augment.document_variants", [], "formatted variants of documents, with the fact audit"),
    "gpu-check": ("kl_utils.tools.paper", ["gpu-check"], "throughput, MFU and peak memory of a profile's CPT update on GPU"),
}

# Verbs whose --profile is checked (kl_utils.config.schema) before their module is imported.
PROFILE_VERBS = ("run", "plan", "reproduce", "figures", "collect", "claims", "report", "gpu-check")
_PROFILE = argparse.ArgumentParser(add_help=False)
_PROFILE.add_argument("--profile")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m kl_utils", description=__doc__.split("\n\n")[1].replace("\n", " "),
                                 epilog="`python -m kl_utils VERB --help` shows the options of a verb.")
    ap.add_argument("--debug", action="store_true", help="show the traceback of a profile error")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (_, _, text) in VERBS.items():
        sub.add_parser(verb, help=text, add_help=False)  # --help goes to the verb's module
    args, rest = ap.parse_known_args(argv)
    module, before, _ = VERBS[args.verb]
    rest = before + rest + (["--debug"] if args.debug else [])
    if args.verb in PROFILE_VERBS:  # a bad profile is rejected before the module imports torch
        profile = _PROFILE.parse_known_args(rest)[0].profile
        code = entry(lambda _: load_config(profile) and 0, rest) if profile else 0
        if code:
            return code
    run = importlib.import_module(module).main
    # argparse's prog in usage lines and errors (a module with subcommands, gpu-check, adds the verb itself)
    subcommand = before and not before[0].startswith("-")
    argv0, sys.argv[0] = sys.argv[0], "python -m kl_utils" + ("" if subcommand else f" {args.verb}")
    try:  # documents and augment read no profile and have their own one-line errors and --debug
        return run(rest) if args.verb in ("documents", "augment") else entry(run, rest)
    except SystemExit as stop:  # argparse in the module (--help, a usage error)
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
            return 1
        return stop.code or 0
    finally:
        sys.argv[0] = argv0

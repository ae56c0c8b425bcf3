"""How a command ends on a user's mistake: one line, not a traceback.

A module's main(argv) is run through entry() (by `python -m kl_utils <verb>`, kl_utils.cli, and by
`python -m kl_utils.<layer>.<module>`). Errors in what the user gave -- a profile, a document file,
a missing model wheel -- are subclasses of UserError (kl_utils.config.schema.ProfileError,
kl_utils.data.doc_read.DocumentFormatError, kl_utils.training.pretrained.PackagedModelMissing):
entry() prints them as one line on stderr and returns their exit_code (1 unless they set one).
"""
from __future__ import annotations

import sys
import traceback


class UserError(Exception):
    """An error in what the user gave, printed as one line; exit_code: the command's exit status."""
    exit_code = 1


def entry(main, argv=None) -> int:
    """Run a module's main(argv) as a command: a UserError is one line on stderr and its exit code,
    not a traceback (unless --debug is among the arguments, which is then taken out)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        out = main(argv)
    except UserError as err:
        if debug:
            traceback.print_exc()
        print(err, file=sys.stderr)
        return getattr(err, "exit_code", 1)
    return out if isinstance(out, int) else 0


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (steps, workers, threads); a usage error naming the value otherwise."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (seeds)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    import argparse
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
    return value

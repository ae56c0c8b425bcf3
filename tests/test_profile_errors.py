"""Bad profiles as users write them: every case goes through the command line (`python -m kl_utils
run`, in process; a few in a subprocess) and must give its exit code and one line on stderr naming
the profile file and the key path, with no traceback, before any work: the subprocess cases in
under 2 seconds (the check imports no torch)."""
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from kl_utils import cli
from kl_utils.config import profiles as config
from kl_utils.protocol import run

ROOT = Path(__file__).resolve().parents[1]


class Case(NamedTuple):
    id: str
    text: str | None  # the profile file's content (None: no file is written)
    key: str | None  # the key path the message names
    words: str
    code: int = 1
    profile: str | None = None  # what --profile gets (default: the written file)


def variant(config_yaml: str, parent: str = "smoke") -> str:
    return f"profile: mine\nextends: {parent}\nconfig:\n{config_yaml}"


def setting(id: str, path: str, value: str, words: str) -> Case:
    """A profile that sets one key, `path` ("section.key"), to `value` as written in YAML; the
    message must name that key path."""
    section, key = path.split(".")
    return Case(id, variant(f"  {section}: {{{key}: {value}}}\n"), path, words)


CASES = [
    setting("misspelled_key", "cpt.lerning_rate", "1.0e-3", "unknown key 'lerning_rate' (did you mean 'lr'?"),
    Case("misspelled_key_in_arm_override", variant("  arms:\n    sam: {cpt: {optimizer: sam, rho: 0.05, sam_evry_k: 4}}\n"),
         "arms.sam.cpt.sam_evry_k", "unknown key 'sam_evry_k' (did you mean 'sam_every_k'?"),
    Case("misspelled_top_level_key", variant("  seed: [0, 1]\n"), "seed", "did you mean 'seeds'?"),
    setting("negative_rho", "cpt.rho", "-1", "is -1 (expected a number >= 0)"),
    Case("negative_rho_in_arm", variant("  arms:\n    sam: {cpt: {optimizer: sam, rho: -0.05}}\n"), "arms.sam.cpt.rho",
         "is -0.05 (expected a number >= 0)"),
    setting("string_lr", "cpt.lr", "fast", "is 'fast' (expected a number > 0)"),
    setting("lr_that_yaml_reads_as_a_string", "it.lr", "1e-3", "write it with a decimal point"),
    setting("epochs_zero", "it.epochs", "0", "is 0 (expected an integer >= 1)"),
    setting("batch_size_float", "cpt.batch_size", "16.5", "expected an integer >= 1"),
    setting("quoted_number", "cpt.batch_size", '"16"', "a quoted number is a string"),
    setting("unknown_optimizer", "cpt.optimizer", "adam", "is 'adam' (expected one of adamw, sam; did you mean 'adamw'?)"),
    setting("fp16", "cpt.mixed_precision", "fp16", "expected one of no, bf16"),
    setting("bare_no", "cpt.mixed_precision", "no", "YAML reads a bare no"),
    setting("unknown_batching", "base.batching", "packed", "did you mean 'pack'?"),
    Case("unknown_augmentation_family", variant("  arms:\n    f: {cpt: {augmentation: {k: 1, families: [bullets]}}}\n"),
         "arms.f.cpt.augmentation.families[0]", "is 'bullets' (expected one of wrap_document"),
    Case("unknown_family_in_ablations", variant("  ablations: {families: [heading, footer]}\n"),
         "ablations.families[1]", "is 'footer'"),
    Case("unknown_arm_key", variant("  arms:\n    x: {cpt: {epochs: 2}, bugdet: steps}\n"), "arms.x.bugdet",
         "did you mean 'budget'?"),
    Case("unknown_budget", variant("  arms:\n    x: {budget: tokens}\n"), "arms.x.budget", "expected one of epochs, steps"),
    Case("grid_naming_an_unknown_arm", variant("  grids:\n    main:\n      - {arms: [baseline, sma], seeds: [0]}\n"),
         "grids.main[0].arms[1]", "unknown arm 'sma' (did you mean 'sam'?"),
    Case("lr_ablation_of_an_unknown_arm", variant("  ablations: {lr: {arms: [nope], factors: [2.0]}}\n"),
         "ablations.lr.arms[0]", "unknown arm 'nope'"),
    Case("seeds_not_integers", variant("  seeds: [0, one]\n"), "seeds[1]", "is 'one' (expected an integer >= 0)"),
    Case("section_not_a_mapping", variant("  cpt: 12\n"), "cpt", "is 12 (expected a mapping)"),
    Case("missing_required_key", "profile: mine\nconfig:\n  seeds: [0]\n", "data", "missing (required)"),
    Case("unknown_pair_profile", variant("  pairs: [smoke, smok]\n"), "pairs[1]", "unknown profile 'smok'"),
    Case("extends_an_unknown_profile", "profile: mine\nextends: cpux\nconfig: {}\n", "extends", "unknown profile 'cpux'"),
    Case("misspelled_extends", "profile: mine\nextend: smoke\nconfig: {}\n", "extend", "did you mean 'extends'?"),
    Case("profile_without_config", "profile: mine\nextends: smoke\n", "config", "missing"),
    Case("config_empty", "profile: mine\nextends: smoke\nconfig:\n", "config", "is empty (null) (expected a mapping)"),
    Case("not_yaml", "profile: mine\nconfig:\n  cpt: {lr: [1\n", None, "not valid YAML (line"),
    Case("yaml_but_a_list", "- profile: mine\n- config: {}\n", None, "is a list at the top, not a profile"),
    Case("not_text", "\udcff\udcfe", None, "not a text file"),
    Case("unknown_profile_name", None, None, "unknown profile 'bogus'; valid profiles: ", code=2, profile="bogus"),
    Case("yaml_path_that_does_not_exist", None, None, "no such profile file", profile="nothing/here.yaml"),
]


def write(tmp_path: Path, case: Case) -> tuple[str, str]:
    """(the --profile argument, the file the message must name)."""
    if case.profile is not None:
        arg = str(tmp_path / case.profile) if case.profile.endswith(".yaml") else case.profile
        return arg, arg if case.profile.endswith(".yaml") else ""
    path = tmp_path / "mine.yaml"
    path.write_bytes(case.text.encode("utf-8", "surrogateescape"))
    return str(path), str(path)


def check_message(err: str, named: str, case: Case) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    msg = lines[0]
    assert msg.startswith(f"{named}: " if named else "unknown profile"), msg
    assert (f": key {case.key}: " in msg) if case.key else ": key " not in msg, msg
    assert case.words in msg, msg
    assert len(msg) < 600, msg
    return msg


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_profile_is_one_line_naming_file_and_key(tmp_path, capsys, case):
    arg, named = write(tmp_path, case)
    for argv in (["run", "--profile", arg], ["plan", "--profile", arg]):
        rc = cli.main(argv)
        out, err = capsys.readouterr()
        assert rc == case.code and out == ""
        check_message(err, named, case)
    rc = cli.entry(run.main, ["--profile", arg])  # python -m kl_utils run: the same line
    assert rc == case.code
    check_message(capsys.readouterr().err, named, case)


def test_battery_covers_the_cases_of_the_issue():
    ids = {c.id for c in CASES}
    assert len(ids) == len(CASES) >= 20
    assert {"misspelled_key", "misspelled_key_in_arm_override", "negative_rho", "string_lr", "epochs_zero",
            "unknown_optimizer", "unknown_augmentation_family", "grid_naming_an_unknown_arm", "unknown_profile_name",
            "not_yaml", "profile_without_config", "yaml_path_that_does_not_exist"} <= ids


def test_debug_shows_the_traceback_and_ends_with_the_line(tmp_path, capsys):
    case = next(c for c in CASES if c.id == "negative_rho")
    arg, named = write(tmp_path, case)
    assert cli.main(["--debug", "run", "--profile", arg]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith(f"{named}: key cpt.rho: ")


def test_committed_profile_with_a_wrong_name_inside(tmp_path, monkeypatch, capsys):
    (tmp_path / "a.yaml").write_text("profile: b\nconfig: {}\n")
    monkeypatch.setattr(config, "PROFILES_DIR", tmp_path)
    with pytest.raises(config.ProfileError, match=r"a.yaml: key profile: is 'b' \(expected 'a'"):
        config.load_config("a")


SUBPROCESS_CASES = [c for c in CASES if c.id in ("misspelled_key", "negative_rho", "string_lr",
                                                  "grid_naming_an_unknown_arm", "unknown_profile_name", "not_yaml")]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_real_cli_rejects_before_importing_torch(tmp_path, case):
    """The real command line, in a subprocess: one line, the exit code, and no torch / datasets import
    before the rejection (what makes it take a fraction of a second; no wall-clock bound in a unit test)."""
    arg, named = write(tmp_path, case)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = ("import runpy, sys\n"
             f"sys.argv = ['kl_utils', 'run', '--profile', {arg!r}]\n"
             "try:\n    runpy.run_module('kl_utils', run_name='__main__', alter_sys=True)\n"
             "finally:\n    assert 'torch' not in sys.modules and 'datasets' not in sys.modules, 'heavy import before the error'\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == case.code and proc.stdout == "", proc.stderr
    check_message(proc.stderr, named, case)

"""`python -m kl_utils <verb>` (kl_utils.cli) and its `plan` verb (kl_utils.protocol.plan)."""
import re
import subprocess
import sys

import pytest

from kl_utils import cli
from kl_utils.core import records
from kl_utils.data import dataset as data
from kl_utils.config import profiles as config
from kl_utils.protocol import experiment, plan
from kl_utils.core.paths import ROOT


@pytest.mark.parametrize("verb", list(cli.VERBS))
def test_help_of_each_verb_is_its_modules(verb, capsys):
    assert cli.main([verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--help" in out
    if verb == "documents":
        assert "validate" in out and "convert" in out
    elif verb == "augment":
        assert "--protect-field" in out and "--k" in out
    elif verb not in ("bench",):
        assert "--profile" in out


def test_no_verb_or_an_unknown_one_is_a_usage_error(capsys):
    for argv in ([], ["frobnicate"]):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_verbs_prefix_their_modules_arguments(monkeypatch):
    seen = {}
    monkeypatch.setattr("kl_utils.tools.reproduce.main", lambda argv: seen.setdefault("reproduce", argv) and 0)
    monkeypatch.setattr("kl_utils.tools.paper.main", lambda argv: seen.setdefault("paper", argv) and 0)
    assert cli.main(["figures", "--profile", "smoke"]) == 0
    assert cli.main(["gpu-check", "--profile", "paper", "--steps", "3"]) == 0
    assert seen == {"reproduce": ["--redraw", "--profile", "smoke"], "paper": ["gpu-check", "--profile", "paper", "--steps", "3"]}


def test_makefile_calls_the_cli():
    make = (ROOT / "Makefile").read_text()
    for verb in ("reproduce", "figures", "collect", "bench", "run", "gpu-check", "plan"):
        assert f"$(PY) -m kl_utils {verb} " in make, verb
    assert not re.search(r"-m kl_utils\.(reproduce|bench|run|paper)\b", make)


# ---------------------------------------------------------------------------------------------
# plan

@pytest.fixture(scope="module")
def profiles_and_data():
    """The profiles with committed records, and their data (built in memory, nothing cached)."""
    out = {}
    for name in ("cpu", "cpu-full", "cpu-base1", "cpu-impl"):
        cfg = config.read_profile(name)
        out[name] = (cfg, data.build_people(cfg["data"]))
    return out


def test_plan_steps_are_those_every_committed_run_made(profiles_and_data):
    """Optimizer steps per stage (CPT, IT, PIT; epoch- and step-matched; paraphrases, augmentation)
    equal the `optimizer_steps` of every committed arm record."""
    n = 0
    for name, (cfg, ds) in profiles_and_data.items():
        counts, baseline = plan.example_counts(ds), experiment.baseline_steps(cfg, ds)
        for rec in records.load_run_records(name, kind="arm"):
            arm_cfg = experiment.arm_spec(cfg, rec["arm"], rec["seed"])[0]
            assert plan.stage_steps(arm_cfg, counts, baseline) == rec["optimizer_steps"], rec["run_id"]
            n += 1
    assert n >= 278


def test_gradient_evaluations():
    arm = {"cpt": {"optimizer": "sam", "sam_every_k": 4}, "it": {"optimizer": "adamw"}}
    assert plan.stage_grads(arm, {"cpt": 100, "it": 10}) == {"cpt": 125, "it": 10}
    assert plan.stage_grads({"cpt": {"optimizer": "sam"}, "it": {}}, {"pit": 8, "cpt": 100}) == {"pit": 8, "cpt": 200}


def test_plan_of_cpu_lists_every_run_with_its_record(profiles_and_data, monkeypatch, capsys):
    cfg, ds = profiles_and_data["cpu"]
    monkeypatch.setattr(experiment, "prepare_data", lambda profile, cfg: (ds, None, None))
    assert cli.main(["plan", "--profile", "cpu"]) == 0
    out = capsys.readouterr().out
    recs = records.load_run_records("cpu", kind="arm")
    for rec in recs:
        assert re.search(rf"^{re.escape(rec['arm'])} +{rec['seed']} +{rec['run_id']} ", out, re.M), rec["run_id"]
    assert "sam               0     sam-s0-" in out and "CPT 228 + IT 116  572 " in out  # SAM: 2 per step
    assert f"{len(recs)} of {len(recs)} runs have a record; 0 to run" in out and "(measured)" in out
    assert re.search(r"all \d+ from scratch: estimated [\d.]+ min of training", out)
    assert "the last make reproduce of cpu took" in out  # results/cpu/timing.json


def test_plan_estimates_from_the_profiles_records_or_says_it_has_none(profiles_and_data, monkeypatch, capsys):
    cfg, ds = profiles_and_data["cpu"]
    monkeypatch.setattr(experiment, "prepare_data", lambda profile, cfg: (ds, None, None))
    assert cli.main(["plan", "--profile", "cpu-rich", "--grid", "main"]) == 0  # no records: no estimate
    out = capsys.readouterr().out
    assert "0 of 29 runs have a record; 29 to run: no estimate" in out and " no      no estimate" in out
    rates = plan.seconds_per_grad(records.load_run_records("cpu", kind="arm"))
    assert set(rates) == {"cpt", "it"} and 0.01 < rates["cpt"] < 1
    assert plan.estimate({"cpt": 100, "it": 10}, rates) == pytest.approx(100 * rates["cpt"] + 10 * rates["it"])
    assert plan.estimate({"cpt": 100}, {}) is None


def test_plan_unknown_grid_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        plan.main(["--profile", "smoke", "--grid", "nope"])
    assert stop.value.code == 2 and "unknown grid 'nope'" in capsys.readouterr().err


def test_python_dash_m_kl_utils_runs():
    proc = subprocess.run([sys.executable, "-m", "kl_utils", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "plan" in proc.stdout and "gpu-check" in proc.stdout


def test_plan_without_the_models_data_is_one_line(monkeypatch, capsys):
    def offline(profile, cfg):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")
    monkeypatch.setattr(experiment, "prepare_data", offline)
    assert cli.main(["plan", "--profile", "paper"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("profile paper: cannot count the steps without the data and tokenizer of Qwen/Qwen2-1.5B: ")


def test_a_bad_document_file_named_by_a_profile_is_one_line(tmp_path, monkeypatch, capsys):
    """`run` on a profile whose data.documents is malformed stops before any training with the
    document error's one line (file, line, layout), exit 1, no traceback."""
    import yaml
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path / "results"))
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": 1, "text": "x", "qa": [{"question": "q", "answer": "a"}]}\n{bad json\n')
    prof = yaml.safe_load((ROOT / "profiles" / "paper-wiki.yaml").read_text())
    prof["profile"] = "badwiki"
    prof["config"]["data"]["documents"] = str(docs)
    path = tmp_path / "badwiki.yaml"
    path.write_text(yaml.safe_dump(prof))
    assert cli.main(["run", "--profile", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{docs}:2: is not valid JSON") and "Traceback" not in err[0]


@pytest.mark.parametrize("argv, message", [
    (["run", "--profile", "smoke", "--workers", "0"], "python -m kl_utils run: error: argument --workers: expected a whole number >= 1, got '0'"),
    (["claims", "--across", "nope", "smoke"], "unknown profile 'nope'"),
    (["figures", "--profile", "smoke", "--fresh"], "python -m kl_utils figures: error: --fresh, --publish and --allow-dirty are options of reproduce"),
    (["collect", "--profile", "smoke"], "python -m kl_utils collect: error: the following arguments are required: --from"),
    (["run", "--profile", "smoke", "--arms", "baseline", "--seeds", "-1"], "argument --seeds: expected a whole number >= 0, got '-1'"),
    (["bench", "--steps", "0"], "python -m kl_utils bench: error: argument --steps: expected a whole number >= 1, got '0'"),
    (["gpu-check", "--profile", "paper", "--steps", "0"], "python -m kl_utils gpu-check: error: argument --steps"),
])
def test_bad_options_end_in_one_line_naming_the_verb(argv, message, capsys, monkeypatch):
    """Found by trying them: --workers 0 silently meant the profile's default, --across with an unknown
    profile printed an empty table, figures accepted --fresh and ignored it, usage lines said __main__.py."""
    monkeypatch.setattr(sys, "argv", ["__main__.py"])
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "__main__.py" not in err
    assert sys.argv == ["__main__.py"]


def test_claims_across_a_profile_without_claims(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path))
    assert cli.main(["claims", "--across", "smoke", "cpu"]) == 2
    assert f"{tmp_path / 'smoke' / 'claims.csv'} does not exist (python -m kl_utils claims --profile smoke)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["gpu-check", "--profile", "smoke"], "gpu-check needs a profile with model.pretrained"),
    (["claims", "--profile", "cpu-rich"], "no run records of cpu-rich (train them first"),
    (["report", "--profile", "cpu-rich"], "no run records of cpu-rich (train them first"),
])
def test_a_verb_that_cannot_run_on_a_profile_says_why_and_writes_nothing(argv, message, capsys, tmp_path, monkeypatch):
    """Found by trying them: gpu-check on a from-scratch profile ended in a ValueError traceback; claims and
    report on a profile without records wrote an empty claims.csv and REPORT.md."""
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path))
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.csv")) and not list(tmp_path.rglob("*.md"))


def test_plan_times_a_record_by_its_cpu_seconds_per_thread_where_it_has_them():
    """A run paused for an hour must not look an hour slower: CPU seconds per thread, else wall seconds."""
    old = {"timing": {"cpt_s": 3600.0, "it_s": 120.0}, "env": {"torch_threads": 1}}
    assert plan.stage_seconds(old) == {"cpt_s": 3600.0, "it_s": 120.0}
    new = {**old, "timing_cpu": {"cpt_s": 1200.0, "it_s": 100.0}, "env": {"torch_threads": 2}}
    assert plan.stage_seconds(new) == {"cpt_s": 600.0, "it_s": 50.0}

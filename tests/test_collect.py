"""`python -m kl_utils collect` (records from another checkout) and what a redraw refreshes besides
the profile's own notebooks (tools.reproduce.refresh_dependents)."""
from __future__ import annotations

import json
import shutil

import pytest

from kl_utils.core.paths import ROOT
from kl_utils.tools import collect, reproduce


def _record(run_id, commit="0" * 40, **extra):
    return {"run_id": run_id, "kind": "data", "env": {"git_commit": commit}, "metrics": {"test_em": 0.25}, **extra}


def _write(root, profile, rec, text=None):
    path = root / "results" / profile / "runs" / f"{rec['run_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else json.dumps(rec))
    return path


@pytest.fixture
def checkouts(tmp_path):
    here, other = tmp_path / "here", tmp_path / "other"
    _write(here, "smoke", _record("kept"))
    _write(other, "smoke", _record("kept"))
    _write(other, "smoke", _record("new-a"))
    _write(other, "smoke", _record("new-b"))
    return here, other


def test_collect_copies_new_records_and_keeps_identical_ones(checkouts):
    here, other = checkouts
    lines = []
    copied = collect.collect(other, "smoke", results_root=here / "results", figures_root=here / "figures",
                             redraw=False, log=lines.append)
    assert sorted(p.name for p in copied) == ["new-a.json", "new-b.json"]
    assert sorted(p.name for p in (here / "results" / "smoke" / "runs").iterdir()) == ["kept.json", "new-a.json", "new-b.json"]
    assert "2 new record(s), 1 already here (identical), of smoke" in lines[-1]
    assert not list((here / "results" / "smoke" / "runs").glob("*.tmp"))
    # a second collect finds nothing new
    assert collect.collect(other, "smoke", results_root=here / "results", figures_root=here / "figures",
                           redraw=False, log=lines.append) == []


@pytest.mark.parametrize("bad, message", [
    ("differs", "differs from"),
    ("dirty", "field env.git_commit is 'abc+dirty.123': made from uncommitted code"),
    ("not json", "line 1: not a JSON run record"),
    ("wrong id", "field run_id is 'other-run', not the file name 'bad'"),
])
def test_collect_refuses_a_bad_record_before_copying_anything(checkouts, bad, message):
    here, other = checkouts
    if bad == "differs":
        _write(other, "smoke", dict(_record("kept"), metrics={"test_em": 0.5}))
    elif bad == "dirty":
        _write(other, "smoke", _record("bad", commit="abc+dirty.123"))
    elif bad == "not json":
        _write(other, "smoke", _record("bad"), text="{oops")
    else:
        _write(other, "smoke", _record("other-run"), text=json.dumps(_record("other-run"))).rename(
            other / "results" / "smoke" / "runs" / "bad.json")
    with pytest.raises(collect.CollectError, match=message.replace("+", r"\+").replace("(", r"\(")):
        collect.collect(other, "smoke", results_root=here / "results", figures_root=here / "figures", redraw=False)
    assert sorted(p.name for p in (here / "results" / "smoke" / "runs").iterdir()) == ["kept.json"]  # nothing copied
    if bad == "dirty":
        assert collect.collect(other, "smoke", results_root=here / "results", figures_root=here / "figures",
                               redraw=False, allow_dirty=True, log=lambda *a: None)


def test_collect_names_a_folder_that_is_not_a_checkout(tmp_path):
    with pytest.raises(collect.CollectError, match="no results/ folder"):
        collect.collect(tmp_path, "smoke", results_root=tmp_path / "here" / "results", redraw=False)


def test_collect_is_a_verb_with_one_line_errors(tmp_path, capsys):
    from kl_utils import cli
    assert cli.main(["collect", "--from", str(tmp_path), "--profile", "smoke"]) == 1
    err = capsys.readouterr().err
    assert "no results/ folder" in err and "Traceback" not in err


def test_dependents_of_a_pair_and_of_a_profile_set_beside():
    from kl_utils.config.profiles import load_config
    deps = reproduce.dependents(*load_config("cpu-draw1"))
    assert set(deps["pairs"]) == {"cpu", "cpu-full", "cpu-base1", "cpu-draw2"}
    assert "cpu" in reproduce.dependents(*load_config("cpu-llm"))["beside"]
    assert reproduce.dependents(*load_config("smoke")) == {"pairs": [], "beside": []}


@pytest.mark.skipif(not (ROOT / "results" / "cpu-draw2" / "claims.csv").exists(), reason="needs the committed cpu pairs")
def test_a_record_added_to_one_pair_refreshes_the_other_pairs_claims(tmp_path):
    """The gap this closes: a new record of one pair changes every pair's random-effects columns; a
    redraw of that pair alone used to leave the others' claims.csv stale (the provenance test failed)."""
    results, figures = tmp_path / "results", tmp_path / "figures"
    for pair in ("cpu-full", "cpu", "cpu-base1", "cpu-draw1", "cpu-draw2"):
        shutil.copytree(ROOT / "results" / pair / "runs", results / pair / "runs")
        shutil.copy2(ROOT / "results" / pair / "claims.csv", results / pair / "claims.csv")
    # as if cpu-draw2's format seed 1 had not landed yet when the others' claims were written
    dropped = next((results / "cpu-draw2" / "runs").glob("format-s1-*.json"))
    dropped.unlink()
    from kl_utils.config.profiles import load_config
    changed = reproduce.refresh_dependents("cpu-draw2", load_config("cpu-draw2")[1], results_root=results,
                                           figures_root=figures, log=lambda *a: None)
    assert "results/cpu-draw1/claims.csv" in changed and "results/cpu-full/claims.csv" in changed
    # the cpu-llm profile is not in this design: nothing of it is written
    assert not (results / "cpu-llm").exists()
    # a second refresh finds everything up to date
    assert reproduce.refresh_dependents("cpu-draw2", load_config("cpu-draw2")[1], results_root=results,
                                        figures_root=figures, log=lambda *a: None) == []

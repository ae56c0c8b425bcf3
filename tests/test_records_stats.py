import json
import math

import pytest

from kl_utils.core import records
from kl_utils.analysis import stats


def test_run_record_has_provenance_and_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "runs_dir", lambda profile: tmp_path / profile / "runs")
    path = records.write_run_record("p", "r1", kind="arm", config={"a": 1}, seed=3, metrics={"em": 0.5},
                                    wall_time_s=1.23456)
    rec = json.loads(path.read_text())
    assert rec["config"] == {"a": 1} and rec["seed"] == 3 and rec["metrics"] == {"em": 0.5}
    assert rec["env"]["git_commit"] and rec["env"]["packages"]["torch"].startswith("2.13.0")
    assert rec["wall_time_s"] == 1.235
    # a crash while writing leaves neither a partial record nor a temporary file behind
    circular = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="[Cc]ircular"):
        records.write_run_record("p", "r2", kind="arm", config=circular, seed=0, metrics={}, wall_time_s=0)
    assert sorted(p.name for p in (tmp_path / "p" / "runs").iterdir()) == ["r1.json"]
    assert [r["run_id"] for r in records.load_run_records("p")] == ["r1"]
    assert records.load_run_records("p", kind="base") == []


def test_mean_ci():
    ci = stats.mean_ci([0.2, 0.4, 0.6])
    assert ci["mean"] == pytest.approx(0.4)
    assert ci["half_width"] == pytest.approx(4.303 * 0.2 / math.sqrt(3), rel=1e-4)
    assert math.isnan(stats.mean_ci([1.0])["half_width"])
    with pytest.raises(ValueError):
        stats.mean_ci([])


def test_paired_diff_uses_shared_seeds():
    d = stats.paired_diff_ci({0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.2, 1: 0.3, 2: 0.4, 3: 9.0})
    assert d["mean"] == pytest.approx(0.1) and d["seeds"] == [0, 1, 2] and d["half_width"] == pytest.approx(0.0, abs=1e-12)


def test_git_commit_names_the_uncommitted_diff(tmp_path, monkeypatch):
    """A dirty tree is recorded as '<sha>+dirty.<hash of git diff HEAD>': the same change gives the
    same string, another change another one, untracked files do not count."""
    import hashlib
    import subprocess
    git = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True).stdout
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "root")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a")
    monkeypatch.setattr(records, "ROOT", tmp_path)
    head = git("rev-parse", "HEAD").decode().strip()
    assert records.git_commit() == head
    (tmp_path / "untracked.txt").write_text("x")
    assert records.git_commit() == head
    (tmp_path / "a.txt").write_text("two\n")
    first = records.git_commit()
    assert first == f"{head}+dirty.{hashlib.sha256(git('diff', 'HEAD', '--no-color', '--no-ext-diff')).hexdigest()[:12]}"
    assert records.git_commit() == first
    (tmp_path / "a.txt").write_text("three\n")
    assert records.git_commit().startswith(f"{head}+dirty.") and records.git_commit() != first
    monkeypatch.setattr(records, "ROOT", tmp_path / "nowhere")
    assert records.git_commit() == "unknown"


def test_records_name_the_commit_pinned_when_work_started(monkeypatch):
    """A record written hours after its run started names the commit of the code the process loaded."""
    from kl_utils.core import records
    monkeypatch.setattr(records, "_PINNED_COMMIT", None)
    assert records.pin_commit("abc123") == "abc123" and records.pin_commit("later") == "abc123"
    assert records.environment()["git_commit"] == "abc123"
    monkeypatch.setattr(records, "_PINNED_COMMIT", None)
    monkeypatch.setattr(records, "git_commit", lambda: "head-now")
    assert records.environment()["git_commit"] == "head-now"  # nothing pinned: HEAD when written

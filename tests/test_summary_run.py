import math

import pytest

from kl_utils.core import paths
from kl_utils.protocol import run
from kl_utils.analysis import summary


def _rec(arm, seed, em):
    return {"run_id": f"{arm}-s{seed}", "arm": arm, "seed": seed, "metrics": {"test_em": em}}


def test_arm_table_paired_differences_and_verdicts():
    recs = [_rec("baseline", s, v) for s, v in enumerate([0.20, 0.22, 0.21])]
    recs += [_rec("sam", s, v) for s, v in enumerate([0.25, 0.26, 0.27])]
    recs += [_rec("worse", s, v) for s, v in enumerate([0.10, 0.11, 0.12])]
    recs += [_rec("noisy", s, v) for s, v in enumerate([0.30, 0.10, 0.21])]
    rows = {r["arm"]: r for r in summary.arm_table(recs)}
    assert list(rows)[0] == "baseline" and "diff" not in rows["baseline"]
    assert rows["sam"]["diff"] == pytest.approx(0.05) and rows["sam"]["verdict"] == "supported"
    assert rows["worse"]["verdict"] == "contradicted"
    assert rows["noisy"]["verdict"] == "inconclusive"
    assert rows["sam"]["mean"] == pytest.approx(0.26)
    text = summary.format_table(list(rows.values()), "test_em")
    assert "| sam | 3 | 0.260" in text and "+0.050" in text


def test_duplicate_arm_seed_is_an_error():
    with pytest.raises(ValueError, match="two records"):
        summary.by_arm([_rec("a", 0, 0.1), _rec("a", 0, 0.2)], "test_em")


def test_single_seed_is_inconclusive():
    rows = summary.arm_table([_rec("baseline", 0, 0.2), _rec("sam", 0, 0.3)])
    assert rows[1]["verdict"] == "inconclusive" and math.isnan(rows[1]["diff_low"])


def test_run_cli_rejects_unknown_arm(capsys):
    with pytest.raises(SystemExit):
        run.main(["--profile", "smoke", "--arms", "nope"])
    assert "unknown arm 'nope'" in capsys.readouterr().err


def test_run_cli_runs_then_skips(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    from kl_utils.config import profiles as config
    cfg = config.read_profile("smoke")
    cfg["data"] = {**cfg["data"], "n_base": 20, "n_new": 20}
    for stage in ("base", "cpt", "it"):
        cfg[stage] = {**cfg[stage], "epochs": 1}
    monkeypatch.setattr(run, "load_config", lambda profile: ("toy", cfg))
    monkeypatch.delenv("KL_RESULTS_ROOT", raising=False)
    run.main(["--arms", "baseline", "--seeds", "0", "--workers", "1"])
    capsys.readouterr()
    run.main(["--arms", "baseline", "--seeds", "0", "--workers", "1"])
    assert "1 of 1 runs already have records; 0 to run" in capsys.readouterr().out

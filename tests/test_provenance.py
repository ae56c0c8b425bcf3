"""Provenance: every committed table row and figure has run records behind it, of the profile's
current config, and the README's headline numbers are the cpu report's."""
import json

import pytest

from kl_utils.core import paths, records
from kl_utils.reporting import claims, plots, report
from kl_utils.config.profiles import read_profile

ROOT = paths.ROOT


@pytest.mark.skipif(not (ROOT / "results" / "cpu" / "claims.csv").exists(), reason="no committed cpu results")
def test_committed_cpu_results_have_records_behind_them():
    problems = report.provenance_problems("cpu", read_profile("cpu"), doc=ROOT / "README.md")
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not (ROOT / "results" / "cpu-full" / "claims.csv").exists(), reason="no committed cpu-full results")
def test_committed_controls_have_records_behind_them():
    """The controls notebook draws from cpu-full's records (the cpu report quotes them; README quotes its
    near-convergence rows)."""
    problems = report.provenance_problems("cpu-full", read_profile("cpu-full"), doc=ROOT / "README.md")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("pair", [p for p in read_profile("cpu").get("pairs", []) if p not in ("cpu", "cpu-full")])
def test_committed_claims_of_every_pair_match_the_records(pair):
    """Each (base model, data draw) pair's claims.csv pools over all the pairs: a new record in any of
    them changes every pair's random-effects columns (python -m kl_utils claims --profile <pair>)."""
    if not (ROOT / "results" / pair / "claims.csv").exists():
        pytest.skip(f"no committed {pair} results")
    problems = report.provenance_problems(pair, read_profile(pair))
    assert not problems, "\n".join(problems)


def _arm(profile, cfg, arm, seed, em):
    from kl_utils.protocol import experiment
    _, spec, run_id = experiment.arm_spec(cfg, arm, seed)
    records.write_run_record(profile, run_id, kind="arm", config=spec, seed=seed, metrics={"test_em": em, "valid_em": em},
                             wall_time_s=1.0, extra={"arm": arm, "optimizer_steps": {"cpt": 1}})
    return run_id


def test_provenance_check_catches_missing_and_stale_records(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.delenv("KL_RESULTS_ROOT", raising=False)
    cfg = read_profile("smoke")
    ids = [_arm("toy", cfg, arm, s, 0.1 * s + (arm == "sam") * 0.05) for arm in ("baseline", "sam") for s in range(3)]
    claims.write("toy", cfg)
    fig = plt.figure()
    plots.savefig(fig, "toy", "ok", run_ids=ids)
    plots.savefig(fig, "toy", "data", source="the generated people of the profile's data config")
    assert report.provenance_problems("toy", cfg) == []
    # a figure without records, a record that disappeared, and a profile whose config moved on
    plots.savefig(fig, "toy", "orphan")
    (tmp_path / "figures" / "toy" / "stray.png").write_bytes(b"")
    (tmp_path / "results" / "toy" / "runs" / f"{ids[0]}.json").unlink()
    problems = "\n".join(report.provenance_problems("toy", cfg))
    assert "figure orphan names no run records (and no data source)" in problems and "stray.png has no manifest entry" in problems
    assert f"run record {ids[0]} does not exist" in problems and "differs from its rebuild" in problems
    cfg2 = dict(cfg, cpt={**cfg["cpt"], "lr": 0.5})
    assert "does not match the profile's current config" in "\n".join(report.provenance_problems("toy", cfg2))


@pytest.mark.skipif(not (ROOT / "results" / "cpu-llm" / "claims.csv").exists(), reason="no committed cpu-llm results")
def test_committed_cpu_llm_results_and_doc_blocks_have_records_behind_them():
    problems = report.provenance_problems("cpu-llm", read_profile("cpu-llm"), doc=ROOT / "README.md")
    assert not problems, "\n".join(problems)
    # docs/cpu-llm.md's status table of every grid cell (per-seed block) is written from the records too
    assert "<!-- per-seed cpu-llm:start -->" in (ROOT / "docs" / "cpu-llm.md").read_text()
    problems = report.provenance_problems("cpu-llm", read_profile("cpu-llm"), doc=ROOT / "docs" / "cpu-llm.md")
    assert not problems, "\n".join(problems)


def test_per_seed_block_shows_every_grid_cell(monkeypatch, tmp_path):
    monkeypatch.setenv("KL_RESULTS_ROOT", str(tmp_path))
    cfg = dict(read_profile("smoke"), grids={"main": [{"arms": ["baseline", "sam"], "seeds": [0, 1]}],
                                             "sweep": [{"arms": ["baseline", "sam_rho0.1"], "seeds": [0]}]})
    _arm("toy", cfg, "baseline", 0, 0.25)
    _arm("toy", cfg, "sam", 1, 0.5)
    lines = report.per_seed_markdown("toy", cfg).splitlines()
    assert lines[0] == "| grid | arm | CPT updates | CPT gradients | seed 0 | seed 1 |"
    rows = {line.split(" | ")[1]: line for line in lines[2:]}
    assert list(rows) == ["`baseline`", "`sam`", "`sam_rho0.1`"]  # baseline under main (more seeds), not the sweep
    assert rows["`baseline`"].startswith("| main |") and "| 0.250 |" in rows["`baseline`"] and rows["`baseline`"].endswith("| — |")
    assert rows["`sam`"].endswith("| — | 0.500 |")
    assert rows["`sam_rho0.1`"] == "| sweep | `sam_rho0.1` | — | — | — |  |"
    # a grid of extra draws for some arms: their rows stay in their home grid and show the new seed as to run
    cfg["grids"]["more_draws"] = [{"arms": ["baseline"], "seeds": [2]}]
    rows = {line.split(" | ")[1]: line for line in report.per_seed_markdown("toy", cfg).splitlines()[2:]}
    assert list(rows) == ["`baseline`", "`sam`", "`sam_rho0.1`"]
    assert rows["`baseline`"].startswith("| main |") and rows["`baseline`"].endswith("| 0.250 | — | — |")
    assert rows["`sam`"].endswith("| — | 0.500 |  |") and rows["`sam_rho0.1`"].endswith("| — |  |  |")


def test_doc_blocks_of_a_profile_are_refreshed_and_checked(monkeypatch, tmp_path):
    """A profile's README blocks (headline, and beside the profiles of `beside:`) sit between markers
    naming it; `report --blocks` rewrites only those, and a stale block is a provenance problem."""
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.delenv("KL_RESULTS_ROOT", raising=False)
    cfg = read_profile("smoke")
    for prof in ("toy", "other"):
        for arm in ("baseline", "sam"):
            for s in range(3):
                _arm(prof, cfg, arm, s, 0.1 * s + (arm == "sam") * (0.05 if prof == "toy" else -0.02))
        claims.write(prof, cfg)
    cfg = dict(cfg, beside=["other"])
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- headline:start -->\ncpu's, untouched\n<!-- headline:end -->\n"
                      "<!-- headline toy:start -->\n<!-- headline toy:end -->\nmiddle\n"
                      "<!-- beside toy:start -->\n<!-- beside toy:end -->\nend\n")
    assert any("block <!-- headline toy:start --> differs" in p for p in report.provenance_problems("toy", cfg, doc=readme))
    assert report.update_blocks("toy", cfg, readme) and not report.update_blocks("toy", cfg, readme)
    text = readme.read_text()
    assert "cpu's, untouched" in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "| + SAM | 0.150 ± " in text and "| `toy` | `other` | same verdict |" in text
    assert report.provenance_problems("toy", cfg, doc=readme) == []


def test_a_figure_across_pairs_may_name_the_records_of_the_other_pairs(monkeypatch, tmp_path):
    """Notebook 06's near-convergence figure is saved under cpu-full but draws every pair's records."""
    import matplotlib.pyplot as plt
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.delenv("KL_RESULTS_ROOT", raising=False)
    cfg = dict(read_profile("smoke"), pairs=["toy", "toy2"])
    from kl_utils.config import profiles
    for module in (report, profiles):  # report's own import, and the one claims' pairs use
        monkeypatch.setattr(module, "load_config", lambda name: (name, cfg))
    own = [_arm("toy", cfg, "baseline", s, 0.1) for s in range(2)]
    other = [_arm("toy2", dict(cfg, data={**cfg["data"], "seed": 7}), "baseline", s, 0.2) for s in range(2)]
    claims.write("toy", cfg)
    fig = plt.figure()
    plots.savefig(fig, "toy", "across", run_ids=own + other)
    problems = report.provenance_problems("toy", cfg)
    assert not any("does not exist" in p for p in problems), problems
    plots.savefig(fig, "toy", "across", run_ids=own + ["baseline-s9-nowhere"])
    assert "run record baseline-s9-nowhere does not exist" in "\n".join(report.provenance_problems("toy", cfg))
    plt.close(fig)

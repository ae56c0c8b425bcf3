"""Figures and tables of the main experiments and controls, from synthetic run records."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from kl_utils.config import arms  # noqa: E402
from kl_utils.core.spec import merge  # noqa: E402
from kl_utils.reporting import figures  # noqa: E402


def _rec(arm, seed, em, epochs=12, sam=False, cpt_steps=228, it_steps=116):
    cpt = {"epochs": epochs, "lr": 2e-3, **({"optimizer": "sam", "rho": 0.05} if sam else {"optimizer": "adamw"})}
    return {"arm": arm, "seed": seed, "run_id": f"{arm}-s{seed}", "wall_time_s": 1.0,
            "config": {"cpt": cpt, "it": {"optimizer": "adamw"}, "budget": "epochs"},
            "optimizer_steps": {"cpt": cpt_steps, "it": it_steps},
            "metrics": {"test_em": em, "valid_em": em, "train_em": 1.0, "test_em_before_it": 0.0}}


@pytest.fixture
def frame():
    recs = []
    for s in range(3):
        recs += [_rec("baseline", s, 0.13 + s / 100), _rec("baseline_2x", s, 0.25, epochs=24, cpt_steps=456),
                 _rec("baseline_ep48", s, 0.33, epochs=48, cpt_steps=912),
                 _rec("sam_ep24", s, 0.30, epochs=24, sam=True, cpt_steps=456),
                 _rec("it_format", s, 0.10, it_steps=232)]
    return figures.arm_frame(recs)


def test_arm_frame_counts_sam_gradients_per_cpt_step(frame):
    row = frame[frame.arm == "sam_ep24"].iloc[0]
    assert row.cpt_steps == 456 and row.cpt_grad_evals == 912 and row.grad_evals == 912 + 116
    assert frame[frame.arm == "baseline_ep48"].cpt_epochs.iloc[0] == 48


def test_budget_table_keeps_the_given_order_and_skips_absent_arms(frame):
    table = figures.budget_table(frame, ["baseline_ep48", "not_run", "baseline", "sam_ep24"])
    assert list(table.index) == ["baseline_ep48", "baseline", "sam_ep24"]
    assert table.loc["baseline", "held-out EM"] == pytest.approx(0.14)
    assert table.loc["baseline", "± 95% CI"] > 0 and table.loc["sam_ep24", "CPT grad evals"] == 912


def test_saturation_and_it_side_figures(frame):
    fig = figures.saturation_figure(frame)
    left, right = fig.axes[:2]
    curve = left.lines[0].get_xdata()
    assert list(curve) == [228, 456, 912]  # AdamW at 12, 24, 48 epochs, by optimizer steps
    assert right.get_xscale() == "log"
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any("+SAM, 24 CPT epochs" in t for t in labels)
    plt.close(fig)
    fig = figures.it_side_figure(frame)
    assert len(fig.axes) == 2
    plt.close(fig)


def test_lr_tuning_table_marks_the_variant_best_on_valid_not_test():
    recs = []
    for s in range(3):
        recs += [_rec("sam", s, 0.20, sam=True), _rec("sam@lrx2.0", s, 0.10, sam=True),
                 _rec("sam@lrx0.5", s, 0.90, sam=True), _rec("baseline", s, 0.2)]
        recs[-3]["metrics"]["valid_em"] = 0.5   # lrx2.0: best on valid, worse on test
        recs[-2]["metrics"]["valid_em"] = 0.05  # lrx0.5: best on test, worst on valid
    table = figures.lr_tuning_table(figures.arm_frame(recs), ["sam", "format_steps"])
    assert list(table["lr factor"]) == [0.5, 1.0, 2.0] and set(table.arm) == {"sam"}
    assert list(table.chosen) == [False, False, True] and table["seeds"].eq(3).all()
    # the table's choice is the claims rows' choice (one rule: claims.best_by_valid)
    from kl_utils.reporting import claims
    chosen = table[table.chosen].iloc[0]
    assert claims.best_variant_by_valid(recs, "sam") == f"sam@lrx{chosen['lr factor']}"


def test_ablation_frame_and_figures_from_ablation_arms():
    generated = arms.ablation_arms({"rho": [0.1, 0.02], "k": [2, 1], "families": ["heading"], "rho_k": True})
    recs = [_rec(a, s, 0.1 + s / 50) for s in range(2) for a in
            ("sam_rho0.1", "sam_rho0.02", "format_k2_steps", "format_heading_steps",
             "format_sam_k2_rho0.1_steps", "format_sam_k1_rho0.1_steps", "baseline", "format_sam_steps")]
    for r in recs:  # a record's config holds its arm's settings (kl_utils.config.arms.arm_spec)
        if r["arm"] in generated:
            r["config"] = merge(r["config"], generated[r["arm"]].overrides)
    abl = figures.ablation_frame(figures.arm_frame(recs))
    assert set(abl.factor) == {"rho", "k", "family", "rho_k"} and len(abl) == 12
    assert set(abl[abl.factor == "rho_k"].k) == {1, 2} and set(abl[abl.factor == "family"].level) == {"heading"}
    for fig in (figures.ablation_figure(abl, baseline=0.1), figures.rho_k_figure(abl), figures.rho_k_figure(abl, baseline=0.1)):
        assert fig is not None
        plt.close(fig)


def test_it_curves_frame_and_figure():
    def rec(arm, seed, per_epoch=True):
        r = _rec(arm, seed, 0.2)
        epochs = [{"epoch": e, "train_em": e / 4, "test_em": e / 16} for e in (1, 2, 3)]
        return {**r, "history": {"it": {"epochs": epochs}} if per_epoch else {}}
    recs = [rec(a, s) for a in ("baseline", "sam", "sam_every4") for s in range(2)] + [rec("format_steps", 0, False)]
    ep = figures.it_curves_frame(recs)
    assert set(ep.arm) == {"baseline", "sam"} and len(ep) == 2 * 2 * 3 * 2  # arms x seeds x epochs x splits
    assert ep[(ep.arm == "sam") & (ep.split == "train") & (ep["IT epoch"] == 3)]["exact match"].tolist() == [0.75, 0.75]
    fig = figures.it_curves_figure(ep)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "IT epoch" and ax.get_ylim() == (0, 1) and ax.get_title() == "QA exact match during IT"
    assert len([ln for ln in ax.get_lines() if len(ln.get_xdata())]) == 2 * 2  # arm x split (mean over seeds)
    assert figures.it_curves_frame([rec("baseline", 0, False)]).empty
    plt.close(fig)


def test_near_convergence_figure_draws_one_line_per_pair_over_the_arms_present():
    recs = {}
    for pair, shift in (("pA", 0.0), ("pB", 0.05)):
        recs[(pair, "base", 0)] = [_rec(arm, s, 0.4 + shift + s / 100, epochs=ep, sam="sam" in arm)
                                   for s in (0, 1) for arm, ep in (("baseline_ep96", 96), ("sam_ep96", 96),
                                                                   ("format_ep48", 48), ("baseline", 12))]
    df = figures.pairs_frame(recs, figures.NEAR_CONVERGENCE)
    assert set(df.pair) == {"pA", "pB"} and "baseline" not in set(df.arm) and len(df) == 12
    fig = figures.near_convergence_figure(df)
    ax = fig.axes[0]
    lines = [ln for ln in ax.lines if len(ln.get_xdata()) == 3]  # one mean line per pair over the 3 arms present
    assert len(lines) == 2
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["AdamW", "+format", "+SAM"]
    assert lines[1].get_ydata()[0] == pytest.approx(0.455)  # pB's AdamW-at-96 mean over seeds 0.45, 0.46
    plt.close(fig)
    assert figures.near_convergence_figure(figures.pairs_frame({}, figures.NEAR_CONVERGENCE)) is None


def test_across_figure_draws_the_pooled_estimate_under_the_pairs():
    import pandas as pd
    long = pd.DataFrame([{"claim": "C4", "comparison": "SAM vs AdamW", "budget": "steps", "profile": p, "diff": d,
                          "ci_low": d - 0.02, "ci_high": d + 0.02} for p, d in (("pA", 0.01), ("pB", 0.05))])
    pooled = pd.DataFrame([{"claim": "C4", "comparison": "SAM vs AdamW", "budget": "steps", "re_diff": "0.03",
                            "re_ci_low": "-0.2", "re_ci_high": "0.26"},
                           {"claim": "C9", "comparison": "not drawn", "budget": "steps", "re_diff": "0.5",
                            "re_ci_low": "0.4", "re_ci_high": "0.6"}])
    fig = figures.across_figure(long, pooled=pooled)
    ax = fig.axes[0]
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[-1].startswith("pooled over pairs") and len(labels) == 3
    fig.canvas.draw()  # the legend sits under everything the axes draw (ticks and x label included)
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).y1 <= ax.get_tightbbox(renderer).y0
    diamond = [ln for ln in ax.lines if ln.get_marker() == "D"]
    assert len(diamond) == 1 and list(diamond[0].get_xdata()) == [pytest.approx(0.03)]
    plt.close(fig)


def test_near_convergence_arms_are_the_pairs_converged_grids():
    """figures.NEAR_CONVERGENCE (the arms the near-convergence figures and README block show) and the
    `converged` grids that train them are written in two places: they must name the same arms."""
    from kl_utils.config.profiles import read_profile
    for pair in ("cpu-draw1", "cpu-draw2"):
        grid = {a for cell in read_profile(pair)["grids"]["converged"] for a in cell["arms"]}
        assert grid == set(figures.NEAR_CONVERGENCE), pair
    full = read_profile("cpu-full")["grids"]
    assert set(figures.NEAR_CONVERGENCE) <= {a for g in ("converged", "saturation") for cell in full[g] for a in cell["arms"]}

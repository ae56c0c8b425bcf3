"""Static checks of the notebooks (nbval executes them separately, in the smoke profile)."""
import re

import nbformat
import pytest

from kl_utils.tools.notebooks import publish
from kl_utils.tools.reproduce import USER_NOTEBOOKS
from kl_utils.core.paths import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Notebooks are thin: a cell calls kl_utils (kl_utils.reporting.figures / figures_analysis draw, claims and
# stats make the tables) and shows or saves what comes back; no cell defines functions or draws.
MAX_CELL_LINES = 25
DRAWING = re.compile(r"\bsns\.|import seaborn|plt\.(?!show\(\))\w+|\bax(es)?\b[.\[]|^\s*(def|class) ", re.M)


def test_notebooks_exist_in_sequence():
    assert len(NOTEBOOKS) >= 2
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == sorted(set(numbers))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    if path.name not in USER_NOTEBOOKS:  # a study notebook: papermill gives it a profile
        assert "profile = None" in tagged[0].source and "config = None" in tagged[0].source
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells), \
        "committed notebooks must not carry papermill's injected parameters (nbval would run that profile)"
    assert nb.metadata["kernelspec"]["name"] == "kl-study"
    assert set(nb.metadata.get("papermill", {})) <= {"parameters", "version"}, "run paths and times committed"
    for cell in nb.cells:
        assert not {"execution", "papermill"} & set(cell.metadata), "per-cell timestamps committed (tools.notebooks.publish)"
        if cell.cell_type == "code":
            assert not any(o.get("output_type") == "error" for o in cell.get("outputs", [])), "error output committed"
            assert len(cell.source.splitlines()) <= MAX_CELL_LINES, "logic belongs in kl_utils, not in a long notebook cell"
            drawing = DRAWING.search(cell.source)
            assert drawing is None, f"figure code belongs in kl_utils (figures, figures_analysis): {drawing.group(0)!r} in\n{cell.source}"
    assert nb.cells[0].cell_type == "markdown"


def test_publish_strips_injected_parameters(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("profile = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("profile = 'cpu'", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_code_cell("print(profile)")]
    (tmp_path / "scratch").mkdir()
    (tmp_path / "out").mkdir()
    nbformat.write(nb, tmp_path / "scratch" / "01_x.ipynb")
    publish(tmp_path / "scratch", tmp_path / "out")
    out = nbformat.read(tmp_path / "out" / "01_x.ipynb", as_version=4)
    assert [c.source for c in out.cells] == ["profile = None", "print(profile)"]


def test_publishing_the_same_results_twice_gives_the_same_bytes(tmp_path):
    """Per-cell timestamps and the run's paths and times are dropped: a redraw that changes no result
    changes no committed notebook."""
    def executed(start):
        nb = nbformat.v4.new_notebook()
        nb.metadata["papermill"] = {"parameters": {"profile": "cpu"}, "version": "2.7.0", "start_time": start,
                                    "duration": 9.0, "input_path": "/somewhere/notebooks/01_x.ipynb"}
        nb.cells = [nbformat.v4.new_code_cell("print(1)", id="print-one", metadata={
            "execution": {"iopub.execute_input": start}, "papermill": {"start_time": start, "status": "completed"}, "tags": []})]
        return nb
    for i, start in enumerate(("2026-12-02T06:24:47Z", "2026-12-03T10:00:00Z")):
        (tmp_path / f"s{i}").mkdir()
        (tmp_path / f"o{i}").mkdir()
        nbformat.write(executed(start), tmp_path / f"s{i}" / "01_x.ipynb")
        publish(tmp_path / f"s{i}", tmp_path / f"o{i}")
    first, second = ((tmp_path / f"o{i}" / "01_x.ipynb").read_bytes() for i in (0, 1))
    assert first == second and b"2026-12" not in first and b"/somewhere" not in first
    assert nbformat.read(tmp_path / "o0" / "01_x.ipynb", as_version=4).metadata["papermill"] == \
        {"parameters": {"profile": "cpu"}, "version": "2.7.0"}

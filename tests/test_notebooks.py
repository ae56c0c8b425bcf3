"""Static checks of the notebooks (nbval executes them separately, in the smoke profile)."""
import re

import nbformat
import pytest

from kl_utils.tools.notebooks import publish
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
    assert "profile = None" in tagged[0].source and "config = None" in tagged[0].source
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells), \
        "committed notebooks must not carry papermill's injected parameters (nbval would run that profile)"
    assert nb.metadata["kernelspec"]["name"] == "kl-study"
    for cell in nb.cells:
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

"""docs/methods.md runs as written: its python blocks in order in one namespace, its bash commands, and the
output it shows (a plain ``` block after a bash block) is what the command prints."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from kl_utils.core.paths import ROOT
from kl_utils.training import pretrained

DOC = ROOT / "docs" / "methods.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks():
    return [(lang, body) for lang, body in BLOCK.findall(DOC.read_text(encoding="utf-8"))]


def test_the_doc_has_the_three_entry_points():
    text = DOC.read_text(encoding="utf-8")
    for entry in ("format_batch", "python -m kl_utils augment", "SAMTrainer", "SAMTrainerMixin", "sam_update"):
        assert entry in text, entry
    assert {lang for lang, _ in blocks()} == {"python", "bash", ""}


def test_every_bash_block_runs_and_prints_what_the_doc_shows(tmp_path):
    found = blocks()
    runs = 0
    for i, (lang, body) in enumerate(found):
        if lang != "bash":
            continue
        for line in body.strip().splitlines():
            argv = shlex.split(line)
            assert argv[:3] == ["python", "-m", "kl_utils"], f"only kl_utils commands in the doc: {line}"
            argv = [sys.executable, "-m", "kl_utils"] + [str(ROOT / a) if "/" in a and (ROOT / a).exists() else a
                                                        for a in argv[3:]]
            res = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                 env={**os.environ, "TQDM_DISABLE": "1"})
            assert res.returncode == 0, res.stderr
            runs += 1
            if i + 1 < len(found) and found[i + 1][0] == "":
                shown = found[i + 1][1].strip()
                assert shown in res.stdout, f"the doc shows\n{shown}\nthe command printed\n{res.stdout}"
    assert runs >= 1


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_python_block_runs_in_order(tmp_path, monkeypatch):
    """One namespace, as a reader pasting the blocks one after the other would have, on the packaged model."""
    try:
        pretrained.resolve("smollm2-135m")  # converted once per machine, before the clock of the blocks
    except pretrained.PackagedModelMissing as err:
        pytest.skip(str(err))
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__methods_doc__"}
    code = [body for lang, body in blocks() if lang == "python"]
    assert len(code) >= 4
    for n, body in enumerate(code):
        try:
            exec(compile(body, f"{DOC}:python block {n + 1}", "exec"), namespace)
        except Exception as e:  # name the block in the failure
            raise AssertionError(f"docs/methods.md python block {n + 1} failed: {type(e).__name__}: {e}") from e
    assert namespace["trainer"].state.global_step == 2

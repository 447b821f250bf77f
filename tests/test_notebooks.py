"""The example notebooks (examples/*.ipynb, issue 24): stored clean, and executed as a user would run them.

The quick test checks what is stored: no outputs, no execution counts, no widget state, and the first cell
the one that installs the package only where it is missing. The slow ones execute each notebook with
nbclient on the ``python3`` kernel (ipykernel's, started with this interpreter) in a temporary folder,
everything written under ``tmp_path`` (``LIGHTNING_BRATS_EXAMPLE_OUT``), and check what it printed and wrote.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

EXAMPLES = REPO / "examples"
NOTEBOOKS = ["01_quickstart.ipynb", "02_real_data.ipynb", "03_evaluate_and_compare.ipynb"]
#: Per-notebook execution limit (each runs in about 40-60 s on a loaded 2-core CPU).
TIMEOUT_S = 300


def test_every_notebook_is_stored_without_outputs_and_opens_with_the_install_cell():
    stored = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))
    assert stored == NOTEBOOKS, f"examples/ holds {stored}; add a new notebook to NOTEBOOKS (and a test running it)"
    for name in stored:
        notebook = json.loads((EXAMPLES / name).read_text())
        assert notebook["nbformat"] == 4, name
        assert "widgets" not in notebook["metadata"], f"{name}: widget state stored (clear it before committing)"
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        for cell in code:
            assert cell["outputs"] == [] and cell["execution_count"] is None and "execution" not in cell["metadata"], (
                f"{name}: a cell is stored with outputs or an execution count; clear them "
                "(Jupyter: Edit > Clear Outputs of All Cells, or nbstripout) before committing")
        first = "".join(notebook["cells"][0]["source"])
        assert notebook["cells"][0]["cell_type"] == "code", f"{name}: the first cell must be the install cell"
        assert 'importlib.util.find_spec("lightning_brats") is None' in first and "pip" in first, (name, first)
        # the install cell is the only one that installs; the note on git checkouts names no made-up URL
        assert not any("pip" in "".join(c["source"]) for c in code[1:]), name
        assert "<your clone URL>" in "".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown")


@pytest.mark.slow
def test_the_python3_kernel_is_this_interpreter():
    """nbclient's ``python3`` kernel (ipykernel's spec, argv ``python -m ipykernel_launcher``) runs this
    interpreter, whatever ``python`` is on PATH: jupyter_client puts ``sys.executable`` in place of it."""
    import sys

    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    NotebookClient(notebook, timeout=60, kernel_name="python3").execute()
    assert notebook.cells[0].outputs[0]["text"].strip() == sys.executable


def _execute(name: str, tmp_path: Path, env: dict[str, str]):
    """Run examples/<name> top to bottom (cwd: a temporary folder); returns the executed notebook.

    Fails naming the cell and its error when one raises (nbclient's CellExecutionError)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert not any(p for p in cwd.iterdir()), f"{name} wrote into its working folder: {list(cwd.iterdir())}"
    return notebook


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream" and o.get("name") == "stdout")


def _code_cells(notebook) -> list:
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert all(c.execution_count is not None for c in cells)
    return cells


def _images(cells) -> int:
    return sum("image/png" in o.get("data", {}) for c in cells for o in c.outputs)


def _env(out: Path, **extra: str) -> dict[str, str]:
    return {"LIGHTNING_BRATS_EXAMPLE_OUT": str(out), "WANDB_MODE": "offline", **extra}


@pytest.mark.slow
def test_quickstart_notebook_trains_predicts_shows_and_scores(tmp_path):
    out = tmp_path / "out"
    cells = _code_cells(_execute("01_quickstart.ipynb", tmp_path, _env(out)))
    match = re.search(r"Dice \(mean of WT, TC, ET\) of (\S+): ([0-9.]+)", _stdout(cells[-1]))
    assert match, _stdout(cells[-1])
    assert 0.0 <= float(match.group(2)) <= 1.0
    # curves.png, the in-memory prediction's figure and eval's picture of the validation case, inline
    assert _images(cells) >= 3
    run = next((out / "logs" / "train" / "runs").iterdir())
    assert (run / "curves.png").is_file() and (run / "csv" / "metrics.csv").is_file()
    assert list((out / "logs" / "eval" / "runs").glob(f"*/pictures/{match.group(1)}.png"))


@pytest.mark.slow
@pytest.mark.real_data
def test_real_data_notebook_runs_the_cpu_preset_on_a_few_real_cases(brats2018_root, tmp_path):
    out = tmp_path / "out"
    env = _env(out, LIGHTNING_BRATS_EXAMPLE_ROOT=str(brats2018_root), LIGHTNING_BRATS_EXAMPLE_STEPS="2",
               LIGHTNING_BRATS_EXAMPLE_CASES="2")
    cells = _code_cells(_execute("02_real_data.ipynb", tmp_path, env))
    match = re.search(r"WT ([0-9.]+), TC ([0-9.]+), ET ([0-9.]+)", _stdout(cells[-1]))
    assert match and all(0.0 <= float(v) <= 1.0 for v in match.groups()), _stdout(cells[-1])
    (run,) = (out / "logs" / "brats_cpu" / "runs").iterdir()
    import torch

    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)["global_step"] == 2
    # two cases linked, not copied; the real data untouched
    linked = sorted((out / "cases").iterdir())
    assert len(linked) == 2 and all(f.is_symlink() for case in linked for f in case.iterdir())
    assert _images(cells) >= 2


@pytest.mark.slow
def test_compare_notebook_gives_a_p_value_lesion_wise_scores_and_an_onnx_file(tmp_path):
    out = tmp_path / "out"
    cells = _code_cells(_execute("03_evaluate_and_compare.ipynb", tmp_path, _env(out)))
    text = "".join(_stdout(c) for c in cells)
    p_value = re.search(r"Wilcoxon p \(Dice WT, B - A, (\d+) cases\): ([0-9.]+)", text)
    assert p_value and int(p_value.group(1)) == 4 and 0.0 < float(p_value.group(2)) <= 1.0, text[-2000:]
    assert "lesionwise_dice_wt" in text
    import onnx

    model = onnx.load(str(out / "model_B.onnx"))
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props["input"]["channels"] == ["flair", "t1", "t1ce", "t2"] and props["output"]["channels"] == ["wt", "tc", "et"]
    assert (out / "model_B.onnx.json").is_file()
    assert re.search(r"labels from the ONNX file: \[0(, [124])*\]", text), text[-2000:]
    for name in ("paired.csv", "ranking.csv", "differences.png"):
        assert (out / "compare" / name).is_file()
    assert _images(cells) >= 2  # the box plot and the differences picture

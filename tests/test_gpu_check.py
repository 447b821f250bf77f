"""experiments/gpu/gpu_check.py: the one-go GPU check runs end to end on a CPU with ``--tiny`` (slow), reads
both versions of StepTimer's step_times.json, and turns a failing, hanging or unstarted step into a row
while going on to the next. No timings are asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "gpu" / "gpu_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.slow  # five train.py / predict.py / plain-loop subprocesses
def test_tiny_check_on_the_cpu_prints_its_table(tmp_path):
    """One row of each kind (main job, predict with and without TTA, plain-loop ceiling, benchmark) on
    tiny phantoms: exit status 0, the table printed with those rows and figures from each run's files."""
    out = tmp_path / "check"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--experiments", "brats_nvidia", "--aug", "cpu", "--workers", "0",
         "--variants", "channels_last", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    names = ["main: train.py trainer=cpu logger=csv", "predict TTA on", "predict TTA off",
             "ceiling brats_nvidia (plain loop)", "bench brats_nvidia aug=cpu w=0", "bench brats_nvidia channels_last w=0"]
    table_lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table_lines[0].startswith("| step | exit | wall s | val Dice |")
    assert [line.split(" | ")[0][2:] for line in table_lines[1:]] == names
    assert (out / "table.md").read_text().count("\n| ") == len(names) + 1  # header and rows
    rows = {r["step"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert list(rows) == names and all(r["exit"] == 0 and r["ok"] for r in rows.values())
    assert 0.0 <= rows[names[0]]["dice"] <= 1.0
    for name in names[1:3]:  # predict.py segmented its case, each way
        assert rows[name]["s_per_case"] > 0 and rows[name]["note"] == "1 case"
    assert len(list((out / "runs" / "predict_tta_true" / "predictions").glob("*.nii.gz"))) == 1
    ceiling, bench = rows[names[3]], rows[names[4]]
    assert ceiling["tflop_per_step"] > 0 and ceiling["step_s"] > 0 and ceiling["peak_memory_gib"] is None  # CPU
    assert bench["steps_per_s_with_data"] > 0 and bench["volumes_per_s"] > 0
    assert rows[names[5]]["steps_per_s_with_data"] > 0  # the channels-last variant trained too
    # the benchmark's FLOPs per step are the ceiling's (same network and batch) where StepTimer gives none
    assert bench["tflop_per_step"] == pytest.approx(ceiling["tflop_per_step"])
    # the table's main row shows the Dice it read
    main_cells = table_lines[1].split(" | ")
    assert main_cells[1] == "0" and float(main_cells[3]) == pytest.approx(rows[names[0]]["dice"], abs=1e-3)


def _bench_step(check, tmp_path, summary: dict, batch: int = 2):
    run_dir = tmp_path / "bench"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(f"data:\n  batch_size: {batch}\n")
    (run_dir / "step_times.json").write_text(json.dumps({**summary, "steps": [0.1], "waits": [0.0]}))
    return check.Step("bench x", "benchmark", [], run_dir, 1, {"experiment": "brats_nnunet"})


def test_reads_todays_step_times(check, tmp_path):
    """Today's StepTimer keys: volumes/s from steps/s and the run's batch, FLOPs and the chip's rate from
    the ceiling of the same network; keys it does not write stay absent ("-" in the table)."""
    step = _bench_step(check, tmp_path, {
        "benchmark/steps_timed": 45, "benchmark/step_s": 0.1, "benchmark/data_wait_s": 0.01,
        "benchmark/steps_per_s_without_data": 10.0, "benchmark/steps_per_s_with_data": 8.0,
        "benchmark/data_wait_share": 0.2})
    ceiling = {"tflop_per_step": 5.0, "peak_tflops": 800.0}
    row = check.read_benchmark(step, {"brats_nnunet": ceiling})
    assert row["volumes_per_s"] == pytest.approx(16.0)
    assert row["tflop_per_step"] == pytest.approx(5.0) and row["achieved_tflops"] == pytest.approx(50.0)
    assert row["chip_share"] == pytest.approx(50.0 / 800.0) and row["peak_memory_gib"] is None
    assert row["note"] == "45 steps timed"
    line = check.table([{"step": "bench x", "exit": 0, **row}])
    assert "| 6.2 % |" in line and "| 20.0 % |" in line  # chip share and data wait as percentages
    # without a ceiling (its step failed) the FLOP columns are absent, not invented
    bare = check.read_benchmark(step, {})
    assert bare["tflop_per_step"] is None and bare["achieved_tflops"] is None and bare["chip_share"] is None


def test_reads_the_rewritten_step_times(check, tmp_path):
    """The rewritten StepTimer's own figures win over what the check would derive."""
    step = _bench_step(check, tmp_path, {
        "benchmark/steps_timed": 45, "benchmark/step_s": 0.1, "benchmark/wall_s_per_step": 0.12,
        "benchmark/steps_per_s_with_data": 8.0, "benchmark/steps_per_s_without_data": 10.0,
        "benchmark/data_wait_share": 0.2, "benchmark/volumes_per_s": 15.5, "benchmark/flops_per_step": 6e12,
        "benchmark/achieved_tflops": 61.0, "benchmark/peak_tflops": 790.0, "benchmark/chip_share": 0.077,
        "benchmark/peak_memory_gib": 21.5})
    row = check.read_benchmark(step, {"brats_nnunet": {"tflop_per_step": 5.0, "peak_tflops": 800.0}})
    assert (row["volumes_per_s"], row["tflop_per_step"], row["achieved_tflops"], row["chip_share"],
            row["peak_memory_gib"]) == (15.5, pytest.approx(6.0), 61.0, 0.077, 21.5)


def test_a_benchmark_without_timed_steps_is_an_error(check, tmp_path):
    step = _bench_step(check, tmp_path, {"benchmark/steps_timed": 0})
    with pytest.raises(ValueError, match="no benchmark/steps_per_s_with_data"):
        check.read_benchmark(step, {})


@pytest.mark.slow  # starts Python subprocesses (a few seconds)
def test_failing_hanging_and_unstarted_steps_are_rows(check, tmp_path, monkeypatch):
    """A step that fails gives its exit status and last error line, one past its timeout is killed (124),
    one without time left is not run; the steps after them still run, and the check exits 1."""
    py = sys.executable
    ceiling_json = tmp_path / "runs" / "c" / "ceiling.json"
    figures = {"s_per_step": 0.5, "volumes_per_s": 4.0, "flops_per_step": 2e9, "achieved_tflops": 0.004,
               "chip_share": 0.04, "peak_memory_gib": None, "peak_tflops": 0.1, "model": "m", "batch": "2x4x32x32x32",
               "precision": "32"}
    writes_ceiling = (f"import json, pathlib; p = pathlib.Path({str(ceiling_json)!r}); "
                      f"p.parent.mkdir(parents=True); p.write_text(json.dumps({figures!r}))")
    steps = [
        check.Step("fails", "main", [py, "-c", "import sys; print('ValueError: no such override'); print('bye'); sys.exit(3)"],
                   tmp_path / "runs" / "main", 60),
        check.Step("hangs", "pytest", [py, "-c", "import time; time.sleep(60)"], tmp_path / "runs" / "p", 1,
                   {"junit": tmp_path / "none.xml"}),
        check.Step("works", "ceiling", [py, "-c", writes_ceiling],
                   tmp_path / "runs" / "c", 60, {"json": ceiling_json, "experiment": "brats_nnunet"}),
        check.Step("predict TTA on", "predict", [py, "predict.py"], tmp_path / "runs" / "pr", 60, {"input": tmp_path}),
    ]
    monkeypatch.setattr(check, "plan", lambda args, out: steps)
    start = time.monotonic()
    code = check.main(["--tiny", "--out", str(tmp_path), "--budget", "600"])
    assert time.monotonic() - start < 50  # the hanging step was stopped, not waited for
    rows = {r["step"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert code == 1
    assert rows["fails"]["exit"] == 3 and rows["fails"]["note"] == "ValueError: no such override"
    assert rows["hangs"]["exit"] == 124 and "timeout after 1 s" in rows["hangs"]["note"]
    assert rows["works"]["ok"] and rows["works"]["tflop_per_step"] == pytest.approx(0.002)
    assert rows["predict TTA on"]["exit"] == "not run" and "the main job wrote none" in rows["predict TTA on"]["note"]
    # with no budget left nothing starts
    monkeypatch.setattr(check, "plan", lambda args, out: steps[2:3])
    assert check.main(["--tiny", "--out", str(tmp_path / "b"), "--budget", "1"]) == 1
    (row,) = json.loads((tmp_path / "b" / "results.json").read_text())["rows"]
    assert row["exit"] == "not run" and row["note"].startswith("budget spent")

"""The GPU check in one go: train, benchmark, plain-loop ceiling, predict and the quick tests, one table.

Usage (from the repository root):
    python experiments/gpu/gpu_check.py                         # on a GPU machine: sized for 8 minutes (--budget 480)
    python experiments/gpu/gpu_check.py --cases data/gpu_cases  # real cases (default: data/gpu_cases if present)
    python experiments/gpu/gpu_check.py --tiny                  # on a CPU: tiny sizes, 3 steps, no tests
    python experiments/gpu/gpu_check.py --tiny --experiments brats_nvidia --aug cpu --workers 0   # one row of each kind

``--tiny`` (CPU, a couple of minutes on two cores): 4 phantoms of 64 x 64 x 48 (3 training, 1 validation
case), 32^3 patches in batches of 2, the same network families with 4 base filters and 3-4 stages, a
main job of 3 steps and one validation (no re-validation of the best checkpoint), predict.py on one
phantom (also with ``--cases``), 3 benchmark steps (the first left out), 2 plain-loop steps, loader workers 0 and 2, no pytest.

Every step is a subprocess (``sys.executable``) under its own timeout (its process group is killed
when the timeout passes; exit status 124), with its log in ``<out>/logs/<step>.log`` and its run
folder in ``<out>/runs/<step>``; the figures come from the files each run writes, never from a
traceback:

1. ``main``: ``train.py trainer=gpu logger=csv`` (the embedded phantom default): exit status, the last
   ``val/dice_mean`` of its ``csv/metrics.csv``.
2. ``predict TTA on|off``: ``predict.py`` with the main job's checkpoint (its best ``checkpoints/epoch_*.ckpt``,
   else ``last.ckpt``) on up to ``--predict-cases`` cases (``--cases``, else the phantoms), with
   ``inference.flip_tta=true|false``: seconds per case from ``predict.log`` (the network's time per case,
   loading and writing included, start-up excluded) and the label maps written.
3. ``ceiling <experiment>``: ``experiments/gpu/ceiling.py`` (the plain PyTorch loop of
   ``experiments/benchmarks/loop_overhead.py`` on batches held on the device): s/step, FLOPs per step,
   TFLOP/s against the device's measured matrix rate, peak GPU memory.
4. ``bench <experiment> aug=<cpu|batch> w=<workers>``: ``train.py experiment=<e> debug=benchmark`` with
   ``data.augment.device=<cpu|batch>`` and ``data.num_workers=<workers>``: ``step_times.json`` of the run
   folder (StepTimer's ``benchmark/*`` keys; a key a StepTimer version does not write is shown as "-";
   FLOPs and the chip's rate missing there are taken from the ceiling of the same network and shape).
   Every default callback stays on: an end-of-fit hook that fails before StepTimer's (the model card's
   did on every GPU fit until f53d7b3, GPU.md) is a failing row, not a hidden one.
5. ``pytest``: ``pytest -q tests -m 'not slow and not real_data' -n <workers>`` with the GPU visible: the
   counts of its JUnit XML (not with ``--tiny`` or ``--skip-tests``).

Everything the runs write (phantoms, preprocessing cache, run folders, logs) goes under ``--out``
(default ``logs/gpu_check/<date>_<time>``, git-ignored). The table is printed and written to
``<out>/table.md``, the rows and the machine to ``<out>/results.json``. ``--budget`` seconds cap the whole
check: each step's timeout is cut to what is left, and a step with under 10 s left is not started
(a row "not run"). The exit status is 1 when any step failed or did not run, else 0.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = ("brats_nnunet", "brats_nvidia")
#: lightning_brats.training.hardware.SYNC_DEBUG_ENV: torch.cuda.set_sync_debug_mode for a CUDA run
SYNC_DEBUG_ENV = "LIGHTNING_BRATS_SYNC_DEBUG"
#: Benchmark variants (--variants): the module's layout and compilation switches, measured one at a time.
VARIANTS = {
    # torch.cuda.set_sync_debug_mode("warn") through lightning_brats.training.hardware.configure_cuda: where the host waits
    "sync_debug": [],
    "channels_last": ["model.channels_last=true"],
    "compile": ["model.compile=true"],
    "cuda_graphs": ["model.compile=true", "model.compile_mode=reduce-overhead"],
}
#: tiny network and batch per experiment (CPU): same families, a few filters, 32^3 patches
TINY_NETS = {
    "brats_nnunet": ["model.net.base_filters=4", "model.net.depth=4"],
    "brats_nvidia": ["model.net.filters=[4,8,16,32]"],
}
TINY_SHAPE = ["data.patch_size=[32,32,32]", "data.batch_size=2"]
#: the phantoms of --tiny (the main job writes them; every later step reads the same ones): 4 cases of
#: 64 x 64 x 48, 3 training and 1 validation case
TINY_PHANTOMS = ["data.phantoms.num_cases=4", "data.phantoms.shape=[64,64,48]", "data.num_folds=4"]
MIN_STEP_S = 10.0
#: (row key, header) of the table, in order
COLUMNS = [
    ("step", "step"), ("exit", "exit"), ("wall_s", "wall s"), ("dice", "val Dice"),
    ("steps_per_s_with_data", "steps/s (data)"), ("steps_per_s_without_data", "steps/s (no data)"),
    ("data_wait_share", "data wait"), ("volumes_per_s", "volumes/s"), ("step_s", "step s"),
    ("tflop_per_step", "TFLOP/step"), ("achieved_tflops", "TFLOP/s"), ("chip_share", "chip share"),
    ("peak_memory_gib", "peak GiB"), ("s_per_case", "s/case"), ("tests", "tests passed/failed"), ("note", "note"),
]
_ERROR = re.compile(r"(Error|Exception|error:|Traceback|FAILED|Killed)")


@dataclass
class Step:
    """One subprocess of the check: its row name, command, run folder, timeout and kind (which files
    hold its figures)."""

    name: str
    kind: str
    command: list[str]
    run_dir: Path
    timeout: float
    extra: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_")


def run_step(step: Step, log_dir: Path, timeout: float) -> tuple[int, float, Path]:
    """Run ``step.command`` from the repository root with stdout and stderr in ``log_dir/<slug>.log``.
    Returns ``(exit status, wall seconds, log path)``; 124 when ``timeout`` passed (the step's whole
    process group, loader workers included, is terminated, then killed)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{step.slug}.log"
    start = time.perf_counter()
    with open(log, "w") as handle:
        handle.write("$ " + " ".join(step.command) + "\n")
        handle.flush()
        env = {**os.environ, **step.extra.get("env", {})}
        proc = subprocess.Popen(step.command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code = 124
            handle.write(f"\n[gpu_check] timeout after {timeout:.0f} s: killed\n")
    return code, time.perf_counter() - start, log


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of ``proc``, SIGKILL 10 s later if it is still there."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def last_error_line(log: Path) -> str:
    """The last line of ``log`` that names an error (else its last non-empty line), shortened."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"no log at {log}"
    errors = [ln for ln in lines if _ERROR.search(ln)]
    line = (errors or lines or ["(empty log)"])[-1]
    return line if len(line) <= 160 else line[:157] + "..."


# ---- figures from the files each run writes -------------------------------------------------------

def read_main(step: Step) -> dict:
    """The last ``val/dice_mean`` of the run's ``csv/metrics.csv`` and its checkpoint."""
    path = step.run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not written")
    with open(path) as handle:
        values = [row["val/dice_mean"] for row in csv.DictReader(handle) if row.get("val/dice_mean")]
    if not values:
        raise ValueError(f"no val/dice_mean in {path}")
    return {"dice": float(values[-1])}


def find_checkpoint(run_dir: Path) -> Path | None:
    """The best checkpoint (``checkpoints/epoch_*.ckpt``, the newest) of a train.py run, else ``last.ckpt``."""
    best = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


_PREDICTED = re.compile(r"Predicted (\d+) cases \((\d+) skipped\) in ([0-9.]+) s, ([0-9.]+) s per case")


def read_predict(step: Step) -> dict:
    """Seconds per case from ``predict.log`` (predict.py's own summary line) and the label maps written."""
    log = step.run_dir / "predict.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    found = _PREDICTED.findall(text)
    if not found:
        raise ValueError(f"no 'Predicted N cases' line in {log}")
    cases, _, seconds, _ = found[-1]
    written = len(list((step.run_dir / "predictions").glob("*.nii.gz")))
    if int(cases) == 0 or written < int(cases):
        raise ValueError(f"{cases} cases predicted, {written} label maps in {step.run_dir / 'predictions'}")
    return {"s_per_case": float(seconds) / int(cases), "note": f"{cases} case{'' if int(cases) == 1 else 's'}"}


def read_ceiling(step: Step) -> dict:
    """The JSON that ceiling.py wrote."""
    data = json.loads(Path(step.extra["json"]).read_text())
    return {
        "step_s": data["s_per_step"], "steps_per_s_without_data": 1 / data["s_per_step"],
        "volumes_per_s": data["volumes_per_s"], "tflop_per_step": data["flops_per_step"] / 1e12,
        "achieved_tflops": data["achieved_tflops"], "chip_share": data["chip_share"],
        "peak_memory_gib": data.get("peak_memory_gib"), "peak_tflops": data["peak_tflops"],
        "note": f"{data['model']} {data['batch']} {data['precision']}, {data['peak_tflops']:.3g} TFLOP/s matmul",
    }


def read_benchmark(step: Step, ceilings: dict) -> dict:
    """StepTimer's ``step_times.json`` in the run folder; FLOPs, TFLOP/s and chip share, when it lacks
    them, from ``ceilings[experiment]`` (the same network and batch) and its ``benchmark/step_s``."""
    path = step.run_dir / "step_times.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not written")
    data = json.loads(path.read_text())

    def get(key):
        return data.get(f"benchmark/{key}")

    row = {k: get(k) for k in ("steps_per_s_with_data", "steps_per_s_without_data", "data_wait_share", "step_s",
                               "achieved_tflops", "chip_share", "peak_memory_gib")}
    if not row["steps_per_s_with_data"]:
        raise ValueError(f"no benchmark/steps_per_s_with_data in {path} ({get('steps_timed')} steps timed)")
    batch = _batch_size(step.run_dir)
    row["volumes_per_s"] = get("volumes_per_s") or (row["steps_per_s_with_data"] * batch if batch else None)
    ceiling = ceilings.get(step.extra["experiment"], {})
    flops = get("flops_per_step") or (ceiling.get("tflop_per_step", 0) * 1e12 or None)
    row["tflop_per_step"] = flops / 1e12 if flops else None
    if row["achieved_tflops"] is None and flops and row["step_s"]:
        row["achieved_tflops"] = flops / row["step_s"] / 1e12
    peak = get("peak_tflops") or ceiling.get("peak_tflops")
    if row["chip_share"] is None and row["achieved_tflops"] and peak:
        row["chip_share"] = row["achieved_tflops"] / peak
    row["note"] = f"{get('steps_timed')} steps timed"
    if step.extra.get("env", {}).get(SYNC_DEBUG_ENV):  # each place that made the host wait warns once
        log = step.extra.get("log")
        sites = sorted({line.strip() for line in log.read_text(errors="replace").splitlines()
                        if "synchronizing CUDA operation" in line}) if log and log.is_file() else []
        row["note"] += f"; {len(sites)} syncing call sites (log: {log.name if log else '-'})"
    return row


def _batch_size(run_dir: Path) -> int | None:
    """``data.batch_size`` of the run's composed config (``.hydra/config.yaml``)."""
    import yaml

    try:
        return int(yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["data"]["batch_size"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def read_pytest(step: Step) -> dict:
    """Passed/failed counts of pytest's JUnit XML (errors count as failed), the first failing tests."""
    path = Path(step.extra["junit"])
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    names = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
             if c.find("failure") is not None or c.find("error") is not None]
    note = f"{skipped} skipped" + (f"; failed: {', '.join(names[:3])}" if names else "")
    return {"tests": f"{total - failed - skipped}/{failed}", "note": note}


# ---- the plan ------------------------------------------------------------------------------------

def count_cases(root: Path) -> list[str]:
    """Case IDs (sub-folders) under ``root``, sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def plan(args: argparse.Namespace, out: Path) -> list[Step]:
    """The steps of the check, in order (main, predict, ceilings, benchmarks, pytest)."""
    py = sys.executable
    runs = out / "runs"
    accel = args.accelerator
    trainer = "trainer=gpu" if accel == "gpu" else "trainer=cpu"
    paths = [f"paths.data_dir={out / 'data'}", f"paths.cache_dir={args.cache_dir or out / 'cache'}"]
    phantoms = TINY_PHANTOMS if args.tiny else []
    steps: list[Step] = []

    main_dir = runs / "main"
    main_cmd = [py, "train.py", trainer, "logger=csv", *paths, *phantoms, f"hydra.run.dir={main_dir}"]
    if args.tiny:
        main_cmd += [*TINY_SHAPE, "model.net.base_filters=4", "data.samples_per_epoch=6", "trainer.max_epochs=1",
                     "validate_best=false"]
    steps.append(Step(f"main: train.py {trainer} logger=csv", "main", main_cmd, main_dir, args.timeout_main))

    # --tiny predicts a phantom even with --cases: a real case at 1 mm with flip TTA took over 90 s on two cores
    predict_input = args.cases if args.cases and not args.tiny else out / "data" / "brats_sample_phantoms"
    for tta in ("true", "false"):
        run_dir = runs / f"predict_tta_{tta}"
        cmd = [py, "predict.py", f"input={predict_input}", f"inference.flip_tta={tta}",
               f"inference.device={'cuda' if accel == 'gpu' else 'cpu'}", f"hydra.run.dir={run_dir}"]
        steps.append(Step(f"predict TTA {'on' if tta == 'true' else 'off'}", "predict", cmd, run_dir,
                          args.timeout_predict, {"input": predict_input}))

    if args.cases:
        n = len(count_cases(args.cases))
        data = [f"data={args.data}", f"data.root={args.cases}", f"data.num_folds={max(2, min(5, n))}"]
        data += ["data.spacing=[2,2,2]"] if args.tiny else []
    else:
        data = ["data=sample", *phantoms]
    for experiment in args.experiments:
        sizes = [*TINY_SHAPE, *TINY_NETS[experiment]] if args.tiny else []
        run_dir = runs / f"ceiling_{experiment}"
        cmd = [py, "experiments/gpu/ceiling.py", "--experiment", experiment, "--json", str(run_dir / "ceiling.json"),
               "--device", "cuda" if accel == "gpu" else "cpu", "--steps", str(args.loop_steps),
               "--warmup", str(1 if args.tiny else 3), "--override", trainer, *sizes]
        steps.append(Step(f"ceiling {experiment} (plain loop)", "ceiling", cmd, run_dir, args.timeout_ceiling,
                          {"json": run_dir / "ceiling.json", "experiment": experiment}))
    for experiment in args.experiments:
        sizes = [*TINY_SHAPE, *TINY_NETS[experiment]] if args.tiny else []
        for aug in args.aug:
            for workers in args.workers:
                run_dir = runs / f"bench_{experiment}_{aug}_w{workers}"
                cmd = [py, "train.py", f"experiment={experiment}", "debug=benchmark", trainer, "logger=csv", *data, *paths,
                       *sizes, f"data.augment.device={aug}", f"data.num_workers={workers}",
                       f"debug_steps={args.bench_steps}", f"callbacks.step_timer.skip={args.bench_skip}",
                       f"hydra.run.dir={run_dir}"]
                steps.append(Step(f"bench {experiment} aug={aug} w={workers}", "benchmark", cmd, run_dir,
                                  args.timeout_bench, {"experiment": experiment}))

    # the levers to measure on a GPU (issue 22): the nnU-Net preset with the CPU augmentation path, each alone
    for variant in args.variants:
        experiment = "brats_nnunet" if "brats_nnunet" in args.experiments else args.experiments[0]
        sizes = [*TINY_SHAPE, *TINY_NETS[experiment]] if args.tiny else []
        run_dir = runs / f"bench_{experiment}_{variant}"
        cmd = [py, "train.py", f"experiment={experiment}", "debug=benchmark", trainer, "logger=csv", *data, *paths, *sizes,
               "data.augment.device=cpu", f"data.num_workers={args.workers[-1]}", f"debug_steps={args.bench_steps}",
               f"callbacks.step_timer.skip={args.bench_skip}", *VARIANTS[variant], f"hydra.run.dir={run_dir}"]
        extra = {"experiment": experiment}
        if variant == "sync_debug":
            extra["env"] = {SYNC_DEBUG_ENV: "warn"}
        steps.append(Step(f"bench {experiment} {variant} w={args.workers[-1]}", "benchmark", cmd, run_dir,
                          args.timeout_bench, extra))

    if not args.skip_tests:
        junit = out / "runs" / "pytest" / "junit.xml"
        cmd = [py, "-m", "pytest", "-q", "tests", "-m", "not slow and not real_data", "-n", str(args.pytest_workers),
               "-p", "no:cacheprovider", f"--junitxml={junit}"]
        steps.append(Step(f"pytest -m 'not slow and not real_data' -n {args.pytest_workers}", "pytest", cmd,
                          junit.parent, args.timeout_tests, {"junit": junit}))
    return steps


def _finish_predict(step: Step, main_dir: Path, limit: int) -> str | None:
    """Complete a predict step's command with the main job's checkpoint and the cases; the reason it
    cannot run, or None."""
    checkpoint = find_checkpoint(main_dir)
    if checkpoint is None:
        return f"no checkpoint under {main_dir / 'checkpoints'} (the main job wrote none)"
    root = Path(step.extra["input"])
    if not root.is_dir():
        return f"no cases at {root}"
    ids = count_cases(root)[:limit]
    step.command += [f"ckpt_path={checkpoint}", f"cases=[{','.join(ids)}]"]
    return None


def run_check(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Run every step in order within ``args.budget`` seconds; the table's rows and the machine."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    steps = plan(args, out)
    deadline = time.monotonic() + args.budget
    rows, ceilings = [], {}
    for step in steps:
        row = {"step": step.name}
        left = deadline - time.monotonic()
        reason = _finish_predict(step, out / "runs" / "main", args.predict_cases) if step.kind == "predict" else None
        if reason or left < MIN_STEP_S:
            row.update(exit="not run", note=reason or f"budget spent ({args.budget:.0f} s)")
            rows.append(row)
            print(f"[gpu_check] {step.name}: not run ({row['note']})", flush=True)
            continue
        print(f"[gpu_check] {step.name} ...", flush=True)
        code, wall, log = run_step(step, out / "logs", min(step.timeout, left))
        step.extra["log"] = log
        row.update(exit=code, wall_s=wall)
        try:
            figures = {"main": read_main, "predict": read_predict, "ceiling": read_ceiling,
                       "pytest": read_pytest}.get(step.kind)
            row.update(figures(step) if figures else read_benchmark(step, ceilings))
            if step.kind == "ceiling":
                ceilings[step.extra["experiment"]] = row
        except (OSError, ValueError, KeyError, TypeError, ET.ParseError) as error:
            row["figures_error"] = str(error)
        if code != 0 or "figures_error" in row:
            row["note"] = last_error_line(log) if code != 0 else row["figures_error"]
        row["ok"] = code == 0 and "figures_error" not in row
        row["log"] = str(log)
        rows.append(row)
        print(f"[gpu_check] {step.name}: exit {code}, {wall:.1f} s", flush=True)
    return rows, machine


# ---- machine and table ---------------------------------------------------------------------------

def describe_machine() -> dict:
    """Date, CPU (model, ISA flags, cores), GPU, torch and the commit: the conditions of the check."""
    import torch

    sys.path[:0] = [str(REPO), str(REPO / "experiments" / "benchmarks")]
    from common import machine

    info = machine()
    gpu = "none"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10, check=False).stdout.strip() or "-"
    except (OSError, subprocess.TimeoutExpired):
        commit = "-"
    return {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "cpu": info["cpu"],
            "cpu_flags": info["cpu_flags"], "cores": info["cores_allowed"], "gpu": gpu, "torch": info["torch"],
            "python": platform.python_version(), "commit": commit, "load_avg": info["load_avg"]}


def _cell(key: str, value) -> str:
    if value is None or value == "":
        return "-"
    if key in ("data_wait_share", "chip_share"):
        return f"{100 * value:.1f} %"
    if key == "wall_s":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("|", "/")


def table(rows: Sequence[dict]) -> str:
    """The rows as one Markdown table (absent figures as "-")."""
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def header(machine: dict, args: argparse.Namespace) -> str:
    data = f"real cases in {args.cases}" if args.cases else "phantoms (data=sample)"
    return (f"GPU check {machine['date']} on {machine['host']}: GPU {machine['gpu']}; CPU {machine['cpu']} "
            f"({machine['cpu_flags']}), {machine['cores']} cores; torch {machine['torch']}, Python {machine['python']}, "
            f"commit {machine['commit']}; load average {machine['load_avg']} at the start; "
            f"{'--tiny, ' if args.tiny else ''}{args.accelerator}, {data}")


# ---- command line --------------------------------------------------------------------------------

def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="CPU-sized: tiny phantoms, nets and patches, 3 benchmark steps, 0 and 2 workers, no tests")
    parser.add_argument("--cases", type=Path, default=None,
                        help="a folder of real cases (default: data/gpu_cases if it exists, else data=sample phantoms)")
    parser.add_argument("--data", default="brats20", help="the data config of --cases' layout (default brats20)")
    parser.add_argument("--out", default=None, help="output folder (default logs/gpu_check/<date>_<time>)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="preprocessing cache (default <out>/cache)")
    parser.add_argument("--accelerator", choices=["gpu", "cpu"], default=None, help="default: cpu with --tiny, else gpu")
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--aug", nargs="+", choices=["cpu", "batch"], default=["cpu", "batch"],
                        help="data.augment.device of the benchmark runs")
    parser.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), default=None,
                        help="benchmark variants of the nnU-Net preset (default all on a GPU, none with --tiny)")
    parser.add_argument("--workers", nargs="+", type=int, default=None, help="data.num_workers (default 2 14; --tiny 0 2)")
    parser.add_argument("--bench-steps", type=int, default=None, help="debug_steps of each benchmark (default 40; --tiny 3)")
    parser.add_argument("--bench-skip", type=int, default=None, help="warm-up steps StepTimer leaves out (default 5; --tiny 1)")
    parser.add_argument("--loop-steps", type=int, default=None, help="timed plain-loop steps (default 20; --tiny 2)")
    parser.add_argument("--predict-cases", type=int, default=None,
                        help="cases predict.py segments, the first by name (default 5; --tiny 1)")
    parser.add_argument("--skip-tests", action="store_true", help="no pytest step (implied by --tiny)")
    parser.add_argument("--pytest-workers", type=int, default=max(1, len(os.sched_getaffinity(0)) - 2))
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole check (default 480; --tiny 900)")
    for name, default in (("main", 150), ("predict", 90), ("ceiling", 90), ("bench", 90), ("tests", 240)):
        parser.add_argument(f"--timeout-{name}", type=float, default=default, help=f"seconds (default {default})")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.accelerator = args.accelerator or ("cpu" if tiny else "gpu")
    args.workers = args.workers if args.workers is not None else ([0, 2] if tiny else [2, 14])
    args.variants = args.variants if args.variants is not None else ([] if tiny else list(VARIANTS))
    args.bench_steps = args.bench_steps or (3 if tiny else 40)
    args.bench_skip = args.bench_skip if args.bench_skip is not None else (1 if tiny else 5)
    args.loop_steps = args.loop_steps or (2 if tiny else 20)
    args.predict_cases = args.predict_cases or (1 if tiny else 5)
    args.budget = args.budget or (900.0 if tiny else 480.0)
    args.skip_tests = args.skip_tests or tiny
    if args.bench_steps <= args.bench_skip:
        parser.error(f"--bench-steps ({args.bench_steps}) must exceed --bench-skip ({args.bench_skip}): no step would be timed")
    if args.cases is None and (REPO / "data" / "gpu_cases").is_dir():
        args.cases = REPO / "data" / "gpu_cases"
    if args.cases is not None:
        args.cases = args.cases.resolve()
        if not args.cases.is_dir() or not count_cases(args.cases):
            parser.error(f"--cases {args.cases}: no case folders there (copy a few, e.g. into data/gpu_cases)")
    args.out = Path(args.out or REPO / "logs" / "gpu_check" / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    start = time.perf_counter()
    rows, machine = run_check(args)
    text = f"{header(machine, args)}; {time.perf_counter() - start:.0f} s in all\n\n{table(rows)}\n"
    print("\n" + text, flush=True)
    (args.out / "table.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1, default=str))
    failed = [r["step"] for r in rows if not r.get("ok")]
    print(f"[gpu_check] {len(rows) - len(failed)} of {len(rows)} steps passed; logs and runs under {args.out}"
          + (f"; failed or not run: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

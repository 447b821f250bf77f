"""Faults a long run meets (issue 13): SIGTERM, kill -9, a non-finite loss, corrupt or foreign
checkpoints, a damaged or shared preprocessing cache. Processes are real where the fault is a process."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import REPO, compose_config

# a small 3D U-Net on the session's phantoms (8 cases of 64 x 64 x 48, 4 folds): 20 steps of 2 patches
# per epoch, validation of one case
TINY = ["data=sample", "data.num_folds=4", "data.max_val_cases=1", "data.patch_size=[32,32,32]", "data.batch_size=2",
        "data.samples_per_epoch=40", "model.net.base_filters=4", "inference.overlap=0",
        "validate_best=false", "trainer.accelerator=cpu"]
STEPS_PER_EPOCH = 40 // 2


class StepMarker(pl.Callback):
    """Appends the global step to ``path`` after every training step, then sleeps ``sleep_s`` seconds
    (so that a test can signal the process while an epoch is still running)."""

    def __init__(self, path: str, sleep_s: float = 0.0) -> None:
        self.path, self.sleep_s = Path(path), sleep_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.path, "a") as handle:
            handle.write(f"{trainer.global_step}\n")
        time.sleep(self.sleep_s)


def _env() -> dict[str, str]:
    # WANDB_SERVICE: the W&B service of this pytest process (earlier in-process runs started one); a
    # child must start its own, or the runs of a killed child stay registered there ("run ID in use")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _args(phantom_root: Path, root: Path, run: str, extra: list[str], logger: str = "csv") -> list[str]:
    return [sys.executable, "train.py", *TINY, f"logger={logger}", f"data.root={phantom_root}", f"paths.root_dir={root}",
            f"paths.cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'logs' / 'train' / 'runs' / run}", *extra]


def _steps(marker: Path) -> list[int]:
    return [int(line) for line in marker.read_text().split()] if marker.is_file() else []


def _start_and_wait(args: list[str], marker: Path, log: Path, min_step: int = 1, timeout: float = 600) -> subprocess.Popen:
    """Start ``args`` with output to ``log``; return once ``marker`` says ``min_step`` steps are done."""
    with open(log, "w") as handle:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not (_steps(marker) and _steps(marker)[-1] >= min_step):
        if proc.poll() is not None:
            pytest.fail(f"train.py ended early with status {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no step after {timeout} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    return proc


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _no_temporary_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or p.name.startswith("."))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_resumes(phantom_root, tmp_path):
    marker = tmp_path / "step.txt"
    marker_cb = ["+callbacks.marker._target_=tests.test_reliability.StepMarker", f"+callbacks.marker.path={marker}"]
    proc = _start_and_wait(_args(phantom_root, tmp_path, "first", [*marker_cb, "+callbacks.marker.sleep_s=0.5",
                                                                   "trainer.max_epochs=1"]),
                           marker, tmp_path / "first.log")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143  # a scheduler sees a killed run, not a success
    output = (tmp_path / "first.log").read_text()
    checkpoints = tmp_path / "logs" / "train" / "runs" / "first" / "checkpoints"
    assert "SIGTERM: saved" in output and str(checkpoints / "last.ckpt") in output
    saved = _load(checkpoints / "last.ckpt")
    # mid-epoch: at least the step the marker saw, and not the end of the epoch
    assert saved["epoch"] == 0 and 1 <= saved["global_step"] < STEPS_PER_EPOCH
    assert saved["state_dict"] and saved["optimizer_states"]
    assert _no_temporary_files(checkpoints) == []

    marker.unlink()
    resumed = subprocess.run(_args(phantom_root, tmp_path, "second", ["ckpt_path=last", "trainer.max_epochs=1", *marker_cb]),
                             cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"Resuming from {(checkpoints / 'last.ckpt').resolve()}" in resumed.stdout + resumed.stderr
    final = _load(tmp_path / "logs" / "train" / "runs" / "second" / "checkpoints" / "last.ckpt")
    # the step counter went on from the saved step, and the epoch ended after the steps it had left
    assert _steps(marker) == list(range(saved["global_step"] + 1, STEPS_PER_EPOCH + 1))
    assert final["epoch"] == 0 and final["global_step"] == STEPS_PER_EPOCH


@pytest.mark.slow
def test_kill_9_mid_epoch_then_ckpt_path_last_continues(phantom_root, tmp_path):
    marker = tmp_path / "step.txt"
    marker_cb = ["+callbacks.marker._target_=tests.test_reliability.StepMarker", f"+callbacks.marker.path={marker}"]
    proc = _start_and_wait(_args(phantom_root, tmp_path, "first", [*marker_cb, "+callbacks.marker.sleep_s=0.3",
                                                                   "trainer.max_epochs=2"], logger="wandb"),
                           marker, tmp_path / "first.log", min_step=STEPS_PER_EPOCH + 2)  # in the second epoch
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    checkpoints = tmp_path / "logs" / "train" / "runs" / "first" / "checkpoints"
    assert _no_temporary_files(checkpoints) == []
    for path in checkpoints.glob("*.ckpt"):  # every file under a final name is whole
        assert _load(path)["global_step"] == STEPS_PER_EPOCH, path
    last = _load(checkpoints / "last.ckpt")
    assert last["epoch"] == 0 and last["global_step"] == STEPS_PER_EPOCH
    run_id = last["lightning_brats_wandb_run_id"]

    marker.unlink()
    resumed = subprocess.run(_args(phantom_root, tmp_path, "second", ["ckpt_path=last", "trainer.max_epochs=2", *marker_cb],
                                   logger="wandb"), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # the second epoch again from its first step (the killed steps are lost), then done
    assert _steps(marker) == list(range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH + 1))
    final = _load(tmp_path / "logs" / "train" / "runs" / "second" / "checkpoints" / "last.ckpt")
    assert final["epoch"] == 1 and final["global_step"] == 2 * STEPS_PER_EPOCH
    assert final["lightning_brats_wandb_run_id"] == run_id  # the W&B run continues
    assert list((tmp_path / "logs" / "train" / "runs" / "second").glob(f"wandb/offline-run-*-{run_id}"))


_ATOMIC_WRITER = """
import sys, torch
from lightning_brats.training.checkpoints import AtomicCheckpointIO
AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((int(sys.argv[2]),), 2.0)}}, sys.argv[1])
"""


@pytest.mark.slow  # a Python process of its own writing 96 MiB
def test_a_checkpoint_killed_while_written_leaves_the_old_file_whole(tmp_path):
    """kill -9 while a (96 MiB) checkpoint is written over an older one: the final name holds a
    whole checkpoint, the old one unless the rename had already happened, never a truncated file."""
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.full((4,), 1.0)}}, path)
    numel = 24 * 2**20
    proc = subprocess.Popen([sys.executable, "-c", _ATOMIC_WRITER, str(path), str(numel)], cwd=REPO, env=_env())
    temporary = tmp_path / f".last.ckpt.tmp-{proc.pid}"
    deadline = time.monotonic() + 120
    while not temporary.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    seen_temporary = temporary.exists()
    proc.kill()
    proc.wait(timeout=60)
    weights = _load(path)["state_dict"]["w"]
    if seen_temporary and weights.numel() == 4:  # killed before the rename: the old checkpoint
        assert torch.equal(weights, torch.full((4,), 1.0))
    else:  # the writer had finished: the new checkpoint, whole
        assert torch.equal(weights, torch.full((numel,), 2.0))
    assert seen_temporary or proc.returncode == 0
    assert [p.name for p in tmp_path.iterdir() if p.name != temporary.name] == ["last.ckpt"]


class PoisonBatch(pl.Callback):
    """Puts a NaN into the first image of the batch at global step ``step`` (on global rank ``rank``
    only, when given) and records that batch's case IDs in ``path`` (one JSON list)."""

    def __init__(self, step: int, path: str, rank: int | None = None) -> None:
        self.step, self.path, self.rank = step, Path(path), rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if trainer.global_step == self.step and not self.path.exists():
            batch["image"][0, 0, 0, 0, 0] = float("nan")
            self.path.write_text(json.dumps(list(batch["case_id"])))


def _train_poisoned(phantom_root: Path, out: Path, extra: list[str], step: int = 5) -> dict:
    from lightning_brats.cli.train import train

    # 2 epochs of 4 steps; the NaN goes into the second step of the second epoch (global step 5) by default
    cfg = compose_config([*TINY, "logger=csv", f"data.root={phantom_root}", "data.samples_per_epoch=8",
                          "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "+callbacks.poison._target_=tests.test_reliability.PoisonBatch",
                          f"+callbacks.poison.step={step}", f"+callbacks.poison.path={out / 'poisoned.json'}", *extra],
                         out, out / "cache")
    return train(cfg)


@pytest.mark.slow
def test_a_nan_loss_stops_naming_step_epoch_and_cases(phantom_root, tmp_path):
    from lightning_brats.training.module import NonFiniteLossError

    with pytest.raises(NonFiniteLossError) as info:
        _train_poisoned(phantom_root, tmp_path, [])
    cases = json.loads((tmp_path / "poisoned.json").read_text())
    message = str(info.value)
    assert "non-finite" in message and "global step 5, epoch 1, batch 1" in message
    assert str(cases) in message and "model.skip_nonfinite=true" in message
    # the last good checkpoint, the end of epoch 0, is whole and untouched
    last = _load(tmp_path / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0 and last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert _no_temporary_files(tmp_path / "checkpoints") == []


@pytest.mark.slow
def test_skip_nonfinite_skips_and_counts_the_batch(phantom_root, tmp_path):
    _train_poisoned(phantom_root, tmp_path, ["model.skip_nonfinite=true"])
    last = _load(tmp_path / "checkpoints" / "last.ckpt")
    # 8 batches (Lightning counts 8 steps), one without gradients: AdamW updated every weight 7 times
    assert last["epoch"] == 1 and last["global_step"] == 8
    assert {int(s["step"]) for s in last["optimizer_states"][0]["state"].values()} == {7}
    assert last["lightning_brats_nonfinite_skipped"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        skipped = [float(r["train/nonfinite_skipped"]) for r in csv.DictReader(handle) if r.get("train/nonfinite_skipped")]
    assert skipped and set(skipped) == {1.0}  # the running count, logged from the skipped step on


class Foreign:
    """An object that ``weights_only=True`` refuses (not an allow-listed type)."""


def _bad_checkpoints(good: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken or foreign variants of the real checkpoint ``good``: name -> (file, expected words)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    checkpoint = _load(good)
    files = {
        "truncated": (data[: len(data) // 2], "truncated or corrupt"),
        "empty": (b"", "empty file (0 bytes)"),
        "text": (b"model weights: see the wiki\n", "truncated or corrupt"),
    }
    out = {}
    for name, (content, words) in files.items():
        (folder / f"{name}.ckpt").write_bytes(content)
        out[name] = (folder / f"{name}.ckpt", words)
    torch.save(checkpoint["state_dict"], folder / "state_dict.ckpt")  # what torch.save(model.state_dict()) gives
    out["state_dict"] = (folder / "state_dict.ckpt", "a plain PyTorch state dict")
    foreign = {k: v for k, v in checkpoint.items() if not k.startswith("lightning_brats")}
    torch.save({**foreign, "hyper_parameters": {"num_classes": 10}}, folder / "other_project.ckpt")
    out["other_project"] = (folder / "other_project.ckpt", "not a lightning-brats checkpoint")
    torch.save({**checkpoint, "extra": Foreign()}, folder / "pickled_object.ckpt")
    out["pickled_object"] = (folder / "pickled_object.ckpt", "never load a checkpoint from an untrusted source")
    return out


@pytest.mark.slow
def test_corrupt_or_foreign_checkpoints_give_one_clear_error(phantom_checkpoint, phantom_root, tmp_path):
    from lightning_brats.cli.eval import held_out_cases
    from lightning_brats.cli.train import resolve_ckpt_path, train
    from lightning_brats.inference.prediction import load_trained_model
    from lightning_brats.training.checkpoints import CheckpointError, load_checkpoint

    assert load_checkpoint(phantom_checkpoint)["global_step"] > 0  # the good one loads
    (tmp_path / "splits.json").write_text(json.dumps([{"train": [], "val": ["a"]}]))  # held_out's run folder
    for name, (path, words) in _bad_checkpoints(phantom_checkpoint, tmp_path / "checkpoints").items():
        for read in (load_trained_model, held_out_cases):  # predict.py and eval.py
            with pytest.raises(CheckpointError, match=re.escape(words)) as info:
                read(path)
            assert str(info.value).startswith(f"{path}: "), (name, read)
        cfg = compose_config([*TINY, "logger=csv", f"data.root={phantom_root}", f"ckpt_path={path}"], tmp_path / name)
        with pytest.raises(CheckpointError, match=re.escape(words)):  # train.py, before anything is built
            resolve_ckpt_path(cfg)
        if name == "truncated":  # and the whole of train(): nothing preprocessed, no run folder content
            with pytest.raises(CheckpointError, match=re.escape(words)):
                train(cfg)
            assert not (tmp_path / name / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["train", "predict", "eval"])
def test_the_clis_name_a_truncated_checkpoint_in_one_message(tool, phantom_checkpoint, phantom_root, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(phantom_checkpoint.read_bytes()[:5000])
    case = min(p for p in phantom_root.iterdir() if p.is_dir())
    args = {
        "train": ["train.py", *TINY, "logger=csv", f"data.root={phantom_root}", f"paths.root_dir={tmp_path}"],
        "predict": ["predict.py", f"input={case}", f"paths.root_dir={tmp_path}", "inference.device=cpu"],
        "eval": ["eval.py", f"ground_truth={phantom_root}", f"paths.root_dir={tmp_path}", "inference.device=cpu"],
    }[tool]
    proc = subprocess.run([sys.executable, *args, f"ckpt_path={bad}"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode != 0
    # Hydra echoes the overrides, then the (short) traceback ends in our one message
    lines = [line for line in proc.stderr.splitlines() if str(bad) in line and not line.startswith("Error executing job")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"lightning_brats.training.checkpoints.CheckpointError: {bad}: ") and "truncated or corrupt" in lines[0]
    assert "torch/serialization.py" not in proc.stderr  # no frame from deep in torch


def _phantom_cache(phantom_root: Path, cache_dir: Path):
    from lightning_brats.data.preprocess import PreprocessedCache
    from lightning_brats.data.settings import PreprocessingSettings
    from tests.conftest import BRATS20_LABELS, BRATS20_LAYOUT, BRATS_MODALITIES

    settings = PreprocessingSettings(BRATS_MODALITIES, spacing=[2, 2, 2])
    return PreprocessedCache(cache_dir, "phantoms", settings, BRATS20_LABELS), BRATS20_LAYOUT.find_cases(phantom_root)


def test_a_cache_entry_damaged_after_the_fact_is_found_and_rebuilt(phantom_root, tmp_path):
    import numpy as np

    cache, cases = _phantom_cache(phantom_root, tmp_path / "cache")
    cache.ensure(cases, log=lambda m: None)
    truncated, replaced = cases[1].case_id, cases[2].case_id
    image = cache.path / f"{truncated}_image.npy"
    whole = image.read_bytes()
    image.write_bytes(whole[: len(whole) // 2])  # e.g. a disk filled while copying the cache
    label = cache.path / f"{replaced}_label.npy"
    np.save(label, np.zeros((4, 4, 4), np.uint8))  # a readable .npy, but not the one the record describes
    before = {p.name: p.stat().st_mtime_ns for p in cache.path.glob("*.npy")}
    messages: list[str] = []
    cache.ensure(cases, log=messages.append)
    damaged = [m for m in messages if m.startswith("Cache entry of case")]
    assert len(damaged) == 2
    assert damaged[0] == (f"Cache entry of case {truncated} is damaged: {image} is truncated "
                          f"({len(whole) // 2} of {len(whole)} bytes); rebuilding it")
    assert damaged[1].startswith(f"Cache entry of case {replaced} is damaged: {label} holds uint8[4, 4, 4], its record says uint8[")
    assert any(m.startswith("Preprocessed 2 cases") for m in messages)
    assert image.read_bytes() == whole  # rebuilt to what it was
    after = {p.name: p.stat().st_mtime_ns for p in cache.path.glob("*.npy")}
    untouched = [c.case_id for c in cases if c.case_id not in (truncated, replaced)]
    assert all(after[f"{c}_image.npy"] == before[f"{c}_image.npy"] for c in untouched)
    fresh, _ = _phantom_cache(phantom_root, tmp_path / "fresh")
    fresh.ensure([cases[2]], log=lambda m: None)
    np.testing.assert_array_equal(cache.load(replaced).label, fresh.load(replaced).label)


_PREPROCESS_WORKER = """
import sys, time
from pathlib import Path
from tests.test_reliability import _phantom_cache
cache, cases = _phantom_cache(Path(sys.argv[1]), Path(sys.argv[2]))
Path(sys.argv[3] + ".ready").write_text("")
while not Path(sys.argv[3] + ".go").exists():
    time.sleep(0.005)
cache.ensure(cases, log=lambda m: print(m, flush=True))
"""


@pytest.mark.slow  # two Python processes of their own
def test_two_processes_preprocessing_into_one_cache_both_finish_and_write_each_case_once(phantom_root, tmp_path):
    import numpy as np

    sync = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, "-c", _PREPROCESS_WORKER, str(phantom_root), str(tmp_path / "cache"), str(s)],
                              cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for s in sync]
    deadline = time.monotonic() + 120
    while not all(Path(f"{s}.ready").exists() for s in sync):  # both imported and ready: start them together
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    for s in sync:
        Path(f"{s}.go").write_text("")
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    text = "\n".join(outputs)
    # one process preprocessed all 8 cases while the other waited, then reused them
    assert text.count("Preprocessed 8 cases") == 1
    assert sum(line.startswith("Preprocessed ") and " cases in " in line for line in text.splitlines()) == 1
    assert text.count("Waiting for another process preprocessing into") == 1
    assert text.count("all 8 cases present, reused") == 1
    cache, cases = _phantom_cache(phantom_root, tmp_path / "cache")
    assert all(cache.problem(c) is None for c in cases)
    fresh, _ = _phantom_cache(phantom_root, tmp_path / "fresh")
    fresh.ensure(cases, log=lambda m: None)
    for case in cases:
        np.testing.assert_array_equal(cache.load(case.case_id).image, fresh.load(case.case_id).image)
        np.testing.assert_array_equal(cache.load(case.case_id).label, fresh.load(case.case_id).label)


def _twenty_steps(phantom_root: Path, out: Path, workers: int, seed: int = 12345) -> dict[str, torch.Tensor]:
    from omegaconf import open_dict

    from lightning_brats.cli.train import train

    cfg = compose_config([*TINY, "logger=csv", f"data.root={phantom_root}", "trainer.max_epochs=1",
                          "trainer.deterministic=true", f"seed={seed}"], out, out.parent / "cache")
    with open_dict(cfg):
        cfg.data.num_workers = workers
    train(cfg)
    checkpoint = _load(out / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == STEPS_PER_EPOCH == 20
    return checkpoint["state_dict"]


@pytest.mark.slow
def test_deterministic_cpu_runs_give_bit_identical_weights_with_0_and_2_workers(phantom_root, tmp_path):
    first = _twenty_steps(phantom_root, tmp_path / "a", 0)
    again = _twenty_steps(phantom_root, tmp_path / "b", 0)
    workers = _twenty_steps(phantom_root, tmp_path / "c", 2)
    other_seed = _twenty_steps(phantom_root, tmp_path / "d", 0, seed=1)
    assert first.keys() == again.keys() == workers.keys()
    for name, value in first.items():
        assert torch.equal(again[name], value), name  # bit for bit, not within a tolerance
        assert torch.equal(workers[name], value), name
    # the comparison can fail: another seed gives other weights
    assert not all(torch.equal(other_seed[name], value) for name, value in first.items())


_QUOTA_WRITER = """
import resource, signal, sys, torch
from lightning_brats.training.checkpoints import AtomicCheckpointIO
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))  # a 1 MiB quota for every file this process writes
try:
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(2**20)}}, sys.argv[1])
except OSError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.mark.slow  # a Python process of its own
def test_a_full_disk_while_writing_a_checkpoint_names_it_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(4)}}, path)
    proc = subprocess.run([sys.executable, "-c", _QUOTA_WRITER, str(path)], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stdout.strip().startswith(f"[Errno 27] could not write checkpoint {path}: File too large")
    assert torch.equal(_load(path)["state_dict"]["w"], torch.ones(4))  # the previous checkpoint, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_sigterm_checkpoint_leaves_slurm_and_other_exceptions_to_lightning(tmp_path, monkeypatch):
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from lightning_brats.training.callbacks import SigtermCheckpoint

    callback = SigtermCheckpoint(str(tmp_path))
    plain = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    assert not callback.slurm_requeues(plain)
    callback.on_exception(plain, None, RuntimeError("not a signal"))
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7", "SLURM_NODELIST": "n1",
                        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1",
                        "SLURM_NTASKS_PER_NODE": "1"}.items():
        monkeypatch.setenv(name, value)
    slurm = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    assert callback.slurm_requeues(slurm)
    exception = SIGTERMException()
    callback.on_exception(slurm, None, exception)  # Lightning's requeue path: no checkpoint, status unchanged
    assert exception.code is None
    assert list(tmp_path.glob("*.ckpt")) == []


@pytest.mark.slow
def test_skip_nonfinite_under_ddp_skips_on_every_process(phantom_root, tmp_path):
    """A NaN on rank 1 only: rank 0 (finite loss) skips the same step, so no process waits for a
    gradient all-reduce the other never joins (that would hang until the 2-minute timeout)."""
    _train_poisoned(phantom_root, tmp_path, [
        "model.skip_nonfinite=true", "trainer=ddp_cpu", "+trainer.strategy.start_method=spawn", "data.batch_size=4",
        "+callbacks.poison.rank=1", "data.max_val_cases=2", "+trainer.enable_progress_bar=false", "~callbacks.progress_bar",
        "+trainer.strategy.timeout._target_=datetime.timedelta", "+trainer.strategy.timeout.seconds=120"], step=2)
    last = _load(tmp_path / "checkpoints" / "last.ckpt")
    # 2 epochs of 8 samples in global batches of 4: 4 steps, one without gradients on both processes
    assert last["global_step"] == 4
    assert {int(s["step"]) for s in last["optimizer_states"][0]["state"].values()} == {3}
    assert last["lightning_brats_nonfinite_skipped"] == 1

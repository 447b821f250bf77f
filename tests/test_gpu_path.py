"""The branches a GPU run takes, driven on this CPU with the CUDA API faked (``fake_cuda``, tests/conftest.py).

Every GPU fit once ended with exit status 1: the model card asked ``torch.cuda.get_device_name`` about
the module's device after Lightning had moved the module back to the CPU. The fake raises there as
torch does, so that class of bug fails here.
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import hydra
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_brats.cli.train import choose_precision_and_threads
from lightning_brats.inference.prediction import resolve_device
from lightning_brats.training import hardware
from lightning_brats.training.callbacks.model_card import ModelCard
from lightning_brats.training.callbacks.step_timer import StepTimer, measure_matmul_tflops, precision_dtype
from tests.conftest import compose_config, cuda_strategy


def _tiny_module(tmp_path):
    cfg = compose_config(["data=sample", "data.patch_size=[16,16,16]", "model.net.base_filters=4", "model.net.depth=3"], tmp_path)
    return hydra.utils.instantiate(cfg.model)


def test_the_fake_keeps_torchs_contract_for_a_cpu_device(fake_cuda):
    """What broke every GPU fit: the module's device after fit is the CPU, and torch refuses it."""
    with pytest.raises(ValueError, match="Expected a cuda device, but got: cpu"):
        torch.cuda.get_device_name(torch.device("cpu"))
    with pytest.raises(ValueError, match="Expected a cuda device"):
        torch.cuda.synchronize("cpu")
    assert torch.cuda.get_device_name(torch.device("cuda", 0)) == "NVIDIA H200"


def test_model_card_names_the_gpu_after_lightning_moved_the_module_back(fake_cuda, monkeypatch, tmp_path):
    module = _tiny_module(tmp_path)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    cuda_strategy(trainer, monkeypatch)
    assert module.device.type == "cpu"  # where Lightning's teardown leaves it before on_fit_end
    facts = ModelCard(dirpath=str(tmp_path)).collect(trainer, module)
    assert facts["hardware"]["gpu"] == "NVIDIA H200"
    assert ("get_device_name", torch.device("cuda", 0)) in fake_cuda.calls
    # on a CPU run the card names no GPU and asks CUDA nothing
    cpu_trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    fake_cuda.calls.clear()
    assert ModelCard(dirpath=str(tmp_path)).collect(cpu_trainer, module)["hardware"]["gpu"] is None
    assert fake_cuda.count("get_device_name") == 0


def _drive_step_timer(timer: StepTimer, trainer, steps: int, step_s: float, wait_s: float, work=None) -> None:
    module = SimpleNamespace(hparams={"compile": False})
    timer.on_train_start(trainer, module)
    for index in range(steps):
        batch = {"image": torch.zeros(2, 4, 8, 8, 8)}
        timer.on_train_batch_start(trainer, module, batch, index)
        if work is not None:
            work()
        time.sleep(step_s)
        timer.on_train_batch_end(trainer, module, None, batch, index)
        time.sleep(wait_s)
    timer.on_train_end(trainer, module)


def _trainer_on(device: str, precision: str = "bf16-mixed"):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), world_size=1, precision=precision,
                           loggers=[], is_global_zero=True, global_step=0)


def test_step_timer_on_cuda_synchronises_only_at_the_window_edges(fake_cuda, tmp_path):
    timer = StepTimer(skip=2, dirpath=str(tmp_path), count_flops=False, peak_tflops=100.0)
    _drive_step_timer(timer, _trainer_on("cuda:0"), steps=7, step_s=0.02, wait_s=0.01)
    # once when the timed window opens, once when it closes: never per step
    assert fake_cuda.count("synchronize") == 2
    assert fake_cuda.count("reset_peak_memory_stats") == 1 and fake_cuda.count("max_memory_allocated") == 1
    s = timer.summary
    assert s["benchmark/steps_timed"] == 5 and len(timer.steps) == 7  # device times from the events
    assert s["benchmark/peak_memory_gib"] == pytest.approx(3.0)
    # the figures come from one set of totals, so they agree with each other
    with_data, without = s["benchmark/steps_per_s_with_data"], s["benchmark/steps_per_s_without_data"]
    assert with_data < without
    assert s["benchmark/data_wait_share"] == pytest.approx(1 - with_data / without)
    assert s["benchmark/volumes_per_s"] == pytest.approx(2 * with_data)
    assert s["benchmark/wall_s_per_step"] == pytest.approx(s["benchmark/step_s"] + s["benchmark/data_wait_s"])
    assert (tmp_path / "step_times.json").is_file()


def test_step_timer_on_a_cpu_asks_cuda_nothing(fake_cuda):
    timer = StepTimer(skip=1, count_flops=False, peak_tflops=1.0)
    _drive_step_timer(timer, _trainer_on("cpu", "32"), steps=4, step_s=0.01, wait_s=0.01)
    assert fake_cuda.calls == []
    s = timer.summary
    assert s["benchmark/steps_timed"] == 3 and s["benchmark/peak_memory_gib"] is None
    assert 0 < s["benchmark/data_wait_share"] < 1


def test_step_timer_counts_the_flops_of_a_training_step():
    """A 3x3x3 convolution, 4 -> 8 channels, over 2 x 8^3 voxels: 2 * 4 * 8 * 27 * 2 * 512 FLOPs forward;
    the backward computes the weight gradient only (the input needs none), the same count again."""
    conv = nn.Conv3d(4, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 4, 8, 8, 8)
    timer = StepTimer(skip=1, count_flops=True, peak_tflops=1.0)
    _drive_step_timer(timer, _trainer_on("cpu", "32"), steps=3, step_s=0.0, wait_s=0.0,
                      work=lambda: conv(x).sum().backward())
    forward = 2 * 4 * 8 * 27 * 2 * 8**3
    assert timer.flops_per_step == 2 * forward
    s = timer.summary
    assert s["benchmark/achieved_tflops"] == pytest.approx(2 * forward * s["benchmark/steps_per_s_with_data"] / 1e12)
    assert s["benchmark/chip_share"] == pytest.approx(s["benchmark/achieved_tflops"] / 1.0)


def test_matmul_rate_is_measured_in_the_training_precision():
    assert precision_dtype("bf16-mixed") is torch.bfloat16 and precision_dtype("16-mixed") is torch.float16
    assert precision_dtype("32") is torch.float32 and precision_dtype("32-true") is torch.float32
    assert measure_matmul_tflops(torch.device("cpu"), torch.float32, size=64, repeats=2) > 0


def test_prediction_takes_the_gpu_and_its_bf16(fake_cuda):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    assert hardware.inference_precision("auto", torch.device("cuda")) == "bf16"
    fake_cuda.bf16 = False  # a V100: fp16 only, and prediction stays in fp32 there
    assert hardware.inference_precision("auto", torch.device("cuda")) == "32"


def test_a_gpu_run_sets_tf32_matmuls_and_the_cudnn_autotuner(fake_cuda, tmp_path, caplog):
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert hardware.configure_cuda("cpu") is None
        assert torch.get_float32_matmul_precision() == "highest"
        cfg = compose_config(["trainer=gpu"], tmp_path)
        assert cfg.trainer.benchmark is True  # Lightning sets torch.backends.cudnn.benchmark from it
        cfg.trainer.accelerator = "gpu"  # compose_config puts tests on the CPU
        with caplog.at_level(logging.INFO):
            choose_precision_and_threads(cfg)
        assert cfg.trainer.precision == "bf16-mixed" and "NVIDIA H200 supports bf16" in caplog.text
        assert torch.get_float32_matmul_precision() == hardware.CUDA_FLOAT32_MATMUL_PRECISION == "high"
        assert "TF32" in caplog.text
    finally:
        torch.set_float32_matmul_precision(before)


def test_loaders_pin_memory_for_a_gpu_only(fake_cuda, monkeypatch, tmp_path):
    cfg = compose_config(["data=sample"], tmp_path)
    cfg.data.num_workers = 2  # compose_config sets 0
    datamodule = hydra.utils.instantiate(cfg.data)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    datamodule.trainer = trainer
    assert datamodule._pin_memory is False
    cuda_strategy(trainer, monkeypatch)
    assert datamodule._pin_memory is True


# --- out of memory: one line naming what to lower ---------------------------------------------------------


class RaiseOutOfMemory(pl.Callback):
    """Raises what PyTorch raises when the GPU is full, at the first training step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.mark.slow
def test_out_of_memory_in_training_ends_in_one_line(phantom_root, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = [sys.executable, "train.py", "data=sample", f"data.root={phantom_root}", "data.patch_size=[32,32,32]",
            "data.batch_size=2", "model.net.base_filters=4", "trainer.accelerator=cpu", "trainer.precision=32", "logger=csv",
            "data.num_workers=0", f"paths.root_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
            "+callbacks.oom._target_=tests.test_gpu_path.RaiseOutOfMemory"]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    line = next(line for line in proc.stderr.splitlines() if "out of memory during training" in line)
    assert "data.patch_size=[32, 32, 32], data.batch_size=2, trainer.precision=32" in line
    assert "lower data.batch_size, data.patch_size" in line


@pytest.mark.slow
def test_out_of_memory_in_prediction_names_the_case_and_the_window(phantom_checkpoint, phantom_root, tmp_path, monkeypatch):
    from lightning_brats.cli.predict import predict
    from lightning_brats.inference.prediction import Predictor
    from lightning_brats.training.hardware import OutOfDeviceMemory
    from tests.conftest import compose_tool_config

    def full(self, files):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(Predictor, "predict_case", full)
    cfg = compose_tool_config("predict", [f"ckpt_path={phantom_checkpoint}", f"input={phantom_root}"], tmp_path)
    with pytest.raises(OutOfDeviceMemory, match=r"out of memory during prediction of case BraTS20_Training_\d+ \(window=\[\[32, 32, 32\]\], "
                       r"inference.sw_batch_size=\d+, inference.flip_tta=\w+, precision=\w+\); lower inference.sw_batch_size"):
        predict(cfg)


# --- no host synchronisation per training step ----------------------------------------------------------

#: Per-step calls known to read host tensors only (no GPU sync on a GPU), with the reason.
HOST_ONLY_SITES = {
    # DiceLoss: torch.arange(2, ndim).tolist() builds the reduced axes from a CPU tensor made without a device
    ("Tensor.tolist", "monai/losses/dice.py"),
}


class CountSyncs(pl.Callback):
    """Counts host-syncing calls (tests/sync_counter.py) from the first training batch to the end of training."""

    def __init__(self) -> None:
        from tests.sync_counter import count_host_syncs

        self.context, self.syncs = count_host_syncs(), None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.syncs is None:
            self.syncs = self.context.__enter__()

    def on_train_end(self, trainer, pl_module) -> None:
        self.context.__exit__(None, None, None)


def _train_with_callback(cfg, callback: pl.Callback) -> None:
    """``train(cfg)`` with ``callback`` added to the configured ones (kept here to read what it saw)."""
    import lightning_brats.cli.train as cli

    instantiate = cli._instantiate_dict
    cli._instantiate_dict = lambda c: [*instantiate(c), callback] if c is cfg.get("callbacks") else instantiate(c)
    try:
        cli.train(cfg)
    finally:
        cli._instantiate_dict = instantiate


def _syncs_per_site(phantom_root, out, steps: int):
    from collections import Counter


    counter = CountSyncs()
    cfg = compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", f"data.samples_per_epoch={2 * steps}",
         "data.patch_size=[32,32,32]", "data.batch_size=2", "model.net.base_filters=4", "trainer.max_epochs=1",
         "trainer.log_every_n_steps=1000", "+trainer.gradient_clip_val=12", "+trainer.limit_val_batches=0", "validate_best=false", "logger=csv",
         "trainer.precision=32", "model.optimizer._target_=torch.optim.SGD", "~model.optimizer.weight_decay",
         "+model.optimizer.momentum=0.9", "+model.optimizer.nesterov=true"],
        out, out / "cache")
    _train_with_callback(cfg, counter)
    # the loader's own work (num_workers=0: in this process) reads host arrays, not the device
    return Counter((name, site.split("site-packages/")[-1].rsplit(":", 1)[0])
                   for name, site in zip(counter.syncs.calls, counter.syncs.sites) if "torch/utils/data" not in site
                   and "lightning_brats/data/" not in site)


@pytest.mark.slow
def test_a_training_step_reads_nothing_from_the_device(phantom_root, tmp_path):
    """Lightning step, loss, fused optimiser, LR schedule, gradient clipping, logging and callbacks: the
    calls that would make a GPU wait for the host do not grow with the number of steps (a run of 9
    steps makes no more of them than a run of 3, beyond host-only reads). The nnU-Net preset's
    gradient clipping and SGD (fused) are in."""
    short = _syncs_per_site(phantom_root, tmp_path / "short", 3)
    long = _syncs_per_site(phantom_root, tmp_path / "long", 9)
    grown = {site: n - short[site] for site, n in long.items() if n > short[site] and site not in HOST_ONLY_SITES}
    assert grown == {}, grown
    assert long[("Tensor.tolist", "monai/losses/dice.py")] >= 9  # the counter sees the step's calls


def test_channels_last_changes_the_layout_not_the_numbers(tmp_path):
    cfg = compose_config(["data=sample", "data.patch_size=[16,16,16]", "model.net.base_filters=4", "model.net.depth=3"], tmp_path)
    plain = hydra.utils.instantiate(cfg.model)
    cfg.model.channels_last = True
    last = hydra.utils.instantiate(cfg.model)
    last.load_state_dict(plain.state_dict())
    last.net.to(memory_format=torch.channels_last_3d)  # load_state_dict copies values into the channels-last weights
    convs = [m.weight for m in last.net.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convs)
    assert last.hparams.channels_last is True and plain.hparams.channels_last is False
    x = torch.randn(2, 4, 16, 16, 16)
    plain.eval(), last.eval()
    with torch.no_grad():
        torch.testing.assert_close(last(x), plain(x), rtol=1e-4, atol=1e-5)


class RecordWeights(pl.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.before = torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()])

    def on_train_end(self, trainer, pl_module) -> None:
        self.after = torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()])


@pytest.mark.slow
def test_fused_optimiser_clips_gradients_in_bf16_mixed(phantom_root, tmp_path):
    """brats_nnunet's recipe (SGD, gradient norm clipped) in mixed precision, where Lightning's plugin
    refuses fused optimisers: one step of plain SGD at lr 1 moves the weights by the clipped gradient."""

    recorder = RecordWeights()
    cfg = compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.samples_per_epoch=2", "data.patch_size=[32,32,32]",
         "model.net.base_filters=4", "trainer.max_steps=1", "+trainer.limit_val_batches=0", "validate_best=false",
         "logger=csv", "trainer.precision=bf16-mixed", "+trainer.gradient_clip_val=0.01", "model.scheduler=null",
         "model.optimizer._target_=torch.optim.SGD", "model.optimizer.lr=1.0", "model.optimizer.weight_decay=0"],
        tmp_path, tmp_path / "cache")
    _train_with_callback(cfg, recorder)
    moved = (recorder.after - recorder.before).norm()
    assert 0 < moved <= 0.01 * 1.001


def test_sync_debug_mode_from_the_environment(fake_cuda, monkeypatch):
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    before = torch.get_float32_matmul_precision()
    try:
        monkeypatch.delenv(hardware.SYNC_DEBUG_ENV, raising=False)
        assert "sync_debug" not in hardware.configure_cuda("gpu") and modes == []
        monkeypatch.setenv(hardware.SYNC_DEBUG_ENV, "warn")
        assert "set_sync_debug_mode('warn')" in hardware.configure_cuda("gpu") and modes == ["warn"]
        assert hardware.configure_cuda("cpu") is None and modes == ["warn"]  # a CPU run is left alone
        monkeypatch.setenv(hardware.SYNC_DEBUG_ENV, "loud")
        with pytest.raises(ValueError, match="LIGHTNING_BRATS_SYNC_DEBUG='loud'"):
            hardware.configure_cuda("gpu")
    finally:
        torch.set_float32_matmul_precision(before)


def test_out_of_memory_on_a_gpu_names_its_peak_and_total_memory(fake_cuda):
    from lightning_brats.training.hardware import out_of_memory

    error = out_of_memory("training", {"data.batch_size": 2}, "data.batch_size", torch.device("cuda", 0))
    assert str(error) == ("out of memory during training (data.batch_size=2; peak 3.0 GiB allocated of the GPU's "
                          "140.0 GiB); lower data.batch_size")
    assert ("max_memory_allocated", torch.device("cuda", 0)) in fake_cuda.calls
    # on a CPU device the GPU's memory is not asked for
    fake_cuda.calls.clear()
    assert str(out_of_memory("prediction", {"precision": "32"}, "x", torch.device("cpu"))) == (
        "out of memory during prediction (precision=32); lower x")
    assert fake_cuda.calls == []

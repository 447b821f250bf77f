"""The precision and threads chosen for the machine: capabilities mocked both ways."""

from __future__ import annotations

import logging

import pytest
import torch

from lightning_brats.cli.train import choose_precision_and_threads
from lightning_brats.training import hardware
from tests.conftest import compose_config

AVX2_ONLY = {"cpu_name": "AMD EPYC", "avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False, "amx_tile": False}
ZEN4 = {**AVX2_ONLY, "avx512_f": True, "avx512_bf16": True}
SAPPHIRE_RAPIDS = {**AVX2_ONLY, "avx512_f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True}
SKYLAKE = {**AVX2_ONLY, "avx512_f": True}


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to run on a CPU with the given PyTorch capability flags, without CUDA."""
    monkeypatch.delenv(hardware.CPU_BF16_ENV, raising=False)
    monkeypatch.delenv(hardware.ONEDNN_ISA_ENV, raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def use(caps: dict) -> None:
        monkeypatch.setattr(hardware, "_capabilities", lambda: dict(caps))
        # the name too: /proc/cpuinfo names the machine's own CPU (an Intel Xeon beside a GPU, say)
        monkeypatch.setattr(hardware, "_cpu_model_name", lambda caps: str(caps.get("cpu_name")))

    return use


@pytest.mark.parametrize(
    "caps,isa,precision",
    [(AVX2_ONLY, "AVX2", "32"), (SKYLAKE, "AVX-512", "32"), (ZEN4, "AVX512-BF16", "bf16-mixed"), (SAPPHIRE_RAPIDS, "AMX", "bf16-mixed")],
)
def test_auto_precision_on_cpu_follows_native_bf16(cpu, caps, isa, precision):
    cpu(caps)
    assert hardware.cpu_info().isa == isa
    for accelerator in ("cpu", "auto"):
        chosen, reason = hardware.resolve_precision("auto", accelerator)
        assert chosen == precision
        assert isa in reason and ("natively" in reason) == (precision == "bf16-mixed")


def test_explicit_precision_wins(cpu):
    cpu(AVX2_ONLY)
    assert hardware.resolve_precision("bf16-mixed", "cpu")[0] == "bf16-mixed"
    cpu(ZEN4)
    assert hardware.resolve_precision(32, "cpu") == ("32", "trainer.precision=32 set explicitly")


@pytest.mark.parametrize("bf16,precision", [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_precision_on_cuda(monkeypatch, bf16, precision):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100" if not bf16 else "NVIDIA A100")
    for accelerator in ("gpu", "cuda", "auto"):
        chosen, reason = hardware.resolve_precision("auto", accelerator)
        assert chosen == precision and ("A100" if bf16 else "V100") in reason
    # a run told to use the CPU does not look at the GPU
    monkeypatch.setattr(hardware, "_capabilities", lambda: dict(AVX2_ONLY))
    monkeypatch.delenv(hardware.CPU_BF16_ENV, raising=False)
    monkeypatch.delenv(hardware.ONEDNN_ISA_ENV, raising=False)
    assert hardware.resolve_precision("auto", "cpu")[0] == "32"


def test_environment_overrides_the_bf16_detection(cpu, monkeypatch):
    cpu(ZEN4)
    monkeypatch.setenv(hardware.CPU_BF16_ENV, "0")
    assert hardware.resolve_precision("auto", "cpu")[0] == "32"
    assert f"{hardware.CPU_BF16_ENV}=0" in hardware.cpu_info().isa
    cpu(AVX2_ONLY)
    monkeypatch.setenv(hardware.CPU_BF16_ENV, "1")
    assert hardware.resolve_precision("auto", "cpu")[0] == "bf16-mixed"


@pytest.mark.parametrize(
    "cap,precision",
    [("AVX2", "32"), ("avx512_core_vnni", "32"), ("AVX2_VNNI_2", "32"), ("AVX512_CORE_BF16", "bf16-mixed"),
     ("AVX512_CORE_AMX", "bf16-mixed"), ("AVX10_1_512", "bf16-mixed"), ("ALL", "bf16-mixed"), ("", "bf16-mixed"),
     ("AVX3", "bf16-mixed")],  # a name oneDNN does not know: it ignores it, and so do we
)
def test_onednn_isa_cap_below_bf16_chooses_fp32(cpu, monkeypatch, cap, precision):
    """A bf16 CPU whose oneDNN is capped below AVX512_CORE_BF16 runs bf16 convolutions on reference
    kernels (30x slower here), so auto must choose fp32 there and say why."""
    cpu(ZEN4)
    monkeypatch.setenv(hardware.ONEDNN_ISA_ENV, cap)
    chosen, reason = hardware.resolve_precision("auto", "cpu")
    assert chosen == precision
    assert (f"{hardware.ONEDNN_ISA_ENV}={cap}" in reason) == (precision == "32")
    # an explicit LIGHTNING_BRATS_CPU_BF16=1 still wins over the cap
    monkeypatch.setenv(hardware.CPU_BF16_ENV, "1")
    assert hardware.resolve_precision("auto", "cpu")[0] == "bf16-mixed"


def test_onednn_older_variable_name_caps_too(cpu, monkeypatch):
    cpu(ZEN4)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    chosen, reason = hardware.resolve_precision("auto", "cpu")
    assert chosen == "32" and "DNNL_MAX_CPU_ISA=AVX2" in reason


def test_inference_precision(cpu):
    cpu(AVX2_ONLY)
    assert hardware.inference_precision("auto", torch.device("cpu")) == "32"
    assert hardware.inference_precision("bf16", torch.device("cpu")) == "bf16"
    cpu(ZEN4)
    assert hardware.inference_precision("auto", torch.device("cpu")) == "bf16"
    assert hardware.inference_precision("32", torch.device("cpu")) == "32"
    with pytest.raises(ValueError, match="inference.precision='16'"):
        hardware.inference_precision("16", torch.device("cpu"))


def test_threads_take_every_cpu_of_the_affinity_but_the_workers(monkeypatch, caplog):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="lightning_brats.training.hardware"):
            assert hardware.configure_threads(num_workers=2) == 4
        assert torch.get_num_threads() == 4
        assert "4 intra-op (of 6 CPUs" in caplog.text and "2 loader workers" in caplog.text
        assert hardware.configure_threads(num_workers=8) == 1  # never fewer than one
        # a deterministic run must not depend on num_workers: the same pool with or without them
        assert hardware.configure_threads(num_workers=2, deterministic=True) == 6
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value, expected", [("1", 1), ("3", 3), ("16", 4), ("2,1", 2), ("0", 4), ("", 4), ("many", 4)])
def test_omp_num_threads_caps_the_pool(monkeypatch, caplog, value, expected):
    """Two jobs side by side on a machine each set OMP_NUM_THREADS to their share; train.py keeps to it."""
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="lightning_brats.training.hardware"):
            assert hardware.configure_threads(num_workers=0) == expected
        assert torch.get_num_threads() == expected
        assert ("capped by OMP_NUM_THREADS" in caplog.text) == (value in ("1", "3", "2,1"))
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow  # 11 configs composed: over a second of the quick loop
def test_presets_leave_precision_to_the_machine(tmp_path, cpu, caplog):
    """No preset names a precision; train.py resolves it, writes it into the config and logs why."""
    before = torch.get_num_threads()
    try:
        for overrides in (["experiment=brats_cpu", "data.root=x"], ["experiment=brats_cpu_3d", "data.root=x"],
                          ["experiment=lgg_cpu", "data.root=x"], ["trainer=ddp_cpu"], []):
            cfg = compose_config(overrides, tmp_path)
            assert cfg.trainer.precision == "auto", overrides
            cpu(AVX2_ONLY)
            with caplog.at_level(logging.INFO):
                choose_precision_and_threads(cfg)
            assert cfg.trainer.precision == "32"
            assert "Precision 32: AMD EPYC (AVX2)" in caplog.text
            cfg = compose_config(overrides, tmp_path)
            cpu(ZEN4)
            choose_precision_and_threads(cfg)
            assert cfg.trainer.precision == "bf16-mixed"
        cfg = compose_config(["trainer=gpu"], tmp_path)
        assert cfg.trainer.precision == "auto"
    finally:
        torch.set_num_threads(before)

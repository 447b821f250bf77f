"""What the machine runs fast: the mixed precision to train and predict in, and the CPU threads to use.

bf16 autocast speeds up a 3D U-Net step on a CPU with native bf16 instructions (AVX512-BF16 or
AMX-BF16), but on a CPU without them PyTorch falls back to reference kernels (``slow_conv3d``
and a scalar bf16 GEMM), tens of times slower than fp32 (README's precision section has the
figures). So a preset never names a precision; it says ``auto`` and
:func:`resolve_precision` asks PyTorch what this CPU or GPU supports.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: The value of ``trainer.precision`` / ``inference.precision`` that asks this module to choose.
AUTO = "auto"

#: Environment variable that overrides the CPU's bf16 detection: ``0`` makes a CPU with native bf16
#: choose fp32 (to reproduce what an AVX2-only machine runs, e.g. the test suite's slow path), ``1``
#: claims native bf16.
CPU_BF16_ENV = "LIGHTNING_BRATS_CPU_BF16"

#: oneDNN's own cap on the instruction sets it may use (``ONEDNN_MAX_CPU_ISA``, oneDNN's documented
#: variable; ``DNNL_MAX_CPU_ISA`` is its older name, read when the new one is unset). Below
#: ``AVX512_CORE_BF16`` oneDNN has no native bf16 convolutions even on a CPU that has the instructions
#: (capped at ``AVX2`` it takes the AVX2-only machine's slow path; capped at ``AVX512_CORE_VNNI`` it
#: emulates bf16, still slower than fp32).
ONEDNN_ISA_ENV = "ONEDNN_MAX_CPU_ISA"
_ONEDNN_ISA_ENV_OLD = "DNNL_MAX_CPU_ISA"

#: oneDNN's ISA levels below native bf16 (its ``cpu_isa`` names). Any other value (``AVX512_CORE_BF16``,
#: the AMX, FP16 and AVX10 levels, ``ALL``) leaves bf16 native, and oneDNN ignores names it does not know.
_ONEDNN_CAPS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)


def onednn_isa_cap() -> tuple[str, str]:
    """The oneDNN ISA cap set in the environment: ``(variable, value)``, e.g.
    ``("ONEDNN_MAX_CPU_ISA", "AVX2")`` (``$ONEDNN_MAX_CPU_ISA``, else ``$DNNL_MAX_CPU_ISA``), or ``("", "")``."""
    for variable in (ONEDNN_ISA_ENV, _ONEDNN_ISA_ENV_OLD):
        value = os.environ.get(variable)
        if value:
            return variable, value.strip()
    return "", ""


@dataclass(frozen=True)
class CpuInfo:
    """The CPU this process runs on, as PyTorch sees it.

    Attributes:
        name: the model name (``/proc/cpuinfo`` or PyTorch's), e.g. ``"AMD EPYC"``.
        isa: the widest vector instruction set family: ``"AMX"``, ``"AVX512-BF16"``, ``"AVX-512"``,
            ``"AVX2"`` or ``"other"``.
        native_bf16: the CPU has bf16 arithmetic instructions (AVX512-BF16 or AMX-BF16), so
            oneDNN runs bf16 convolutions natively.
        threads: CPUs in this process's affinity mask (what it may run on).
    """

    name: str
    isa: str
    native_bf16: bool
    threads: int

    def describe(self) -> str:
        """One line for logs and result tables, e.g. ``"AMD EPYC (AVX512-BF16), 2 threads"``."""
        return f"{self.name} ({self.isa}), {self.threads} threads"


def _capabilities() -> dict:
    """PyTorch's CPU capability flags (``torch.cpu.get_capabilities()``, PyTorch >= 2.8), or the
    same flags from its older private probes."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return dict(get())
    probe = {
        "avx2": "_is_avx2_supported",
        "avx512_f": "_is_avx512_supported",
        "avx512_bf16": "_is_avx512_bf16_supported",
        "amx_tile": "_is_amx_tile_supported",
    }
    return {flag: bool(getattr(torch.cpu, fn, lambda: False)()) for flag, fn in probe.items()}


def _cpu_model_name(caps: dict) -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return str(caps.get("cpu_name") or "unknown CPU")


def cpu_info() -> CpuInfo:
    """Describe this CPU (see :class:`CpuInfo`).

    A CPU with bf16 instructions counts as native bf16 only if oneDNN's ISA cap (:func:`onednn_isa_cap`)
    is not a level below them (``SSE41`` ... ``AVX512_CORE_VNNI``, ``AVX2_VNNI_2``; compared in upper case,
    other names left alone as oneDNN ignores them); ``$LIGHTNING_BRATS_CPU_BF16`` (``0``/``1``)
    overrides both. Either is then named in :attr:`CpuInfo.isa`, e.g.
    ``"AVX512-BF16, ONEDNN_MAX_CPU_ISA=AVX2"``."""
    caps = _capabilities()
    amx_bf16 = bool(caps.get("amx_bf16") or (caps.get("amx_tile") and "amx_bf16" not in caps))
    avx512_bf16 = bool(caps.get("avx512_bf16"))
    if amx_bf16:
        isa = "AMX"
    elif avx512_bf16:
        isa = "AVX512-BF16"
    elif caps.get("avx512_f"):
        isa = "AVX-512"
    elif caps.get("avx2"):
        isa = "AVX2"
    else:
        isa = "other"
    native_bf16 = amx_bf16 or avx512_bf16
    variable, cap = onednn_isa_cap()
    if native_bf16 and cap.upper() in _ONEDNN_CAPS_WITHOUT_BF16:
        native_bf16 = False
        isa += f", {variable}={cap}"
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        native_bf16 = forced == "1"
        isa += f", {CPU_BF16_ENV}={forced}"
    return CpuInfo(_cpu_model_name(caps), isa, native_bf16, available_cpus())


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def omp_num_threads() -> int | None:
    """``OMP_NUM_THREADS`` from the environment as a positive ``int``, or ``None`` where it is unset or
    not a positive integer (OpenMP's lists such as ``"4,2"`` cap at their first value)."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def resolve_precision(requested: str | int, accelerator: str = "auto") -> tuple[str, str]:
    """The Lightning precision to train with, and why.

    ``requested`` other than ``"auto"`` is returned as given (an explicit value always wins).
    ``"auto"``:

    - on CUDA: ``"bf16-mixed"`` where the GPU supports bf16 (Ampere and newer), else ``"16-mixed"``;
    - on a CPU: ``"bf16-mixed"`` only where the CPU has native bf16 instructions (AVX512-BF16 or
      AMX-BF16, :func:`cpu_info`), else ``"32"``: without them PyTorch's bf16 convolutions fall
      back to reference kernels, tens of times slower than fp32.

    Args:
        requested: ``trainer.precision`` (``"auto"``, ``32``, ``"bf16-mixed"``, ...).
        accelerator: ``trainer.accelerator`` (``"auto"``, ``"cpu"``, ``"gpu"``, ``"cuda"``);
            ``"auto"`` means CUDA when a CUDA device is present.

    Returns:
        ``(precision, reason)``, e.g. ``("32", "AMD EPYC (AVX2), 2 threads has no native bf16")``.
    """
    if str(requested) != AUTO:
        return str(requested), f"trainer.precision={requested} set explicitly"
    if on_cuda(accelerator):
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "the GPU"
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"{name} supports bf16"
        return "16-mixed", f"{name} has no bf16 support"
    cpu = cpu_info()
    if cpu.native_bf16:
        return "bf16-mixed", f"{cpu.describe()} runs bf16 natively"
    return "32", f"{cpu.describe()} has no native bf16 (bf16 would run PyTorch's slow reference kernels)"


def inference_precision(requested: str, device: torch.device) -> str:
    """``inference.precision`` as ``"32"`` or ``"bf16"``; ``"auto"`` follows :func:`resolve_precision`
    for ``device`` (bf16 where it runs natively, fp32 otherwise; fp16 GPUs predict in fp32).

    Raises:
        ValueError: ``requested`` is not ``"auto"``, ``"32"`` or ``"bf16"``.
    """
    requested = str(requested)
    if requested not in (AUTO, "32", "bf16"):
        raise ValueError(f"inference.precision={requested!r}: expected auto, 32 or bf16")
    if requested != AUTO:
        return requested
    precision, _ = resolve_precision(AUTO, "cuda" if device.type == "cuda" else "cpu")
    return "bf16" if precision == "bf16-mixed" else "32"


def configure_threads(num_workers: int = 0, deterministic: bool = False) -> int:
    """Give PyTorch's intra-op pool every CPU of this process's affinity but those the loader workers need.

    Each DataLoader worker runs one thread of its own (PyTorch sets workers to 1 thread), so the
    main process takes ``available_cpus() - num_workers`` threads, at least 1. On a GPU run the
    main process mostly waits for the device, and the same rule holds. With ``deterministic`` the
    main process takes every CPU whatever the workers: the thread count changes the order of
    floating-point sums in CPU kernels, and a deterministic run must not depend on ``num_workers``.
    An ``OMP_NUM_THREADS`` set in the environment caps the pool, as it caps PyTorch's own default: a
    job that shares the machine (two runs side by side, a test's subprocess) asks for its share that
    way; without the cap its threads would spin against the neighbours' (a 2-thread run beside a
    1-thread one on 2 cores measured 2.5x the CPU time per step).

    Args:
        num_workers: ``data.num_workers`` (DataLoader worker processes).
        deterministic: ``trainer.deterministic``.

    Returns:
        the number of intra-op threads set.
    """
    cpus = available_cpus()
    threads = cpus if deterministic else max(1, cpus - max(0, int(num_workers)))
    why = ", trainer.deterministic: not reduced for the workers" if deterministic else ""
    cap = omp_num_threads()
    if cap is not None and cap < threads:
        threads, why = cap, f"{why}, capped by OMP_NUM_THREADS={cap}"
    torch.set_num_threads(threads)
    log.info(f"CPU threads: {threads} intra-op (of {cpus} CPUs in this process's affinity), {num_workers} loader workers{why}")
    return threads


def choose_precision_and_threads(cfg: DictConfig) -> None:
    """Resolve ``trainer.precision=auto`` for this machine and size PyTorch's CPU thread pool.

    Writes the resolved precision back into ``cfg.trainer.precision`` (so the logged config and the
    checkpoint say what ran) and logs the decision with its reason; see
    :func:`~lightning_brats.training.hardware.resolve_precision` and :func:`~lightning_brats.training.hardware.configure_threads`.
    Also applies :func:`configure_cuda` on a CUDA run. Returns nothing.

    Raises:
        ValueError: ``$LIGHTNING_BRATS_SYNC_DEBUG`` is not ``warn``, ``error`` or ``default`` (see :func:`configure_cuda`).
    """
    from omegaconf import open_dict

    from lightning_brats.training.distributed import log_rank_zero

    precision, reason = resolve_precision(cfg.trainer.get("precision", "auto"), cfg.trainer.get("accelerator", "auto"))
    with open_dict(cfg):
        cfg.trainer.precision = precision
    log_rank_zero(log, logging.INFO, f"Precision {precision}: {reason}")
    cuda = configure_cuda(cfg.trainer.get("accelerator", "auto"))
    if cuda:
        log_rank_zero(log, logging.INFO, cuda)
    configure_threads(int(cfg.data.get("num_workers") or 0), deterministic=bool(cfg.trainer.get("deterministic")))


#: ``torch.set_float32_matmul_precision`` on CUDA: ``"high"`` lets float32 matrix products (and
#: cuDNN convolutions, through ``torch.backends.cudnn.allow_tf32``, on by default) use TF32 tensor
#: cores on Ampere and newer GPUs, as Lightning recommends; mixed-precision runs compute in bf16/fp16 anyway.
CUDA_FLOAT32_MATMUL_PRECISION = "high"


def on_cuda(accelerator: str = "auto") -> bool:
    """Whether ``trainer.accelerator`` (``"auto"``, ``"cpu"``, ``"gpu"``, ``"cuda"``) trains on a CUDA GPU here."""
    return str(accelerator) in ("gpu", "cuda") or (str(accelerator) == "auto" and torch.cuda.is_available())


#: Environment variable naming ``torch.cuda.set_sync_debug_mode`` for a CUDA run (``warn``: a warning
#: at every operation that makes the host wait for the GPU; ``error``: an exception), to find them.
SYNC_DEBUG_ENV = "LIGHTNING_BRATS_SYNC_DEBUG"


def configure_cuda(accelerator: str = "auto") -> str | None:
    """Set what a CUDA run needs before the trainer is built: float32 matrix products on TF32 tensor
    cores (:data:`CUDA_FLOAT32_MATMUL_PRECISION`), and ``torch.cuda.set_sync_debug_mode`` where
    ``$LIGHTNING_BRATS_SYNC_DEBUG`` asks for it. cuDNN's autotuner is ``trainer.benchmark``
    (``conf/trainer/gpu.yaml``), which Lightning applies.

    Returns:
        one line for the log, or ``None`` when the run is not on CUDA (nothing is changed).

    Raises:
        ValueError: ``$LIGHTNING_BRATS_SYNC_DEBUG`` is not ``warn``, ``error`` or ``default``.
    """
    if not on_cuda(accelerator):
        return None
    torch.set_float32_matmul_precision(CUDA_FLOAT32_MATMUL_PRECISION)
    line = f"CUDA: float32 matmul precision {CUDA_FLOAT32_MATMUL_PRECISION!r} (TF32 tensor cores)"
    mode = os.environ.get(SYNC_DEBUG_ENV, "").strip()
    if mode:
        if mode not in ("warn", "error", "default"):
            raise ValueError(f"{SYNC_DEBUG_ENV}={mode!r}: expected warn, error or default")
        torch.cuda.set_sync_debug_mode(mode)
        line += f"; torch.cuda.set_sync_debug_mode({mode!r}) ({SYNC_DEBUG_ENV})"
    return line


class OutOfDeviceMemory(RuntimeError):
    """The GPU (or the CPU's allocator) ran out of memory; the message is one line naming the run's
    memory settings, the peak memory reached and what to lower. Raised from ``torch.OutOfMemoryError``
    (its ``__cause__``); the command-line entry points print it without a traceback."""


def out_of_memory(stage: str, settings: dict, lower: str, device: torch.device | None = None) -> OutOfDeviceMemory:
    """An :class:`OutOfDeviceMemory` for ``stage`` (``"training"``, ``"prediction of case X"``).

    Args:
        stage: what ran out of memory.
        settings: the settings that size memory, as ``{name: value}`` (``data.patch_size``,
            ``data.batch_size``, ``trainer.precision``; ``inference.sw_batch_size`` ...), named in the message.
        lower: what to change, e.g. ``"data.batch_size or data.patch_size"``.
        device: the CUDA device whose peak allocation is named (``None``: the current one, when CUDA is available).
    """
    peak = ""
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        try:
            used = torch.cuda.max_memory_allocated(device) / 2**30
            total = torch.cuda.get_device_properties(device or torch.cuda.current_device()).total_memory / 2**30
            peak = f"; peak {used:.1f} GiB allocated of the GPU's {total:.1f} GiB"
        except (RuntimeError, ValueError, AssertionError):
            peak = ""
    named = ", ".join(f"{k}={v}" for k, v in settings.items())
    return OutOfDeviceMemory(f"out of memory during {stage} ({named}{peak}); lower {lower}")

"""Which CPU memory allocator the process runs with, and how to get a faster one.

CPU training of 3D networks allocates and frees large tensors every step; glibc's ``malloc``
returns them to the system and faults them in again, tcmalloc and jemalloc keep them (the gain
measured here is beside the README's set-up lines). An allocator can only
be swapped before the process starts (``LD_PRELOAD``), so training cannot pick it up by itself;
it says at start which one is loaded and, when neither is but one is installed, the exact line to use.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Sequence
from pathlib import Path

#: Library names, best first (tcmalloc's minimal build has no heap profiler, the usual choice for PyTorch).
ALLOCATORS = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libjemalloc.so.2")


def _search_dirs() -> list[str]:
    return [*glob.glob("/usr/lib/*-linux-gnu"), "/usr/lib", "/usr/lib64", "/usr/local/lib", str(Path(sys.prefix) / "lib")]


def loaded_allocator(maps: str | None = None) -> str | None:
    """The tcmalloc or jemalloc library mapped into this process, or ``None`` (glibc malloc).

    Args:
        maps: the text of ``/proc/self/maps`` (read when ``None``; Linux only, else ``None``).
    """
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return None
    for line in maps.splitlines():
        path = line.split()[-1] if line.split() else ""
        if "libtcmalloc" in path or "libjemalloc" in path:
            return path
    return None


def installed_allocator(dirs: Sequence[str] | None = None) -> str | None:
    """The first of :data:`ALLOCATORS` found in ``dirs`` (default: the system and environment library folders)."""
    for name in ALLOCATORS:
        for folder in dirs if dirs is not None else _search_dirs():
            candidate = Path(folder) / name
            if candidate.is_file():
                return str(candidate)
    return None


def describe_allocator(maps: str | None = None, dirs: Sequence[str] | None = None) -> str:
    """One line for the training log: the allocator in use, or the ``LD_PRELOAD=...`` to use.

    Examples:
        ``CPU allocator: /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 (preloaded)``;
        ``CPU allocator: glibc malloc; tcmalloc is installed: for faster CPU training start with
        LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python train.py ...``
    """
    loaded = loaded_allocator(maps)
    if loaded:
        return f"CPU allocator: {loaded} (preloaded)"
    found = installed_allocator(dirs)
    if found:
        name = "jemalloc" if "jemalloc" in Path(found).name else "tcmalloc"
        preload = ":".join(p for p in (found, os.environ.get("LD_PRELOAD", "")) if p)
        return (
            f"CPU allocator: glibc malloc; {name} is installed: for faster CPU training start with "
            f"LD_PRELOAD={preload} python train.py ..."
        )
    return (
        "CPU allocator: glibc malloc (no tcmalloc or jemalloc found; CPU training is faster with one: "
        "apt install libtcmalloc-minimal4, then LD_PRELOAD=<path of libtcmalloc_minimal.so.4>)"
    )

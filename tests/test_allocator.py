"""The allocator line of the training log: what is preloaded, or the exact LD_PRELOAD to use."""

from __future__ import annotations

from lightning_brats.training.allocator import describe_allocator, installed_allocator, loaded_allocator

GLIBC_ONLY = """7f0000000000-7f0000001000 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000002000-7f0000003000 r--p 00000000 00:00 0 [heap]
"""
TCMALLOC = GLIBC_ONLY + "7f0000004000-7f0000005000 r-xp 00000000 08:01 456 /opt/lib/libtcmalloc_minimal.so.4\n"


def test_a_preloaded_tcmalloc_is_named(tmp_path):
    assert loaded_allocator(TCMALLOC) == "/opt/lib/libtcmalloc_minimal.so.4"
    assert describe_allocator(TCMALLOC, [str(tmp_path)]) == "CPU allocator: /opt/lib/libtcmalloc_minimal.so.4 (preloaded)"


def test_an_installed_but_unused_allocator_gives_the_ld_preload_line(tmp_path, monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert loaded_allocator(GLIBC_ONLY) is None
    assert installed_allocator([str(tmp_path)]) == str(tmp_path / "libtcmalloc_minimal.so.4")  # tcmalloc first
    line = describe_allocator(GLIBC_ONLY, [str(tmp_path)])
    assert f"LD_PRELOAD={tmp_path / 'libtcmalloc_minimal.so.4'} python train.py" in line
    (tmp_path / "libtcmalloc_minimal.so.4").unlink()
    assert "jemalloc is installed" in describe_allocator(GLIBC_ONLY, [str(tmp_path)])


def test_no_allocator_says_how_to_get_one(tmp_path):
    assert "apt install libtcmalloc-minimal4" in describe_allocator(GLIBC_ONLY, [str(tmp_path)])


def test_this_process_is_read_from_proc():
    """The suite runs with tcmalloc preloaded (.ci/run, PREAMBLE) or without: either way the answer
    agrees with LD_PRELOAD."""
    import os

    preloaded = "tcmalloc" in os.environ.get("LD_PRELOAD", "") or "jemalloc" in os.environ.get("LD_PRELOAD", "")
    assert (loaded_allocator() is not None) == preloaded

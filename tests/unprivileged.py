"""Run the project's entry points as an unprivileged user (uid/gid 65534), wherever the checkout lives.

Tests of file permissions must run the tools as a user for whom permissions count (root ignores them).
That user must reach the code: ``train.py``, ``lightning_brats/``, ``conf/``, the interpreter with its
standard library and the installed packages. A checkout cloned inside ``mktemp -d`` (mode 700), its
``.venv`` inside it, or an interpreter under ``/root`` (pyenv, uv) are out of that user's reach: the
child then dies with ``Permission denied`` on ``train.py`` or ``No module named lightning_brats.cli``.

:func:`stage` builds, in a world-readable temporary folder, what the user needs: a copy of the entry
points, the package and its configs, and, where the interpreter or its packages are out of reach, a
virtual environment of hard links to them (same bytes, no copy of torch's 2 GB; hard links need the
temporary folder on the same filesystem). Where that cannot be arranged it raises :class:`StagingError`
with one line saying why and what to do.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: uid and gid of user nobody
NOBODY = 65534
#: Runs a command as user nobody with no supplementary groups.
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
#: What the entry points need from the checkout (``pyproject.toml`` beside ``conf/`` marks a checkout,
#: so ``lightning_brats.configs`` takes ``conf/`` as the config folder).
CHECKOUT_FILES = ["train.py", "predict.py", "eval.py", "pyproject.toml"]
CHECKOUT_FOLDERS = ["lightning_brats", "conf"]


#: Run as nobody after staging: imports the package and its configs' module, finds (without importing:
#: seconds on a busy machine) the heavy dependencies and opens torch's first file; fails naming what is missing.
PROBE = """
import importlib.util, sys
import lightning_brats.configs as configs
assert configs.FROM_CHECKOUT, "conf/ or pyproject.toml missing beside lightning_brats/"
missing = [m for m in ("torch", "pytorch_lightning", "hydra", "nibabel", "lightning_brats.cli.train")
           if importlib.util.find_spec(m) is None]
assert not missing, "cannot find " + ", ".join(missing)
open(importlib.util.find_spec("torch").origin, "rb").close()
"""


class StagingError(RuntimeError):
    """The unprivileged user cannot be given the code or an interpreter; the message says why and what to do."""


@dataclass
class Runner:
    """How to start the project's Python as the unprivileged user.

    Attributes:
        prefix: the command before the interpreter (``AS_NOBODY``, or nothing when not root).
        python: the interpreter that user can run.
        cwd: the folder holding ``train.py``, ``predict.py``, ``eval.py``, ``lightning_brats/`` and ``conf/``.
        env: variables to set on top of the caller's environment (``PYTHONPATH``, ``LD_LIBRARY_PATH``).
    """

    prefix: list[str]
    python: str
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
        """``python ARGS`` in :attr:`cwd` as the unprivileged user, with ``env`` updated by :attr:`env`."""
        merged = {k: v for k, v in {**env, **self.env}.items() if k != "PYTHONHOME"}
        return subprocess.run([*self.prefix, self.python, *args], cwd=self.cwd, env=merged, capture_output=True,
                              text=True, timeout=timeout, check=False)


def why_not_as_another_user() -> str | None:
    """Why this process cannot start one for which permissions count, or ``None`` when it can."""
    if os.geteuid() != 0:
        return None  # not root: permissions count for this user already
    if shutil.which("setpriv") is None:
        return "setpriv is not installed, so root cannot run the tools as an unprivileged user: apt-get install util-linux"
    probe = subprocess.run([*AS_NOBODY, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:  # e.g. a container without CAP_SETUID/CAP_SETGID
        return f"cannot switch to uid {NOBODY} here (setpriv: {probe.stderr.strip()}); run the tests as a non-root user"
    return None


def unreachable(paths: list[Path]) -> list[Path]:
    """Those of ``paths`` user nobody cannot read (folders: read and enter), asked of the kernel as that user."""
    script = 'for p; do if [ -d "$p" ]; then [ -r "$p" ] && [ -x "$p" ]; else [ -r "$p" ]; fi || echo "$p"; done'
    proc = subprocess.run([*AS_NOBODY, "sh", "-c", script, "sh", *map(str, paths)], capture_output=True, text=True,
                          check=True)
    return [Path(line) for line in proc.stdout.splitlines()]


def closed_ancestor(path: Path) -> Path | None:
    """The outermost folder above ``path`` that others cannot enter (no ``o+x``), or ``None``."""
    for parent in reversed(Path(path).parents):
        if not parent.stat().st_mode & 0o001:
            return parent
    return None


def _hint(path: Path) -> str:
    closed = closed_ancestor(path)
    return f"{closed} is mode {closed.stat().st_mode & 0o777:o}" if closed else "its folders are closed to others"


def _link_tree(source: Path, target: Path, skip=lambda name: False) -> None:
    """Rebuild folder ``source`` at ``target``: folders 0755, files hard-linked, symbolic links copied as links;
    entries whose name ``skip`` accepts are left out (folders with all they hold)."""
    source_text, target_text = str(source), str(target)
    for folder, dirs, files in os.walk(source_text):
        dirs[:] = [d for d in dirs if not skip(d)]
        into = target_text + folder[len(source_text):]
        os.makedirs(into, mode=0o755, exist_ok=True)
        os.chmod(into, 0o755)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            if skip(name):
                continue
            src, dst = os.path.join(folder, name), os.path.join(into, name)
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
                continue
            try:
                os.link(src, dst)
            except OSError as error:
                raise StagingError(
                    f"cannot hard-link {src} for uid {NOBODY} (it cannot reach the original: {_hint(Path(src))}) "
                    f"into {target} ({error.strerror}); set TMPDIR to a folder others can enter on the same "
                    f"filesystem, or clone the project where others can read it"
                ) from None


def _copy_checkout(target: Path) -> None:
    """Copy what the entry points need from the checkout into ``target``, readable by anyone."""
    target.mkdir(mode=0o755)
    for name in CHECKOUT_FILES:
        shutil.copy(REPO / name, target / name)
    for name in CHECKOUT_FOLDERS:
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _interpreter_paths() -> dict[str, Path]:
    """What a child interpreter like this one reads: the executables, the standard library, the packages."""
    paths = {
        "executable": Path(sys.executable),
        "base executable": Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable))),
        "standard library": Path(sysconfig.get_path("stdlib")) / "os.py",
        "extension modules": Path(sysconfig.get_path("platstdlib")) / "lib-dynload",
    }
    if sys.prefix != sys.base_prefix:
        paths["venv config"] = Path(sys.prefix) / "pyvenv.cfg"
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        paths["libpython"] = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("LDLIBRARY")
    for number, folder in enumerate(site.getsitepackages()):
        if Path(folder).is_dir():
            paths[f"site-packages {number}"] = Path(folder)
    return paths


def _stage_interpreter(target: Path, blocked: set[str], paths: dict[str, Path]) -> tuple[str, dict[str, str]]:
    """A virtual environment under ``target`` made of hard links to this interpreter and its packages.

    Returns:
        ``(python, env)``: the interpreter's path and the variables it needs.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    env: dict[str, str] = {}
    base_executable = paths["base executable"]
    if blocked & {"base executable", "standard library", "extension modules", "libpython"}:
        base = target / "base"
        (base / "bin").mkdir(mode=0o755, parents=True)
        shutil.copy2(base_executable, base / "bin" / version)  # one binary of a few MB
        stdlib = Path(sysconfig.get_path("stdlib"))
        _link_tree(stdlib, base / "lib" / version, skip=lambda name: name == "site-packages")
        if "libpython" in paths:
            for library in Path(sysconfig.get_config_var("LIBDIR")).glob("libpython*.so*"):
                shutil.copy2(library, base / "lib" / library.name)  # tens of MB; LD_LIBRARY_PATH beats its RUNPATH
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(base / "lib"), os.environ.get("LD_LIBRARY_PATH")]))
        base_executable = base / "bin" / version
    venv = target / "venv"
    (venv / "bin").mkdir(mode=0o755, parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {base_executable.parent}\ninclude-system-site-packages = false\n"
                                     f"version = {'.'.join(map(str, sys.version_info[:3]))}\n")
    (venv / "bin" / "python").symlink_to(base_executable)
    packages = venv / "lib" / version / "site-packages"
    packages.mkdir(mode=0o755, parents=True)
    reachable = []
    for key, folder in paths.items():  # the checkout is on PYTHONPATH: editable-install hooks stay out
        if key.startswith("site-packages") and key in blocked:
            _link_tree(folder, packages, skip=lambda name: name.startswith("__editable__"))
        elif key.startswith("site-packages"):
            reachable.append(str(folder))
    if reachable:  # used in place, as plain path entries (their own .pth files are not run)
        (packages / "reachable-site-packages.pth").write_text("".join(f"{folder}\n" for folder in reachable))
    for path in [venv, *venv.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    return str(venv / "bin" / "python"), env


def stage(target: Path) -> Runner:
    """Make ``target`` (a new folder) hold what user nobody needs to run the project; return how to run it.

    The checkout's entry points, ``lightning_brats/`` and ``conf/`` are copied; this interpreter is used
    as it is where nobody can reach it, else rebuilt from hard links (:func:`_stage_interpreter`). The result
    is checked as that user (:data:`PROBE`: the package imports, its dependencies are found).

    Raises:
        StagingError: ``target`` or the interpreter cannot be made reachable; one line says why and what to do.
    """
    target = Path(target)
    target.chmod(0o755)
    if closed_ancestor(target / "x") is not None:
        raise StagingError(f"{target} is not reachable by uid {NOBODY} ({_hint(target / 'x')}); "
                           f"set TMPDIR to a folder others can enter (e.g. TMPDIR=/tmp)")
    source = target / "src"
    _copy_checkout(source)
    paths = _interpreter_paths()
    blocked = {key for key, path in paths.items() if path in set(unreachable(list(paths.values())))}
    if blocked:
        python, env = _stage_interpreter(target, blocked, paths)
    else:
        python, env = sys.executable, {}
    runner = Runner(prefix=list(AS_NOBODY), python=python, cwd=source, env={**env, "PYTHONPATH": str(source)})
    probe = runner.run(["-c", PROBE], env={**os.environ, "HOME": str(target)}, timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise StagingError(f"uid {NOBODY} cannot import the project with {python} from {source} ({last}); "
                           f"blocked for that user: {', '.join(sorted(blocked)) or 'nothing found'}")
    return runner


def as_current_user() -> Runner:
    """A :class:`Runner` for a non-root user: the checkout and this interpreter as they are."""
    return Runner(prefix=[], python=sys.executable, cwd=REPO)

"""The installable package: configs ship inside it (pkg://lightning_brats.conf) and the console
scripts work from any folder after a plain (not editable) install of the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from lightning_brats import configs
from tests.conftest import REPO


def test_every_package_folder_is_listed_in_pyproject():
    """pyproject lists its packages (find cannot map conf/): a new subpackage must be added there."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "lightning_brats").rglob("__init__.py")}
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert "lightning_brats.conf" in listed and (REPO / "conf" / "__init__.py").is_file()


def test_a_checkout_uses_its_own_conf_folder():
    assert configs.FROM_CHECKOUT
    assert Path(configs.CONFIG_DIR) == REPO / "conf" and configs.CONFIG_PATH == configs.CONFIG_DIR


def _commands(text: str) -> list[str]:
    """The shell commands of ``text``: its lines without blank lines and comments, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_ci_runs_the_readme_set_up_and_test_lines_verbatim():
    """The README's set-up is CI's set-up (issue 24): every set-up and test line of the README's first block
    is a line of .ci/run, in the same order, and CI installs and tests with no line the README lacks.
    Only the torch line differs (CI takes the CPU wheel from our index first) and CI does not train."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Two commands on a fresh machine", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    readme_lines = [c for c in _commands(block) if not c.startswith("pip install torch ") and c != "python train.py"]
    ci_lines = _commands((REPO / ".ci" / "run").read_text())
    assert [c for c in ci_lines if c in readme_lines] == readme_lines, (readme_lines, ci_lines)
    installs_and_tests = [c for c in ci_lines if "pip install -e" in c or "pytest" in c or c.startswith((".ci/", "export LD_"))]
    assert installs_and_tests == readme_lines, f"lines of .ci/run the README's set-up lacks: {installs_and_tests}"
    assert ci_lines[-1] == "python -m pytest -q tests" == readme_lines[-1]
    assert 'pip install -e ".[test]"' in readme_lines and ".ci/system-packages.sh" in readme_lines


def test_the_test_extra_holds_every_extra_but_the_benchmarks():
    """``pip install -e ".[test]"`` must bring all the tests import: every other extra except ``bench``
    (input-pipeline benchmarks' peers, not imported by the tests). A new extra goes into ``test``."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (requirement,) = extras["test"]
    name, _, listed = requirement.partition("[")
    assert name == "lightning-brats" and listed.endswith("]"), requirement
    assert sorted(listed[:-1].split(",")) == sorted(set(extras) - {"test", "bench"})


def _copy_sources(dest: Path) -> Path:
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "local")
    for name in ("lightning_brats", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    # a per-machine config that must not be packaged
    (src / "conf" / "local").mkdir()
    (src / "conf" / "local" / "default.yaml").write_text("secret_root: /home/me\n")
    return src


@pytest.mark.slow
def test_wheel_installs_and_runs_from_any_folder(tmp_path):
    # build the wheel with this environment's setuptools (no download)
    src = _copy_sources(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("lightning_brats-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n for n in names if n.startswith("lightning_brats/conf/") and n.endswith(".yaml")}
    expected = {"lightning_brats/conf/" + p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")
                if p.relative_to(REPO / "conf").parts[0] != "local"}
    assert shipped == expected
    assert not any("/local/" in n for n in names)
    # a fresh venv that sees this environment's packages through a .pth (no download), then the wheel, not editable
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "_project_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    bin_dir, work = venv / "bin", tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LIGHTNING_BRATS_ROOT")}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1")

    def run(*args, timeout=120):
        return subprocess.run([str(a) for a in args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    where = run(python, "-c", "import lightning_brats.configs as c; print(c.CONFIG_PATH); print(c.__file__)")
    assert where.stdout.splitlines()[0] == "pkg://lightning_brats.conf"
    assert where.stdout.splitlines()[1].startswith(site)  # the installed copy, not this checkout
    for command in (["lightning-brats-predict"], ["lightning-brats-eval"], ["lightning-brats", "check-data"]):
        out = run(bin_dir / command[0], *command[1:], "--help")
        assert out.returncode == 0, out.stderr[-2000:]
        datasets = sorted(path.stem for path in (REPO / "conf" / "data").glob("*.yaml"))
        assert f"data: {', '.join(datasets)}" in [line.strip() for line in out.stdout.splitlines()]
    # a user's config folder through hydra.searchpath: a new data option and a per-machine local config
    user = tmp_path / "my_conf"
    (user / "data").mkdir(parents=True)
    (user / "local").mkdir()
    (user / "data" / "mine.yaml").write_text("defaults:\n  - brats20\n  - _self_\nroot: /data/mine\n")
    (user / "local" / "default.yaml").write_text("# @package _global_\ntags: [from_local]\n")
    shown = run(bin_dir / "lightning-brats-train", "--cfg", "job", "data=mine", f"hydra.searchpath=[file://{user}]")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "root: /data/mine" in shown.stdout and "- from_local" in shown.stdout
    # train from a folder outside the checkout: outputs land under it
    trained = run(bin_dir / "lightning-brats-train", "debug=fast_dev_run", "data.phantoms.num_cases=4", "data.num_folds=2",
                  timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (card,) = (work / "logs" / "debug" / "runs").glob("*/model_card.md")
    assert "unknown (not a git checkout)" in card.read_text() and "fast_dev_run" in card.read_text()
    assert len(list((work / "data" / "brats_sample_phantoms").glob("BraTS20_Training_*"))) == 4

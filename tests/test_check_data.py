"""``lightning-brats check-data``: a table of what is there and every problem, naming files."""

from __future__ import annotations

import subprocess
import sys

import hydra
import pytest

from lightning_brats.cli.check_data import check_dataset
from tests.conftest import REPO, compose_config, copy_case, real_label

pytestmark = pytest.mark.real_data


@pytest.fixture
def mixed_root(brats2018_root, tmp_path):
    """One good case, one missing its T2, one with a truncated FLAIR, one without labels."""
    root = tmp_path / "root"
    copy_case(brats2018_root / "Brats18_CBICA_ABM_1", root)
    (copy_case(brats2018_root / "Brats18_CBICA_ALU_1", root) / "Brats18_CBICA_ALU_1_t2.nii.gz").unlink()
    bad = copy_case(brats2018_root / "Brats18_CBICA_AME_1", root) / "Brats18_CBICA_AME_1_flair.nii.gz"
    data = bad.read_bytes()
    bad.unlink()
    bad.write_bytes(data[:2000])
    (copy_case(brats2018_root / "Brats18_CBICA_AQN_1", root) / "Brats18_CBICA_AQN_1_seg.nii.gz").unlink()
    return root


def test_report_lists_cases_counts_and_every_problem(mixed_root, brats2018_root, tmp_path):
    cfg = compose_config(["data=brats20", f"data.root={mixed_root}"], tmp_path / "out")
    report = check_dataset(hydra.utils.instantiate(cfg.data))
    assert [r["case_id"] for r in report.rows] == ["Brats18_CBICA_ABM_1", "Brats18_CBICA_AQN_1"]
    good = report.rows[0]
    label = real_label(brats2018_root, "Brats18_CBICA_ABM_1")
    assert good["label_voxels"] == {"ncr_net": int((label == 1).sum()), "ed": int((label == 2).sum()), "et": int((label == 4).sum())}
    assert good["shape"] == (240, 240, 155) and good["spacing"] == (1.0, 1.0, 1.0)
    assert report.rows[1]["label_voxels"] is None
    assert len(report.problems) == 2
    assert any("Brats18_CBICA_ALU_1" in p and "missing modality ['t2']" in p for p in report.problems)
    assert any("Brats18_CBICA_AME_1_flair.nii.gz: cannot read NIfTI" in p for p in report.problems)


@pytest.mark.slow
def test_cli_prints_table_and_exits_1_on_problems(mixed_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_brats.cli", "check-data", "data=brats20", f"data.root={mixed_root}",
         f"paths.root_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Brats18_CBICA_ABM_1" in proc.stdout and "2 problem(s)" in proc.stdout
    assert "without labels: 1" in proc.stdout


def test_empty_root_is_reported(tmp_path):
    cfg = compose_config(["data=brats20", f"data.root={tmp_path}"], tmp_path / "out")
    report = check_dataset(hydra.utils.instantiate(cfg.data))
    assert report.rows == [] and report.problems and "no cases found under" in report.problems[0]

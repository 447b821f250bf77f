"""The benchmarks under experiments/benchmarks run (tiny mode), their peer pipelines see our cases and
shapes, and the StepTimer of debug=benchmark accounts steps and data waits. No timings are asserted."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "experiments" / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # augmentation.py imports input_pipeline's report
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pipeline():
    return _load("input_pipeline")


@pytest.fixture(scope="module")
def tiny_cases(pipeline, brats2018_root, tmp_path_factory):
    return pipeline.load_cases(brats2018_root, 2, tmp_path_factory.mktemp("bench_cache"), [3.0, 3.0, 3.0])


@pytest.mark.real_data
@pytest.mark.parametrize(("patch", "batch"), [((32, 32, 32), 2), ((48, 48), 8)])
def test_monai_pipeline_sees_our_cases_and_gives_our_shapes(pipeline, tiny_cases, patch, batch):
    """MONAI (a core dependency) against ours; TorchIO and batchgeneratorsv2 are optional peers of the
    script only (pip install -e '.[bench]') and not part of the suite."""
    ids = [c.case_id for c in tiny_cases]
    shapes = {}
    for name in ("ours", "ours-batch", "monai"):
        batches, seen = pipeline.PIPELINES[name](tiny_cases, patch, batch, 0)
        assert seen == ids, name
        first = next(iter(batches))
        shapes[name] = (tuple(first["image"].shape), tuple(first["target"].shape))
        assert first["image"].dtype == torch.float32 and set(torch.unique(first["target"]).tolist()) <= {0.0, 1.0}
        if "case_id" in first:
            assert set(first["case_id"]) <= set(ids)
    expected = ((batch, 4, *patch), (batch, 3, *patch))  # 4 modalities, WT/TC/ET
    assert shapes == {"ours": expected, "ours-batch": expected, "monai": expected}


@pytest.mark.real_data
def test_input_pipeline_tiny_writes_its_table(pipeline, brats2018_root, tmp_path):
    out = tmp_path / "pipeline.csv"
    rows = pipeline.main(["--tiny", "--root", str(brats2018_root), "--cache-dir", str(tmp_path / "cache"),
                          "--pipelines", "ours", "ours-batch", "monai", "--dims", "3", "--csv", str(out)])
    with open(out) as handle:
        written = list(csv.DictReader(handle))
    assert [r["pipeline"] for r in written] == ["ours", "ours-batch", "monai"] == [r["pipeline"] for r in rows]
    assert all(float(r["samples_per_s"]) > 0 and r["image"] == "2x4x32x32x32" for r in written)


def test_a_missing_peer_is_reported_not_timed(pipeline, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "torchio":
            raise ImportError("no torchio", name="torchio")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    assert "not installed (torchio" in pipeline.available("torchio")
    assert pipeline.available("monai") is None


def test_augmentation_benchmark_tiny_writes_its_table(tmp_path):
    out = tmp_path / "augmentation.csv"
    rows = _load("augmentation").main(["--tiny", "--csv", str(out)])
    with open(out) as handle:
        written = list(csv.DictReader(handle))
    assert [(r["dims"], r["spatial_prob"]) for r in written] == [("3", "0.2"), ("3", "1.0"), ("2", "0.2"), ("2", "1.0")]
    assert all(r["cpu_ms_per_sample"] > 0 and r["batch_cpu_ms_per_sample"] > 0 for r in rows)


class _Module:
    device = torch.device("cpu")


class _Trainer:
    loggers = ()
    global_step = 0
    is_global_zero = True


def test_step_timer_separates_steps_from_data_waits(tmp_path, monkeypatch):
    from lightning_brats.callbacks.step_timer import StepTimer

    # a clock: each batch waits 0.5 s for data, then its step takes 2 s
    clock = iter([0.0, 0.5, 2.5, 3.0, 5.0, 5.5, 7.5, 8.0, 10.0])
    monkeypatch.setattr(StepTimer, "_now", staticmethod(lambda module: next(clock)))
    timer = StepTimer(skip=1, dirpath=str(tmp_path))
    trainer, module = _Trainer(), _Module()
    timer.on_train_epoch_start(trainer, module)
    for i in range(4):
        timer.on_train_batch_start(trainer, module, None, i)
        timer.on_train_batch_end(trainer, module, None, None, i)
    timer.on_fit_end(trainer, module)
    assert timer.summary["benchmark/steps_timed"] == 3
    assert timer.summary["benchmark/step_s"] == pytest.approx(2.0)
    assert timer.summary["benchmark/data_wait_s"] == pytest.approx(0.5)
    assert timer.summary["benchmark/steps_per_s_with_data"] == pytest.approx(1 / 2.5)
    assert timer.summary["benchmark/data_wait_share"] == pytest.approx(0.2)
    assert len(json.loads((tmp_path / "step_times.json").read_text())["steps"]) == 4


@pytest.mark.slow
def test_debug_benchmark_times_the_configured_steps(phantom_root, tmp_path, monkeypatch):
    """Also: with data.augment.device=batch, Lightning runs the datamodule's hooks on every training batch."""
    from lightning_brats.cli.train import train
    from lightning_brats.data.batch_augment import BatchAugmentation
    from tests.conftest import compose_config

    calls = []
    original = BatchAugmentation.__call__
    monkeypatch.setattr(BatchAugmentation, "__call__", lambda self, *a: calls.append(a[0].shape) or original(self, *a))

    cfg = compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.patch_size=[32,32,32]", "logger=csv",
         "model.net.base_filters=8", "debug=benchmark", "debug_steps=6", "callbacks.step_timer.skip=2",
         "data.augment.device=batch"],
        tmp_path, tmp_path / "cache",
    )
    train(cfg)
    record = json.loads((tmp_path / "step_times.json").read_text())
    assert len(record["steps"]) == 6 and len(record["waits"]) == 6 and record["benchmark/steps_timed"] == 4
    assert not list(tmp_path.rglob("*.ckpt"))
    assert calls == [(2, 4, 32, 32, 32)] * 6

"""The benchmarks under experiments/benchmarks run (tiny mode), their peer pipelines see our cases and
shapes, and the StepTimer of debug=benchmark accounts steps and data waits. No timings are asserted."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
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


@pytest.mark.slow  # runs every pipeline of the benchmark, ours and the peers'
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


@pytest.mark.parametrize("intensity_set,elastic", [("none", "0"), ("nnunet", "1")])
def test_augmentation_benchmark_tiny_writes_its_table(tmp_path, intensity_set, elastic):
    out = tmp_path / "augmentation.csv"
    rows = _load("augmentation").main(["--tiny", "--csv", str(out), "--intensity-set", intensity_set,
                                       "--elastic-prob", elastic])
    with open(out) as handle:
        written = list(csv.DictReader(handle))
    assert [(r["dims"], r["spatial_prob"]) for r in written] == [("3", "0.2"), ("3", "1.0"), ("2", "0.2"), ("2", "1.0")]
    assert {r["intensity_set"] for r in written} == {intensity_set}
    assert {float(r["elastic_prob"]) for r in written} == {float(elastic)}
    assert all(r["cpu_ms_per_sample"] > 0 and r["batch_cpu_ms_per_sample"] > 0 for r in rows)


class _Module:
    device = torch.device("cpu")
    hparams = types.MappingProxyType({"compile": False})


class _Trainer:
    loggers = ()
    global_step = 0
    is_global_zero = True
    world_size = 1
    precision = "32"
    strategy = type("Strategy", (), {"root_device": torch.device("cpu")})()


def test_step_timer_separates_steps_from_data_waits(tmp_path, monkeypatch):
    from lightning_brats.training.callbacks import step_timer

    # a clock: each batch waits 0.5 s for data, then its step takes 2 s
    now = [0.0]
    monkeypatch.setattr(step_timer.time, "perf_counter", lambda: now[0])
    timer = step_timer.StepTimer(skip=1, dirpath=str(tmp_path), count_flops=False)
    trainer, module = _Trainer(), _Module()
    timer.on_train_start(trainer, module)
    for i in range(4):
        now[0] += 0.5
        timer.on_train_batch_start(trainer, module, {"image": torch.zeros(2, 4, 8, 8, 8)}, i)
        now[0] += 2.0
        timer.on_train_batch_end(trainer, module, None, None, i)
    timer.on_train_end(trainer, module)
    s = timer.summary
    # the window: from the start of step 1 (t = 3.0) to the end of step 3 (t = 10.0), 3 steps of 2 s
    assert s["benchmark/steps_timed"] == 3
    assert s["benchmark/step_s"] == pytest.approx(2.0) and s["benchmark/median_step_s"] == pytest.approx(2.0)
    assert s["benchmark/wall_s_per_step"] == pytest.approx(7.0 / 3)
    assert s["benchmark/data_wait_s"] == pytest.approx(1.0 / 3)  # two waits of 0.5 s inside the window
    assert s["benchmark/median_data_wait_s"] == pytest.approx(0.5)
    assert s["benchmark/steps_per_s_with_data"] == pytest.approx(3 / 7.0)
    assert s["benchmark/steps_per_s_without_data"] == pytest.approx(0.5)
    assert s["benchmark/data_wait_share"] == pytest.approx(1 / 7.0)
    assert s["benchmark/volumes_per_s"] == pytest.approx(2 * 3 / 7.0)
    assert s["benchmark/flops_per_step"] is None and s["benchmark/peak_memory_gib"] is None
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
    # a wait between each two steps; the figures from the timed window's totals agree with each other
    assert len(record["steps"]) == 6 and len(record["waits"]) == 5 and record["benchmark/steps_timed"] == 4
    with_data, without = record["benchmark/steps_per_s_with_data"], record["benchmark/steps_per_s_without_data"]
    assert 0 < with_data <= without and record["benchmark/data_wait_share"] == pytest.approx(1 - with_data / without)
    assert record["benchmark/volumes_per_s"] == pytest.approx(2 * with_data)  # data=sample's batch of 2
    # FLOPs of a step, counted once, against this CPU's measured matmul rate in the run's precision
    assert record["benchmark/flops_per_step"] > 0 and 0 < record["benchmark/chip_share"] < 1
    assert not list(tmp_path.rglob("*.ckpt"))
    assert calls == [(2, 4, 32, 32, 32)] * 6


def _rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.real_data
def test_preprocessing_benchmark_tiny_writes_its_table(brats2018_root, tmp_path):
    out = tmp_path / "preprocessing.csv"
    _load("preprocessing").main(["--tiny", "--root", str(brats2018_root), "--tmp", str(tmp_path), "--csv", str(out)])
    written = _rows(out)
    assert [r["pipeline"] for r in written] == ["ours", "monai", "gzip"]
    assert all(float(r["cases_per_min"]) > 0 for r in written[:2])
    assert float(written[2]["read_gz_s_per_case"]) > 0 and float(written[2]["read_nii_s_per_case"]) > 0


@pytest.mark.slow
@pytest.mark.real_data
def test_monai_preprocessing_peer_gives_our_cache(brats2018_root, tmp_path):
    """The MONAI transforms of the benchmark do our steps: same crop and labels, z-scored values. One
    difference, by design of each: ours z-scores inside the brain (voxels non-zero in any modality),
    MONAI's ``nonzero=True`` inside each channel's own non-zero voxels, leaving the others 0."""
    bench = _load("preprocessing")
    case = bench.find_cases(brats2018_root, 1)
    bench.ours(case, tmp_path / "ours", None, 1)
    bench.monai(case, tmp_path / "monai", bench.monai_transform(None))
    ours = np.load(next((tmp_path / "ours").rglob("*_image.npy")))
    theirs = np.load(tmp_path / "monai" / f"{case[0].case_id}_image.npy")
    assert ours.shape == theirs.shape and ours.shape[0] == 4
    ours_label = np.load(next((tmp_path / "ours").rglob("*_label.npy")))
    assert np.array_equal(ours_label, np.load(tmp_path / "monai" / f"{case[0].case_id}_label.npy"))
    brain = np.any(ours != 0, axis=0)
    for c in range(4):  # mean 0, std 1 (worked out here) inside each one's mask
        own = theirs[c] != 0
        assert abs(ours[c][brain].mean()) < 1e-3 and abs(ours[c][brain].std() - 1) < 1e-3
        assert abs(theirs[c][own].mean()) < 1e-3 and abs(theirs[c][own].std() - 1) < 1e-3
        assert own[~brain].sum() == 0 and own.sum() > 0.95 * brain.sum()  # the channel's mask lies inside the brain


@pytest.mark.slow
@pytest.mark.real_data
def test_prediction_benchmark_tiny_times_every_stage(brats2018_root, tmp_path):
    out = tmp_path / "prediction.csv"
    _load("prediction").main(["--tiny", "--root", str(brats2018_root), "--csv", str(out)])
    written = _rows(out)
    stages = ["read", "preprocess", "network", "resample_back", "labels", "postprocess", "uncrop", "write",
              "sliding_window", "whole", "all but the network"]
    assert [r["stage"] for r in written] == stages
    assert all(float(r["s_per_case"]) >= 0 for r in written) and float(written[9]["s_per_case"]) > 0
    # 4 mm spacing: the preprocessed grid is a quarter of the 240x240x155 original per axis (after the crop)
    assert written[0]["original"] == "240x240x155" and all(int(n) < 70 for n in written[0]["preprocessed"].split("x"))


@pytest.mark.slow
def test_loop_overhead_tiny_and_both_loops_train_alike(tmp_path):
    """The plain loop does the Lightning module's work: from the same weights, on the same batches,
    both end with the same weights (same loss, optimiser and LR schedule)."""
    bench = _load("loop_overhead")
    out = tmp_path / "loop.csv"
    bench.main(["--tiny", "--csv", str(out)])
    assert [r["loop"] for r in _rows(out)] == ["plain", "lightning"] and all(float(r["s_per_step"]) > 0 for r in _rows(out))

    args = bench.parse(["--tiny"])
    cfg = bench.compose([f"experiment={args.experiments[0]}", "data.root=unused", *args.override])
    batches = bench.make_batches(cfg, 3)
    torch.manual_seed(0)
    state = bench.network(cfg, bench.hydra.utils.instantiate(cfg.model.net).state_dict()).state_dict()
    plain, lightning = bench.network(cfg, state), bench.network(cfg, state)
    assert len(bench.plain_run(cfg, plain, batches)) == len(bench.lightning_loop(cfg, lightning, batches)) == 3
    moved = [not torch.equal(p, state[k]) for k, p in plain.state_dict().items() if p.is_floating_point()]
    assert sum(moved) > len(moved) // 2  # the steps trained the network
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(lightning.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow  # times training steps of two networks
def test_step_variants_tiny_writes_its_table(tmp_path):
    out = tmp_path / "variants.csv"
    _load("step_variants").main(["--tiny", "--csv", str(out)])
    assert [r["variant"] for r in _rows(out)] == ["eager", "channels_last"]
    assert all(float(r["s_per_step"]) > 0 for r in _rows(out))


@pytest.mark.slow
@pytest.mark.real_data
def test_memory_benchmark_tiny_reads_memory_mapped_replicas(brats2018_root, tmp_path):
    out = tmp_path / "memory.csv"
    _load("memory").main(["--tiny", "--root", str(brats2018_root), "--tmp", str(tmp_path), "--csv", str(out)])
    written = _rows(out)
    assert [int(r["cases"]) for r in written] == [4, 16]
    assert all(float(r["main_peak_mib"]) > 0 and r["cache_image_type"] == "memmap" for r in written)
    # the dataset's per-case index grows with the cases: 4 times the cases, 4 times the index
    assert float(written[1]["dataset_index_mib"]) == pytest.approx(4 * float(written[0]["dataset_index_mib"]), rel=0.01)


@pytest.mark.parametrize("patch", [(16, 16, 16), (24, 24)])
def test_a_dataset_item_reads_from_the_memory_mapped_cache(phantom_root, tmp_path, monkeypatch, patch):
    """Training samples are cut from np.memmap arrays (the cache's files), never from whole arrays in memory."""
    from lightning_brats.data import sampling
    from lightning_brats.data.preprocess import PreprocessedCache
    from lightning_brats.data.settings import PreprocessingSettings
    from tests.conftest import BRATS20_LABELS, BRATS20_LAYOUT, BRATS20_REGIONS, BRATS_MODALITIES

    files = BRATS20_LAYOUT.find_cases(phantom_root)[:2]
    cache = PreprocessedCache(tmp_path, "x", PreprocessingSettings(tuple(BRATS_MODALITIES)), BRATS20_LABELS)
    cache.ensure(files, log=lambda *_: None)
    cases = [cache.load(f.case_id) for f in files]
    dataset = sampling.TrainingSampleDataset(cases, BRATS20_REGIONS, patch, 2, augment=sampling.Augmentation())
    read_from = []
    original = sampling.crop_or_pad
    monkeypatch.setattr(sampling, "crop_or_pad", lambda array, *a: read_from.append(type(array)) or original(array, *a))
    items = [dataset[(0, i)] for i in range(4)]
    assert read_from == [np.memmap] * 8  # image and label of each of the 4 items
    assert all(isinstance(c.image, np.memmap) and isinstance(c.label, np.memmap) for c in dataset.cases)
    assert all(tuple(item["image"].shape) == (4, *patch) and item["image"].dtype == torch.float32 for item in items)

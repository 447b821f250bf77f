"""The BraTS 2023-2025 sub-challenge configs (``data=brats24_gli``, ``brats_men``, ``brats_men_rt``,
``brats_met``, ``brats_ped``, ``brats_ssa``): their labels and regions, regions that are not nested
(RC beside WT, CC beside ET, a lone GTV) turned back into labels, and post-processing per dataset.

The real-data tests read layouts built in temporary folders from shared BraTS 2018 cases by
``tests.release_layouts``, relabelled to each release's codes; the expected labels are worked
out here from the BraTS 2018 codes (1 NCR/NET, 2 ED, 4 ET), not taken from the builder.
"""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
import pytest

from lightning_brats.cli.train import CONFIG_DIR
from lightning_brats.data.labels import RegionNode, labels_to_regions, region_tree, regions_to_labels
from lightning_brats.data.readers import load_case
from lightning_brats.data.release import Release
from lightning_brats.inference.prediction import PostProcessing, postprocessing_for
from tests import release_layouts
from tests.conftest import BRATS_MODALITIES, SOURCE_CASES, compose_config, real_label

SUBCHALLENGES = ["brats24_gli", "brats_men", "brats_men_rt", "brats_met", "brats_ped", "brats_ssa"]
GLI24 = {"wt": [1, 2, 3], "tc": [1, 3], "et": [3], "rc": [4]}
PED = {"wt": [1, 2, 3, 4], "tc": [1, 2, 3], "et": [1], "cc": [3]}


# ---------------------------------------------------------------------------------------------
# the configs state what the challenge's documents and scoring code say


def _data(name: str, tmp_path: Path, *overrides: str):
    return compose_config([f"data={name}", "data.root=/x", *overrides], tmp_path).data


EXPECTED = {  # labels, regions (network outputs), modalities, metrics, dilation, min_volume
    "brats24_gli": ({"netc": 1, "snfh": 2, "et": 3, "rc": 4}, GLI24, BRATS_MODALITIES, "brats2024", 3,
                    {"wt": 20, "tc": 20, "et": 10, "netc": 20, "snfh": 20, "rc": 10}),
    "brats_men": ({"ncr_net": 1, "ed": 2, "et": 3}, {"wt": [1, 2, 3], "tc": [1, 3], "et": [3]}, BRATS_MODALITIES, "brats2023", 1,
                  {"wt": 50, "tc": 50, "et": 50}),
    "brats_met": ({"ncr_net": 1, "ed": 2, "et": 3}, {"wt": [1, 2, 3], "tc": [1, 3], "et": [3]}, BRATS_MODALITIES, "brats2023", 1,
                  {"wt": 2, "tc": 2, "et": 2}),
    "brats_ssa": ({"ncr_net": 1, "ed": 2, "et": 3}, {"wt": [1, 2, 3], "tc": [1, 3], "et": [3]}, BRATS_MODALITIES, "brats2023", 3,
                  {"wt": 50, "tc": 50, "et": 50}),
    "brats_ped": ({"et": 1, "net": 2, "cc": 3, "ed": 4}, PED, BRATS_MODALITIES, "brats2024", 5,
                  {"wt": 10, "tc": 10, "et": 10, "net": 10, "cc": 10, "ed": 10}),
    "brats_men_rt": ({"gtv": 1}, {"gtv": [1]}, ["t1ce"], "brats2023", 1, {"gtv": 50}),
}


def test_every_subchallenge_config_is_checked():
    found = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml") if p.stem.startswith(("brats_", "brats24")))
    assert found == sorted(EXPECTED) == sorted(SUBCHALLENGES)


@pytest.mark.parametrize("name", SUBCHALLENGES)
def test_subchallenge_config_holds_labels_regions_and_evaluation(name, tmp_path):
    from omegaconf import OmegaConf

    labels, regions, modalities, metrics, dilation, min_volume = EXPECTED[name]
    composed = OmegaConf.to_container(_data(name, tmp_path), resolve=False)
    data = composed["release"]
    assert data["labels"] == labels and data["regions"] == regions and composed["preprocessing"]["modalities"] == modalities
    assert list(data["regions"]) == list(regions)  # channel order
    evaluation = data["evaluation"]
    assert evaluation["metrics"] == metrics
    merge_across = evaluation["lesion_wise"].pop("merge_across", None)
    assert evaluation["lesion_wise"] == {"dilation": dilation, "min_volume": min_volume, "hd95_penalty": 374}
    # lesions merged across tissues only where the official script merges them (metrics_GLI.py, 2024)
    assert (merge_across is not None) == (name == "brats24_gli")
    scored = evaluation.get("regions") or data["regions"]
    assert sorted(scored) == sorted(min_volume)  # a threshold for every scored region
    assert all(set(codes) <= set(labels.values()) for codes in scored.values())
    # every config's regions can be turned back into its labels, each label from exactly one region
    assert sorted(node.code for node in region_tree(data["regions"])) == sorted(labels.values())


@pytest.mark.slow  # every data config composed: over a second of the quick loop
def test_inheritance_keeps_the_2023_layout_and_training_settings(tmp_path):
    base = _data("brats23", tmp_path / "a")
    for name in SUBCHALLENGES:
        data = _data(name, tmp_path / name)
        for key in ("patch_size", "augment", "num_folds", "oversample_foreground"):
            assert data[key] == base[key], (name, key)
        for key in ("normalization", "crop"):
            assert data.preprocessing[key] == base.preprocessing[key], (name, key)
        if name != "brats_men_rt":
            assert data.release.layout == base.release.layout, name
    rt = _data("brats_men_rt", tmp_path / "rt").release.layout
    assert dict(rt.modality_suffixes) == {"t1ce": "_t1c"} and rt.label_suffix == "_gtv"


# ---------------------------------------------------------------------------------------------
# regions that are not nested, both ways


def test_region_forest_of_each_release():
    assert region_tree(GLI24) == [
        RegionNode("wt", 2, None), RegionNode("tc", 1, "wt"), RegionNode("et", 3, "tc"), RegionNode("rc", 4, None)
    ]
    assert region_tree(PED) == [
        RegionNode("wt", 4, None), RegionNode("tc", 2, "wt"), RegionNode("et", 1, "tc"), RegionNode("cc", 3, "tc")
    ]
    assert region_tree({"gtv": [1]}) == [RegionNode("gtv", 1, None)]


@pytest.mark.parametrize(
    "regions,message",
    [
        ({"wt": [1, 2, 3, 4], "tc": [1, 2, 3], "et": [1]}, r"region tc \[1, 2, 3\] adds the codes \[2, 3\]"),
        ({"a": [1, 2], "b": [2, 3]}, r"regions a \[1, 2\] and b \[2, 3\] overlap but neither contains the other"),
        ({"wt": [1, 2, 3], "tc": [1, 2, 3]}, r"regions wt and tc have the same codes"),
        ({"wt": [1, 2], "x": [1], "y": [2]}, r"region wt \[1, 2\] adds no code"),
        ({"wt": []}, r"region wt has no label codes"),
    ],
)
def test_region_sets_that_cannot_be_inverted_are_named(regions, message):
    with pytest.raises(ValueError, match=r"cannot be turned back into labels: " + message):
        region_tree(regions)
    with pytest.raises(ValueError, match=message):
        regions_to_labels(np.zeros((len(regions), 2, 2, 2)), regions)


def test_hand_built_post_treatment_and_paediatric_labels_round_trip():
    gli = np.zeros((6, 6, 6), dtype=np.uint8)
    gli[1:5, 1:5, 1:5] = 2  # SNFH
    gli[2:4, 2:4, 2:4] = 1  # NETC
    gli[2, 2, 2] = 3  # ET
    gli[5, :, :] = 4  # RC beside the tumour, touching it
    ped = gli.copy()
    ped[ped == 4] = 3  # CC beside ET
    ped[2:4, 2:4, 2:4] = 2  # NET
    ped[3, 3, 3], ped[2, 2, 2], ped[0, 0, 0] = 3, 1, 4  # CC inside TC, ET, ED
    for label, regions, codes in [(gli, GLI24, {0, 1, 2, 3, 4}), (ped, PED, {0, 1, 2, 3, 4})]:
        assert set(np.unique(label)) == codes
        np.testing.assert_array_equal(regions_to_labels(labels_to_regions(label, regions), regions), label)


def test_overlapping_predictions_follow_the_forest():
    """Each voxel's label, worked out by hand from the rule: walk down from an outermost region,
    the later of two disjoint siblings winning, inner regions cut to their parent."""
    voxels = np.array([  # one voxel per row; GLI24 channels wt, tc, et, rc
        [1, 0, 0, 0],  # WT only: SNFH 2
        [1, 1, 1, 1],  # everything: RC (the later root) wins over WT and all inside it: 4
        [0, 1, 1, 0],  # TC and ET outside WT: background 0
        [1, 0, 1, 0],  # ET without TC: cut to WT, SNFH 2
        [1, 1, 0, 0],  # TC: NETC 1
    ], dtype=bool)
    np.testing.assert_array_equal(regions_to_labels(voxels.T[:, :, None, None], GLI24)[:, 0, 0], [2, 4, 0, 2, 1])
    voxels = np.array([  # PED channels wt, tc, et, cc
        [1, 1, 1, 1],  # ET and CC, siblings in TC: CC (later) 3
        [1, 1, 1, 0],  # ET 1
    ], dtype=bool)
    np.testing.assert_array_equal(regions_to_labels(voxels.T[:, :, None, None], PED)[:, 0, 0], [3, 1])


# ---------------------------------------------------------------------------------------------
# post-processing: the dataset's rule, overridden key by key


def test_postprocessing_is_the_datasets_rule_unless_overridden(tmp_path):
    none = {"region": None, "min_voxels": None}
    assert postprocessing_for({"regions": {}}, none) == PostProcessing("et", 100)  # configs without the key
    assert postprocessing_for({"postprocess": None}, none) is None
    assert postprocessing_for({"postprocess": {"region": "et", "min_voxels": 100}}, {"region": None, "min_voxels": 0}) is None
    assert postprocessing_for({"postprocess": None}, {"region": None, "min_voxels": 30}) == PostProcessing("et", 30)
    assert postprocessing_for({"postprocess": {"region": "et", "min_voxels": 100}}, None) is None
    gli, met = _data("brats24_gli", tmp_path / "g"), _data("brats_met", tmp_path / "m")
    assert postprocessing_for(gli.release, none) == PostProcessing("et", 100) and postprocessing_for(met.release, none) is None
    assert postprocessing_for(Release.from_config(met.release), none) is None
    assert postprocessing_for(Release.from_config(_data("brats23", tmp_path / "b").release), none) == PostProcessing("et", 100)


def test_the_largest_component_rule_joins_the_small_component_rule_key_by_key():
    release = {"postprocess": {"region": "et", "min_voxels": 100}}
    both = postprocessing_for(release, {"region": None, "min_voxels": None, "keep_largest": ["tc"]})
    assert both == PostProcessing("et", 100, ("tc",))
    only_largest = postprocessing_for(release, {"min_voxels": 0, "keep_largest": "tc"})
    assert only_largest == PostProcessing("et", 0, ("tc",)) and only_largest
    assert postprocessing_for(release, {"min_voxels": 0, "keep_largest": []}) is None
    assert postprocessing_for({"postprocess": {"region": "et", "min_voxels": 0, "keep_largest": ["tc"]}},
                              {"keep_largest": None}) == PostProcessing("et", 0, ("tc",))
    with pytest.raises(ValueError, match="inference.postprocess.largest: not a post-processing key"):
        postprocessing_for(release, {"largest": ["tc"]})
    with pytest.raises(ValueError, match="data.release.postprocess.size"):
        postprocessing_for({"postprocess": {"size": 3}}, {})


def test_the_largest_component_rule_relabels_islands_as_the_region_around_them(caplog):
    label = np.zeros((30, 30, 30), dtype=np.uint8)
    label[0:14, 0:14, 0:14] = 2  # SNFH
    label[2:12, 2:12, 2:12] = 1  # NETC: the main core (1000 voxels)
    label[4:6, 4:6, 4:6] = 3  # ET inside it, 8 voxels: the small-component rule makes it NETC
    label[20:22, 20:22, 20:22] = 3  # a distant core island: the ET rule makes it NETC, then it becomes SNFH
    label[26:30, 26:30, 26:30] = 4  # RC: a region outside the tumour core, untouched
    out, changed = PostProcessing("et", 10, ("tc",)).apply(label, GLI24)
    assert changed == 8 + 8 + 8  # 8 ET -> NETC twice (both ET components are small), then the island's 8 -> SNFH
    assert (out[4:6, 4:6, 4:6] == 1).all() and (out[20:22, 20:22, 20:22] == 2).all() and (out[26:, 26:, 26:] == 4).all()
    assert (out == 3).sum() == 0 and (out == 1).sum() == 1000
    wt_island = np.zeros((12, 12, 12), dtype=np.uint8)
    wt_island[0:5, 0:5, 0:5] = 2
    wt_island[9, 9, 9] = 1  # an outermost region's smaller component becomes background
    out, changed = PostProcessing("et", 0, ("wt",)).apply(wt_island, GLI24)
    assert changed == 1 and out[9, 9, 9] == 0 and (out[0:5, 0:5, 0:5] == 2).all()
    with caplog.at_level("WARNING"):
        lesion = (wt_island > 0).astype(np.uint8)
        same, changed = PostProcessing("et", 0, ("tc",)).apply(lesion, {"abnormality": [1]})
    assert changed == 0 and (same == lesion).all() and "keep_largest names a region" in caplog.text


def test_small_enhancing_islands_take_the_label_of_the_region_around_them():
    gli = np.zeros((12, 12, 12), dtype=np.uint8)
    gli[0:6, 0:6, 0:6] = 1  # NETC
    gli[1, 1, 1] = 3  # one ET voxel: becomes NETC
    gli[8:12, 8:12, 8:12] = 4  # RC: untouched
    out, changed = PostProcessing("et", 5).apply(gli, GLI24)
    assert changed == 1 and out[1, 1, 1] == 1 and (out[8:, 8:, 8:] == 4).all()
    ped = np.zeros((12, 12, 12), dtype=np.uint8)
    ped[0:6, 0:6, 0:6] = 2  # NET
    ped[1, 1, 1] = 1  # one ET voxel: becomes NET, the code TC adds
    out, changed = PostProcessing("et", 5).apply(ped, PED)
    assert changed == 1 and out[1, 1, 1] == 2
    gtv = np.zeros((12, 12, 12), dtype=np.uint8)
    gtv[0, 0, 0] = 1  # an outermost region's island becomes background
    out, changed = PostProcessing("gtv", 5).apply(gtv, {"gtv": [1]})
    assert changed == 1 and not out.any()


# ---------------------------------------------------------------------------------------------
# every config reads a layout built from real cases




@pytest.fixture(scope="module")
def built(brats2018_root, tmp_path_factory):
    """``built(<data config>, n)``: a layout of the first ``n`` source cases (built once per module)."""
    roots: dict[tuple[str, int], Path] = {}

    def root(data: str, n: int = 1) -> Path:
        if (data, n) not in roots:
            roots[(data, n)] = tmp_path_factory.mktemp(f"layout_{data}")
            release_layouts.build(brats2018_root, roots[(data, n)], data, SOURCE_CASES[:n])
        return roots[(data, n)]

    return root


def _expected_label(source: np.ndarray, release: str) -> np.ndarray:
    """The release's label map of a BraTS 2018 label map, from the codes in each config's comment;
    NCR/NET voxels from the median first-axis index on are the stand-in for RC (GLI 2024) or CC (PED)."""
    ncr = source == 1
    upper = ncr & (np.arange(source.shape[0])[:, None, None] >= int(np.median(np.nonzero(ncr)[0])))
    out = np.zeros(source.shape, dtype=np.uint8)
    if release == "brats_men_rt":
        out[source > 0] = 1
    elif release == "brats_ped":
        out[source == 4], out[source == 2], out[ncr & ~upper], out[upper] = 1, 4, 2, 3
    else:
        out[source == 4], out[source == 2], out[ncr] = 3, 2, 1
        if release == "brats24_gli":
            out[upper] = 4
    return out


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("name", SUBCHALLENGES)
def test_subchallenge_layout_reads_the_relabelled_real_case(name, built, brats2018_root, tmp_path):
    root = built(name)
    cfg = compose_config([f"data={name}", f"data.root={root}"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    (files,) = datamodule.find_cases()
    prefix = {"brats24_gli": "BraTS-GLI-", "brats_men": "BraTS-MEN-", "brats_met": "BraTS-MET-", "brats_ssa": "BraTS-SSA-",
              "brats_ped": "BraTS-PED-", "brats_men_rt": "BraTS-MEN-RT-"}[name]
    assert files.case_id.startswith(prefix) and files.label is not None
    case = load_case(files, datamodule.modalities, datamodule.labels)
    src = SOURCE_CASES[0]
    images = np.stack([nib.load(brats2018_root / src / f"{src}_{m}.nii.gz").get_fdata(dtype=np.float32)
                       for m in EXPECTED[name][2]])
    np.testing.assert_array_equal(case.image, images)
    expected = _expected_label(real_label(brats2018_root, src), name)
    np.testing.assert_array_equal(case.label, expected)
    assert set(np.unique(case.label)) == {0, *EXPECTED[name][0].values()}  # every label of the release occurs
    # regions as the release defines them, and back to the very same labels
    regions = labels_to_regions(case.label, datamodule.regions)
    for channel, codes in enumerate(datamodule.regions.values()):
        np.testing.assert_array_equal(regions[channel].astype(bool), np.isin(expected, codes))
    np.testing.assert_array_equal(regions_to_labels(regions, datamodule.regions), case.label)
    if name == "brats24_gli":  # the post-treatment case: RC beside WT, sharing no voxel with it
        wt, rc = regions[0].astype(bool), regions[3].astype(bool)
        assert rc.any() and not (wt & rc).any()


@pytest.mark.slow
@pytest.mark.real_data
def test_brats24_gli_trains_a_fast_dev_run_step(built, cache_dir, tmp_path):
    from lightning_brats.cli.train import train

    root = built("brats24_gli", 2)
    cfg = compose_config(
        ["data=brats24_gli", f"data.root={root}", "debug=fast_dev_run", "logger=csv", "data.batch_size=2",
         "data.num_folds=2", "data.preprocess_workers=1", "data.spacing=[4,4,4]", "data.patch_size=[32,32,32]"],
        tmp_path / "run", cache_dir,
    )
    metrics = train(cfg)
    dice = {f"val/dice_{r}" for r in ["wt", "tc", "et", "rc", "mean"]}
    assert dice <= set(metrics), sorted(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in dice) and math.isfinite(metrics["train/loss"])
    per_region = [metrics[k] for k in sorted(dice) if k != "val/dice_mean"]
    assert metrics["val/dice_mean"] == pytest.approx(sum(per_region) / len(per_region), abs=1e-6)

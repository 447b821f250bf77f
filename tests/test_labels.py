"""Regions back to release labels (nesting enforced) and the ET small-component post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_brats.data.labels import (
    all_but_largest_component_to,
    labels_to_regions,
    nested_region_codes,
    regions_to_labels,
    small_components_to,
)
from tests.conftest import BRATS20_REGIONS, BRATS23_REGIONS, MSD_REGIONS, real_label
from tests.release_layouts import LABEL_CODES


def test_codes_follow_the_configured_regions():
    assert nested_region_codes(BRATS20_REGIONS) == [("wt", 2), ("tc", 1), ("et", 4)]
    assert nested_region_codes(BRATS23_REGIONS) == [("wt", 2), ("tc", 1), ("et", 3)]
    assert nested_region_codes(MSD_REGIONS) == [("wt", 1), ("tc", 2), ("et", 3)]  # MSD: 1 edema, 2 non-enhancing
    assert nested_region_codes({"abnormality": [255]}) == [("abnormality", 255)]
    with pytest.raises(ValueError, match="cannot be turned back into labels"):
        nested_region_codes({"wt": [1, 2, 4], "x": [2, 4], "et": [1]})


@pytest.mark.real_data
@pytest.mark.parametrize("regions,release", [(BRATS20_REGIONS, "brats20"), (BRATS23_REGIONS, "brats23"), (MSD_REGIONS, "msd_task01")])
def test_real_label_maps_round_trip(brats2018_root, regions, release):
    codes = LABEL_CODES[release]  # BraTS 2018 code -> the release's, as the layout builder writes them
    label = real_label(brats2018_root, "Brats18_CBICA_ABM_1")
    release = np.zeros_like(label, dtype=np.uint8)
    for brats18, code in codes.items():  # the same anatomy in each release's codes
        release[label == brats18] = code
    assert set(np.unique(release)) == {0, *codes.values()}
    np.testing.assert_array_equal(regions_to_labels(labels_to_regions(release, regions), regions), release)


def test_inner_regions_are_cut_to_their_parent():
    masks = np.zeros((3, 4, 4, 4), dtype=np.float32)
    masks[0, :2] = 1  # WT
    masks[1, :1] = 1  # TC inside WT
    masks[2, 0, 0] = 1  # ET inside TC
    masks[2, 3, 3] = 1  # ET outside WT: dropped
    label = regions_to_labels(masks, BRATS20_REGIONS)
    assert (label[0, 0] == 4).all() and (label[0, 1:] == 1).all() and (label[1] == 2).all()
    assert (label[2:] == 0).all()


def test_small_enhancing_components_become_necrosis():
    label = np.zeros((20, 20, 20), dtype=np.uint8)
    label[2:8, 2:8, 2:8] = 4  # 216 voxels: kept
    label[15:17, 15:17, 15:17] = 4  # 8 voxels: becomes NCR
    label[12, 12, 12] = 2
    out, replaced = small_components_to(label, code=4, replacement=1, min_voxels=10)
    assert replaced == 8 and (out[15:17, 15:17, 15:17] == 1).all() and (out[2:8, 2:8, 2:8] == 4).all()
    assert out[12, 12, 12] == 2 and (label[15:17, 15:17, 15:17] == 4).all()  # the input is untouched
    same, none = small_components_to(np.zeros_like(label), 4, 1, 10)
    assert none == 0 and not same.any()


def test_only_the_largest_core_component_stays_core():
    label = np.zeros((30, 30, 30), dtype=np.uint8)
    label[1:15, 1:15, 1:15] = 2  # edema around the main core
    label[3:12, 3:12, 3:12] = 1  # main core, 729 voxels, with ET inside: kept as it is
    label[5:8, 5:8, 5:8] = 4
    label[20:23, 20:23, 20:23] = 4  # a distant core island of 27 voxels (ET and NCR): becomes edema
    label[23, 20:23, 20:23] = 1
    out, replaced = all_but_largest_component_to(label, [1, 4], replacement=2)
    assert replaced == 36 and (out[20:24, 20:23, 20:23] == 2).all()
    np.testing.assert_array_equal(out[:15, :15, :15], label[:15, :15, :15])
    assert (label[20:23, 20:23, 20:23] == 4).all()  # the input is untouched
    # one component, or none: nothing changes
    single, none = all_but_largest_component_to(label[:15, :15, :15], [1, 4], 2)
    assert none == 0 and (single == label[:15, :15, :15]).all()
    # diagonal neighbours are one component (26-connectivity)
    diagonal = np.zeros((4, 4, 4), dtype=np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 1
    assert all_but_largest_component_to(diagonal, [1], 0)[1] == 0

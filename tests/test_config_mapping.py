"""The split ``data`` config (issue 23) changes where values live, not what they are.

Every data config and every experiment preset, with the overrides users type, is composed twice: with
the configs of the code before the split (:data:`tests.old_version.OLD_COMMIT`, flat ``data``) and with
today's. The old ``data`` mapped by :func:`~lightning_brats.data.data_config.upgrade_data_config` must
equal the new one value for value, the rest of the config (model, callbacks, trainer, ...) must be
identical, and the old code's cache fingerprints must be the new code's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from lightning_brats.configs import CONFIG_DIR
from lightning_brats.data.data_config import MOVED_KEYS, upgrade_data_config, upgrade_overrides
from tests.old_version import OLD_COMMIT, old_tree  # noqa: F401  (the fixture)

DATA = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml"))
#: the presets OLD_COMMIT has (those added since, e.g. brats_resenc_m, have no old version to compare with)
EXPERIMENTS = sorted(
    {p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")}
    & {"brats_cpu", "brats_cpu_3d", "brats_nnunet", "brats_nvidia", "lgg_cpu", "seed_2d_brats20", "seed_2d_lgg",
       "seed_3d_brats20_minmax", "seed_3d_brats21_3mod", "seed_3d_msd"}
)
#: keys added since OLD_COMMIT on purpose, with the value that leaves behaviour as it was (2.5D input off;
#: Lightning's own choice of when to save, which data.fold=all overrides)
ADDED_SINCE = {("data", "context_slices"): 0, ("model", "context_slices"): 0,
               ("callbacks", "model_checkpoint", "save_on_train_epoch_end"): None,
               ("inference", "postprocess", "keep_largest"): None, ("model", "inference", "postprocess", "keep_largest"): None,
               ("data", "foreground_sampling"): "voxel"}
#: presets whose value of an added key is not the neutral one on purpose: the nnU-Net recipes sample a class first,
#: as nnU-Net's loaders do (a behaviour change for them, nowhere else)
CHANGED_SINCE = {("experiment=brats_nnunet", ("data", "foreground_sampling")): "label"}
#: overrides users already type, in the flat form (read through upgrade_overrides on the new side)
USER_OVERRIDES = [
    "data.root=/x", "data.fold=1", "data.batch_size=4", "data.patch_size=[64,64,64]", "data.spacing=[2,2,2]",
    "data.modalities=[flair,t1ce]", "data.normalization=minmax", "data.augment.noise_prob=0.1",
    "data.evaluation.lesionwise_validation=true",
]
#: what is composed: every data config, every preset, presets on another release, and the user overrides
CASES = (
    [[f"data={d}", "data.root=/x"] for d in DATA]
    + [[f"experiment={e}", "data.root=/x"] for e in EXPERIMENTS]
    + [[f"experiment={e}", f"data={d}", "data.root=/x"] for e in ("brats_cpu",) for d in DATA]
    + [["data=brats20", *USER_OVERRIDES], ["experiment=brats_cpu", *USER_OVERRIDES], ["data=lgg", "data.root=/x",
        "data.layout.spacing=[1,1,3]", "data.labels={abnormality: 1}", "data.regions={abnormality: [1]}"]]
)


def _compose(config_dir: Path, overrides: list[str]) -> dict:
    """The resolved ``train`` config of ``config_dir`` with ``overrides`` (no ``hydra`` node)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = "/out"
        del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True)


def _differences(old, new, path: str = "") -> list[str]:
    """Where two plain values differ, ``path: old -> new``; mappings by key, lists by position."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in dict.fromkeys([*old, *new]) for d in _differences(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{path}.{k}")]
    if old != new or type(old) is not type(new):
        return [f"{path}: {old!r} -> {new!r}"]
    return []


@pytest.fixture(scope="module")
def old_configs(old_tree):  # noqa: F811
    return {i: _compose(old_tree / "conf", case) for i, case in enumerate(CASES)}


@pytest.mark.slow  # the repository at OLD_COMMIT extracted, and 39 configs composed twice: a migration guard, not the quick loop
@pytest.mark.parametrize("index", range(len(CASES)), ids=[" ".join(c) for c in CASES])
def test_every_preset_composes_to_the_same_values(index, old_configs):
    old, new = old_configs[index], _compose(Path(CONFIG_DIR), upgrade_overrides(CASES[index]))
    old["data"] = upgrade_data_config(old["data"])
    # the W&B tags name the overrides as given to Hydra: the flat ones in their current form
    old["logger"]["wandb"]["tags"] = upgrade_overrides(old["logger"]["wandb"]["tags"])
    for path, neutral in ADDED_SINCE.items():
        parent = new
        for key in path[:-1]:
            parent = parent.get(key) or {}
        if path[-1] in parent or path[0] != "callbacks":  # callbacks=none has no model_checkpoint
            expected = next((v for (arg, p), v in CHANGED_SINCE.items() if p == path and arg in CASES[index]), neutral)
            assert parent.pop(path[-1]) == expected, ".".join(path)
    assert _differences(old, new) == []
    # the orders that are channel orders: input modalities, output regions, label names
    assert new["data"]["preprocessing"]["modalities"] == old["data"]["preprocessing"]["modalities"]
    assert list(new["data"]["release"]["regions"]) == list(old["data"]["release"]["regions"])
    assert list(new["model"]["regions"]) == list(old["model"]["regions"])


def test_the_mapping_moves_exactly_the_release_and_preprocessing_keys():
    assert MOVED_KEYS == {
        "layout": "release.layout", "labels": "release.labels", "regions": "release.regions",
        "postprocess": "release.postprocess", "evaluation": "release.evaluation",
        "modalities": "preprocessing.modalities", "spacing": "preprocessing.spacing",
        "normalization": "preprocessing.normalization", "crop": "preprocessing.crop",
        "crop_size": "preprocessing.crop_size",
    }
    assert upgrade_overrides(["data.spacing=[2,2,2]", "+data.evaluation.x=1", "~data.postprocess", "data.fold=0,1",
                              "data=brats23", "data.layout.label_suffix=-seg", "-m", "data.spacingx=1"]) == [
        "data.preprocessing.spacing=[2,2,2]", "+data.release.evaluation.x=1", "~data.release.postprocess",
        "data.fold=0,1", "data=brats23", "data.release.layout.label_suffix=-seg", "-m", "data.spacingx=1"]


_FINGERPRINTS = """
import json, sys, hydra
from hydra import compose, initialize_config_dir
out = {}
for case in json.loads(sys.argv[2]):
    with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
        cfg = compose("train", overrides=case)
    out[" ".join(case)] = hydra.utils.instantiate(cfg.data).cache.fingerprint
    hydra.core.global_hydra.GlobalHydra.instance().clear()
print(json.dumps(out))
"""

FINGERPRINT_CASES = [[f"data={d}", "data.root=/x", "data.cache_dir=/nonexistent"] for d in DATA] + [
    [f"experiment={e}", "data.root=/x", "data.cache_dir=/nonexistent"] for e in EXPERIMENTS
]


@pytest.mark.slow  # a Python subprocess (the old code)
def test_every_data_config_keeps_its_cache_fingerprint(old_tree):  # noqa: F811
    """The old code's fingerprints (computed by the old code, in a subprocess) are the new code's."""
    env = {**os.environ, "PYTHONPATH": str(old_tree)}
    result = subprocess.run([sys.executable, "-c", _FINGERPRINTS, str(old_tree / "conf"), json.dumps(FINGERPRINT_CASES)],
                            capture_output=True, text=True, env=env, cwd=old_tree, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    old = json.loads(result.stdout.strip().splitlines()[-1])
    new = {}
    for case in FINGERPRINT_CASES:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=case)
        new[" ".join(case)] = hydra.utils.instantiate(cfg.data).cache.fingerprint
    assert new == old, f"fingerprints changed against {OLD_COMMIT}"


def test_a_release_given_at_prediction_replaces_what_it_states_and_keeps_the_rest(tmp_path):
    """``predict.py data=<release>``: the stated parts replace the checkpoint's (as the flat keys did), an
    unstated post-processing or evaluation stays the checkpoint's; the preprocessing plan is never touched."""
    from lightning_brats.inference.prediction import release_of, with_release
    from tests.conftest import compose_config

    trained = OmegaConf.to_container(compose_config(["data=brats_met", "data.root=/x"], tmp_path / "a").data, resolve=True)
    msd = compose_config(["data=msd_task01", "data.root=/x"], tmp_path / "b").data
    wanted = with_release(trained, msd, Path("x.ckpt"))
    assert wanted["release"]["labels"] == {"ed": 1, "net": 2, "et": 3} and wanted["release"]["layout"]["reader"] == "msd"
    assert wanted["release"]["postprocess"] is None and wanted["release"]["evaluation"] == trained["release"]["evaluation"]
    assert wanted["preprocessing"] == trained["preprocessing"]
    assert release_of(msd)["preprocessing"] == {"modalities": ["flair", "t1", "t1ce", "t2"]}
    rt = compose_config(["data=brats_men_rt", "data.root=/x"], tmp_path / "c").data
    with pytest.raises(ValueError, match=r"x.ckpt: .*input channels"):
        with_release(trained, rt, Path("x.ckpt"))

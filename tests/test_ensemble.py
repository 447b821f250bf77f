"""Fold ensembles in predict.py and eval.py: the mean of the models' probabilities, the best
checkpoint of every job of a multirun, refusals (models that disagree, cases=held_out).

The two models are the session's phantom checkpoints, a 3D and a 2D U-Net trained on the same
data and preprocessing (nnU-Net ensembles its 2D and 3D configurations the same way)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from lightning_brats.cli.eval import evaluate
from lightning_brats.cli.predict import model_files, predict
from lightning_brats.data.data_config import MOVED_KEYS
from lightning_brats.data.readers import make_reader
from lightning_brats.inference.prediction import Predictor, load_trained_model, multirun_checkpoints
from lightning_brats.training.module import CONFIG_KEY
from tests.conftest import compose_tool_config, inference_settings


def _changed(ckpt: Path, folder: Path, **data) -> Path:
    """A copy of ``ckpt`` whose stored data config has ``data`` changed (the weights unchanged), in the
    module's hyper-parameters too where they hold the key (regions, modalities, patch size), as a run
    trained with those settings would have written them."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    for key, value in data.items():  # in the data config's part (data.preprocessing.spacing, data.release.regions)
        part, name = MOVED_KEYS[key].split(".")
        checkpoint[CONFIG_KEY]["data"][part][name] = value
    checkpoint["hyper_parameters"].update({k: v for k, v in data.items() if k in checkpoint["hyper_parameters"]})
    path = folder / f"{'_'.join(data)}.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.slow
def test_ensemble_is_the_mean_of_each_models_probabilities(phantom_checkpoint, phantom_checkpoint_2d, phantom_root, tmp_path):
    case = min(p for p in phantom_root.iterdir() if p.is_dir())
    out = tmp_path / "out"
    result = predict(compose_tool_config(
        "predict",
        [f"ckpt_path=[{phantom_checkpoint},{phantom_checkpoint_2d}]", f"input={case}", f"output_dir={out}",
         "save_probabilities=true", "inference.flip_tta=true", "inference.postprocess.min_voxels=0",
         "inference.overlap=0.25", "inference.sw_batch_size=8", "inference.precision=32"],
        tmp_path,
    ))
    assert result["predicted"] == 1
    ensemble = np.moveaxis(np.asarray(nib.load(out / f"{case.name}_probabilities.nii.gz").dataobj), -1, 0)
    # each model alone, with its own window (3D patches, 2D slices) and flip TTA (8 and 4 flips)
    single = []
    for ckpt in (phantom_checkpoint, phantom_checkpoint_2d):
        model = load_trained_model(ckpt, device="cpu")
        files = make_reader(model.release.layout).find_cases(case)[0]
        single.append(Predictor(model, inference_settings(precision="32", overlap=0.25, sw_batch_size=8, flip_tta=True)).predict_case(files).probabilities)
    assert np.abs(single[0] - single[1]).max() > 0.05  # two different models
    mean = (single[0] + single[1]) / 2
    np.testing.assert_allclose(ensemble, mean, atol=1e-6)
    # thresholded after averaging: WT is where the mean WT probability exceeds 0.5
    label = np.asarray(nib.load(out / f"{case.name}.nii.gz").dataobj)
    np.testing.assert_array_equal(label > 0, mean[0] > 0.5)
    assert (label > 0).any()


@pytest.mark.slow
def test_models_that_disagree_are_refused_naming_the_first_that_differs(phantom_checkpoint, phantom_root, tmp_path):
    case = min(p for p in phantom_root.iterdir() if p.is_dir())
    minmax = _changed(phantom_checkpoint, tmp_path, normalization="minmax")
    coarse = _changed(phantom_checkpoint, tmp_path, spacing=[2.0, 2.0, 2.0])
    models = f"ckpt_path=[{phantom_checkpoint},{phantom_checkpoint},{coarse},{minmax}]"
    with pytest.raises(ValueError, match=rf"{coarse}: data.preprocessing.spacing=\[2.0, 2.0, 2.0\] differs from "
                       rf"data.preprocessing.spacing=None of {phantom_checkpoint}; the models of an ensemble must share "
                       r"their preprocessing \(preprocessing.modalities, preprocessing.spacing"):
        predict(compose_tool_config("predict", [models, f"input={case}"], tmp_path))
    regions = _changed(phantom_checkpoint, tmp_path, regions={"wt": [1, 2, 4], "et": [4], "tc": [1, 4]})
    with pytest.raises(ValueError, match=rf"{regions}: data.release.regions=.*differs"):
        predict(compose_tool_config("predict", [f"ckpt_path=[{phantom_checkpoint},{regions}]", f"input={case}"], tmp_path))
    with pytest.raises(ValueError, match=r"give a model: ckpt_path=<checkpoint> \(several for an ensemble"):
        predict(compose_tool_config("predict", [f"input={case}"], tmp_path))


def _multirun(folder: Path, jobs: dict[str, Path | None]) -> Path:
    """A multirun folder as Hydra and train.py leave it: ``<job>/.hydra/overrides.yaml`` and
    ``<job>/checkpoints/{epoch_*.ckpt,last.ckpt}`` (``None``: a job that never validated)."""
    for job, best in jobs.items():
        (folder / job / ".hydra").mkdir(parents=True)
        (folder / job / ".hydra" / "overrides.yaml").write_text(f"- data.fold={job}\n")
        (folder / job / "checkpoints").mkdir()
        (folder / job / "checkpoints" / "last.ckpt").write_bytes(b"not the best")
        if best is not None:
            (folder / job / "checkpoints" / f"epoch_00{job[-1]}.ckpt").symlink_to(best)
    return folder


@pytest.mark.slow
def test_run_dir_takes_the_best_checkpoint_of_every_job(phantom_checkpoint, phantom_checkpoint_2d, tmp_path):
    root = _multirun(tmp_path / "multirun", {"2": phantom_checkpoint_2d, "10": phantom_checkpoint, "0": phantom_checkpoint})
    found = multirun_checkpoints(root)
    assert found == [root / "0/checkpoints/epoch_000.ckpt", root / "2/checkpoints/epoch_002.ckpt", root / "10/checkpoints/epoch_000.ckpt"]
    cfg = compose_tool_config("predict", [f"run_dir={root}", f"ckpt_path={phantom_checkpoint}"], tmp_path)
    assert model_files(cfg) == ([phantom_checkpoint, *found], [])
    broken = _multirun(tmp_path / "broken", {"0": phantom_checkpoint, "1": None})
    with pytest.raises(FileNotFoundError, match=r"job 1 has 0 best checkpoints checkpoints/epoch_\*.ckpt .*found \['last.ckpt'\]"):
        multirun_checkpoints(broken)
    with pytest.raises(FileNotFoundError, match=r"no job folder"):
        multirun_checkpoints(tmp_path / "broken" / "0" / "checkpoints")


def test_run_dir_leaves_fold_all_out_of_the_fold_ensemble(tmp_path, caplog):
    """A multirun of data.fold=0,1,all ensembles folds 0 and 1 and names the left-out job; one whose preset
    sets the fold (the composed config, no override) counts too; a multirun of fold-all jobs only is kept."""
    fake = tmp_path / "weights.ckpt"
    fake.write_bytes(b"a checkpoint")  # multirun_checkpoints only finds files; it loads none
    root = _multirun(tmp_path / "mixed", {"0": fake, "1": fake, "all": fake})
    # job 3: fold all set by its experiment config, not on the command line
    (root / "3" / ".hydra").mkdir(parents=True)
    (root / "3" / ".hydra" / "overrides.yaml").write_text("- experiment=final_model\n")
    (root / "3" / ".hydra" / "config.yaml").write_text("data:\n  fold: all\n")
    (root / "3" / "checkpoints").mkdir()
    (root / "3" / "checkpoints" / "epoch_011.ckpt").symlink_to(fake)
    with caplog.at_level("WARNING", logger="lightning_brats.inference.prediction"):
        found = multirun_checkpoints(root)
    assert found == [root / "0/checkpoints/epoch_000.ckpt", root / "1/checkpoints/epoch_001.ckpt"]
    assert "leaves out 3, all, trained with data.fold=all" in caplog.text
    seeds = _multirun(tmp_path / "seeds", {"all": fake})
    assert multirun_checkpoints(seeds) == [seeds / "all/checkpoints/epoch_00l.ckpt"]


@pytest.mark.slow
def test_eval_refuses_held_out_cases_for_an_ensemble(phantom_checkpoint, phantom_checkpoint_2d, phantom_root, tmp_path):
    root = _multirun(tmp_path / "multirun", {"0": phantom_checkpoint, "1": phantom_checkpoint_2d})
    for models in (f"ckpt_path=[{phantom_checkpoint},{phantom_checkpoint_2d}]", f"run_dir={root}"):
        cfg = compose_tool_config("eval", [models, f"ground_truth={phantom_root}", "cases=held_out", "logger=csv"], tmp_path)
        with pytest.raises(ValueError, match=r"cases=held_out with an ensemble of 2 models: every fold was trained on the others'"):
            evaluate(cfg)
    assert not (tmp_path / "predictions").exists()  # refused before predicting anything

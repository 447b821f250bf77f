"""Checkpoints written before the ``data`` config was split (issue 23) load, resume and predict as before.

A checkpoint carries its run's composed ``data`` config, flat before the split (``data.regions``,
``data.spacing``, ...). The fixture is made by the old code itself, not kept in git: the repository at
:data:`tests.old_version.OLD_COMMIT` (``git archive``) trains a tiny model on small phantoms in a
subprocess, resumes it for one more epoch and predicts a case with it. This code then loads the same
checkpoint, resumes it and predicts the same case: the resumed weights and the predicted labels and
probabilities must be bit-identical to the old code's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from lightning_brats import api
from lightning_brats.data.phantoms import write_phantom_dataset
from lightning_brats.inference.prediction import load_trained_model
from lightning_brats.training.checkpoints import CONFIG_KEY
from tests.old_version import OLD_COMMIT, old_tree  # noqa: F401  (the fixture)

#: a tiny deterministic CPU run, in the flat keys users typed before the split (the new code reads them too)
TINY = [
    "data=sample", "data.num_folds=2", "data.samples_per_epoch=4", "data.batch_size=2", "data.patch_size=[32,32,32]",
    "data.spacing=null", "data.num_workers=0", "data.preprocess_workers=1", "model.net.base_filters=4",
    "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32",
    "trainer.deterministic=true", "logger=csv", "validate_best=false", "seed=7", "data.max_val_cases=1",
    # what only writes files about the run (pictures, curves, the card): left out to keep the test short
    "model.num_val_images=0", "callbacks.training_curves=null", "callbacks.validation_pictures=null",
    "callbacks.model_card=null", "callbacks.model_summary=null", "callbacks.progress_bar=null",
]
PREDICT = ["inference.device=cpu", "inference.precision=32", "save_probabilities=true"]

#: what each code base runs (the same script: train, resume one more epoch, predict one case)
SCRIPT = """
import json, os, sys
from pathlib import Path
import torch
from lightning_brats import api
if os.environ.get("OMP_NUM_THREADS"):
    # this code keeps to OMP_NUM_THREADS (pytest-xdist sets it to a worker's share); the old code sized its pool to
    # every core of its affinity. Bit-identical weights need the same thread count (the same reduction order).
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.set_num_threads = lambda threads: None
args = json.loads(sys.argv[1])
out = Path(args["out"])
if args["train"]:
    api.train([*args["tiny"], f"hydra.run.dir={out / 'train'}"])
api.train([*args["tiny"], "trainer.max_epochs=2", f"ckpt_path={args['ckpt']}", f"hydra.run.dir={out / 'resume'}"])
api.predict(args["ckpt"], input=args["case"], output_dir=out / "predictions", overrides=args["predict"])
"""


def _run(tiny: list[str], ckpt: Path, case: Path, out: Path, train: bool) -> dict:
    return {"tiny": tiny, "ckpt": str(ckpt), "case": str(case), "out": str(out), "predict": PREDICT, "train": train}


def _weights(ckpt: Path) -> dict:
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    return {"step": checkpoint["global_step"], "state": checkpoint["state_dict"]}


@pytest.mark.slow
def test_a_checkpoint_of_the_flat_data_config_loads_resumes_and_predicts_bit_identically(old_tree, tmp_path):  # noqa: F811
    root, cache = tmp_path / "phantoms", tmp_path / "cache"
    write_phantom_dataset(root, num_cases=4, shape=(32, 32, 24))
    case = min(p for p in root.iterdir() if p.is_dir())
    tiny = [*TINY, f"data.root={root}", f"data.cache_dir={cache}"]
    old_out, new_out = tmp_path / "old", tmp_path / "new"
    ckpt = old_out / "train" / "checkpoints" / "last.ckpt"

    # the old code: train (the checkpoint under test), resume it one more epoch, predict a case with it
    env = {**os.environ, "PYTHONPATH": str(old_tree), "WANDB_MODE": "offline"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(_run(tiny, ckpt, case, old_out, train=True))],
                            cwd=old_tree, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"the old code ({OLD_COMMIT}) failed:\n{result.stderr[-4000:]}"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)[CONFIG_KEY]["data"]
    assert "regions" in stored and "spacing" in stored and "release" not in stored  # really the flat shape

    # this code: the stored config is read in the current shape ...
    model = load_trained_model(ckpt, device="cpu")
    assert model.release.regions == stored["regions"] and list(model.modalities) == stored["modalities"]
    assert model.data["preprocessing"]["spacing"] is None and "regions" not in model.data
    # ... and resuming and predicting give what the old code gave, bit for bit
    args = _run(tiny, ckpt, case, new_out, train=False)
    api.train([*args["tiny"], "trainer.max_epochs=2", f"ckpt_path={ckpt}", f"hydra.run.dir={new_out / 'resume'}"])
    api.predict(ckpt, input=case, output_dir=new_out / "predictions", overrides=PREDICT)

    old_w, new_w = (_weights(out / "resume" / "checkpoints" / "last.ckpt") for out in (old_out, new_out))
    assert new_w["step"] == old_w["step"] > _weights(ckpt)["step"]  # resumed, and trained on
    assert old_w["state"].keys() == new_w["state"].keys()
    assert all(torch.equal(old_w["state"][k], new_w["state"][k]) for k in old_w["state"]), "resumed weights differ"
    for name in (f"{case.name}.nii.gz", f"{case.name}_probabilities.nii.gz"):
        old_image, new_image = (nib.load(str(out / "predictions" / name)) for out in (old_out, new_out))
        assert np.array_equal(np.asarray(old_image.dataobj), np.asarray(new_image.dataobj)), name
        assert np.array_equal(old_image.affine, new_image.affine), name

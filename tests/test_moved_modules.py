"""Modules that moved into the stage packages (``training/``, ``inference/``, ``evaluation/``, ``io``)
are still importable from their old paths: the old path is the new module itself (``budget``, split
in two, forwards to both halves) and warns once with a ``DeprecationWarning`` naming the new path; checkpoints whose configs name the old
``_target_`` paths still load; the two modules that became packages of the same name
(``inference``, ``evaluation``) re-export their names without a warning."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings

import hydra
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from tests.conftest import REPO, compose_config

#: old module -> (a name it offered, the module that holds it now)
MOVED = {
    "lightning_brats.module": ("SegmentationModule", "lightning_brats.training.module"),
    "lightning_brats.losses": ("DiceBCELoss", "lightning_brats.training.losses"),
    "lightning_brats.budget": ("PolyLRByProgress", "lightning_brats.training.schedules"),
    "lightning_brats.hardware": ("resolve_precision", "lightning_brats.training.hardware"),
    "lightning_brats.allocator": ("describe_allocator", "lightning_brats.training.allocator"),
    "lightning_brats.nonfinite": ("NonFiniteLosses", "lightning_brats.training.nonfinite"),
    "lightning_brats.checkpoints": ("load_checkpoint", "lightning_brats.training.checkpoints"),
    "lightning_brats.curves": ("TrainingCurves", "lightning_brats.training.callbacks.curves"),
    "lightning_brats.callbacks": ("AtomicCheckpoints", "lightning_brats.training.callbacks"),
    "lightning_brats.callbacks.step_timer": ("StepTimer", "lightning_brats.training.callbacks.step_timer"),
    "lightning_brats.callbacks.model_card": ("ModelCard", "lightning_brats.training.callbacks.model_card"),
    "lightning_brats.callbacks.pictures": ("ValidationPictures", "lightning_brats.training.callbacks.pictures"),
    "lightning_brats.callbacks.preemption": ("SigtermCheckpoint", "lightning_brats.training.callbacks.preemption"),
    "lightning_brats.callbacks.checkpoint_io": ("AtomicCheckpoints", "lightning_brats.training.callbacks.checkpoint_io"),
    "lightning_brats.callbacks.publish": ("log_file", "lightning_brats.training.callbacks.publish"),
    "lightning_brats.callbacks.lesionwise_validation": (
        "LesionwiseValidation", "lightning_brats.training.callbacks.lesionwise_validation"),
    "lightning_brats.labels": ("regions_to_labels", "lightning_brats.data.labels"),
    "lightning_brats.prediction": ("Predictor", "lightning_brats.inference.prediction"),
    "lightning_brats.export": ("export_model", "lightning_brats.inference.export"),
    "lightning_brats.postprocessing_tuning": ("apply_tuned", "lightning_brats.inference.postprocessing_tuning"),
    "lightning_brats.metrics": ("RegionDice", "lightning_brats.evaluation.metrics"),
    "lightning_brats.lesion_metrics": ("score_lesion_wise", "lightning_brats.evaluation.lesion_metrics"),
    "lightning_brats.comparison": ("compare", "lightning_brats.evaluation.comparison"),
    "lightning_brats.report": ("write_report", "lightning_brats.evaluation.report"),
    "lightning_brats.visualize": ("case_figure", "lightning_brats.evaluation.visualize"),
}


def _fresh_import(name: str):
    """Import the shim ``name`` as if for the first time (it warns at its first import only).

    Only shims are dropped from ``sys.modules``: re-importing a real module would make new classes
    that other tests in this process do not hold (see :func:`_run` for those).
    """
    assert name in MOVED, name
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[loaded]
    return importlib.import_module(name)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_gives_the_same_object_and_warns_with_the_new_path(old):
    name, new = MOVED[old]
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to .*{new}\b"):
        module = _fresh_import(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name) and name in dir(module)
    if old != "lightning_brats.budget":  # moved whole: the old name is the new module itself
        assert module is importlib.import_module(new)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_the_split_budget_module_forwards_to_both_halves():
    sys.modules.pop("lightning_brats.budget", None)
    with pytest.warns(DeprecationWarning, match="schedules and lightning_brats.training.callbacks.budget"):
        budget = importlib.import_module("lightning_brats.budget")
    from lightning_brats.training import schedules
    from lightning_brats.training.callbacks import budget as callback

    assert (budget.PolyLRByProgress, budget.training_progress) == (schedules.PolyLRByProgress, schedules.training_progress)
    assert budget.TrainingBudget is callback.TrainingBudget
    assert {"PolyLRByProgress", "TrainingBudget", "training_progress"} <= set(budget.__all__)
    with pytest.raises(AttributeError, match="moved to lightning_brats.training.schedules"):
        budget.no_such_name  # noqa: B018


def test_the_old_imports_users_wrote():
    """The three forms the issue names, as a user writes them."""
    for old in ("lightning_brats.module", "lightning_brats.budget", "lightning_brats.callbacks.step_timer",
                "lightning_brats.callbacks"):
        sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        from lightning_brats.budget import PolyLRByProgress, TrainingBudget
        from lightning_brats.callbacks.step_timer import StepTimer
        from lightning_brats.module import SegmentationModule
    from lightning_brats.training.callbacks.budget import TrainingBudget as NewBudget
    from lightning_brats.training.callbacks.step_timer import StepTimer as NewTimer
    from lightning_brats.training.module import SegmentationModule as NewModule
    from lightning_brats.training.schedules import PolyLRByProgress as NewSchedule

    assert (SegmentationModule, PolyLRByProgress, TrainingBudget, StepTimer) == (NewModule, NewSchedule, NewBudget, NewTimer)
    messages = "\n".join(str(w.message) for w in record if w.category is DeprecationWarning)
    for new in ("lightning_brats.training.module", "lightning_brats.training.schedules",
                "lightning_brats.training.callbacks.budget", "lightning_brats.training.callbacks.step_timer"):
        assert new in messages


def _run(code: str) -> None:
    """Run ``code`` in a fresh interpreter in which a warning about the package's moved paths is an error."""
    prelude = "import warnings\nwarnings.filterwarnings('error', message='.*moved to lightning_brats')\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", prelude + code], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_modules_that_became_packages_re_export_without_a_warning():
    """The packages themselves never warn (they are not shims), whether imported first here or not."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from lightning_brats.evaluation import (  # noqa: F401
            METRICS,
            STATISTICS,
            _parse_cell,
            case_metrics,
            describe,
            read_csv,
            read_prediction,
            score_case,
            summarize,
            write_csv,
        )
        from lightning_brats.inference import (  # noqa: F401
            DEFAULT_THRESHOLD,
            InferenceSettings,
            SliceInferer,
            flip_axes_combinations,
            predict_logits,
            predict_probabilities,
        )
    from lightning_brats.inference.sliding_window import InferenceSettings as New
    from lightning_brats.io import write_csv as new_write_csv

    assert InferenceSettings is New and write_csv is new_write_csv and _parse_cell("1") == 1.0
    with pytest.raises(ImportError, match="no_such_name"):
        from lightning_brats.inference import no_such_name  # noqa: F401


@pytest.mark.slow
def test_the_new_paths_import_without_any_warning():
    """The package never imports its own old paths (also checked statically in test_architecture.py)."""
    _run(
        "import lightning_brats.training.module, lightning_brats.inference.prediction, lightning_brats.inference.export\n"
        "import lightning_brats.evaluation.report, lightning_brats.evaluation.comparison\n"
        "import lightning_brats.training.callbacks.model_card, lightning_brats.training.callbacks.budget\n"
        "import lightning_brats.cli.train, lightning_brats.cli.predict, lightning_brats.cli.eval\n"
        "import lightning_brats.cli.tune_postprocessing, lightning_brats.cli.compare, lightning_brats.cli.summarize\n"
    )


#: new ``_target_`` prefix -> the old one that checkpoints written before the move carry
OLD_TARGETS = {
    "lightning_brats.training.module.": "lightning_brats.module.",
    "lightning_brats.training.losses.": "lightning_brats.losses.",
    "lightning_brats.training.schedules.": "lightning_brats.budget.",
}


def _old_targets(value):
    if isinstance(value, dict):
        return {k: _old_targets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_old_targets(v) for v in value]
    if isinstance(value, str):
        for new, old in OLD_TARGETS.items():
            if value.startswith(new):
                return old + value[len(new):]
    return value


def test_checkpoint_naming_the_old_target_paths_still_loads(tmp_path):
    """hyper_parameters and the training config of a checkpoint written before the move name
    ``lightning_brats.module``, ``lightning_brats.losses`` and ``lightning_brats.budget``."""
    from lightning_brats.inference.prediction import load_trained_model
    from lightning_brats.training.checkpoints import CONFIG_KEY
    from lightning_brats.training.module import SegmentationModule
    from lightning_brats.training.schedules import PolyLRByProgress

    cfg = compose_config(["data=sample", "data.root=unused", "data.patch_size=[32,32,32]", "model=unet3d",
                          "model.net.base_filters=4", "model.net.depth=3"], tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    run_config = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("data", "model")}
    hparams = _old_targets(dict(module.hparams))
    assert hparams["loss"]["_target_"] == "lightning_brats.losses.DiceBCELoss"
    assert hparams["scheduler"]["_target_"] == "lightning_brats.budget.PolyLRByProgress"
    path = tmp_path / "old_paths.ckpt"
    torch.save({"state_dict": module.state_dict(), "epoch": 0, "global_step": 1,
                "pytorch-lightning_version": pl.__version__, "hyper_parameters": hparams,
                CONFIG_KEY: _old_targets(run_config)}, path)
    assert _old_targets(run_config)["model"]["_target_"] == "lightning_brats.module.SegmentationModule"

    restored = SegmentationModule.load_from_checkpoint(path)
    x = torch.randn(1, 4, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    module.eval()
    restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(x), module(x), rtol=0, atol=0)
        torch.testing.assert_close(load_trained_model(path, device="cpu").net(x), module(x), rtol=0, atol=0)
    optimizers = restored.configure_optimizers()
    assert isinstance(optimizers["lr_scheduler"]["scheduler"], PolyLRByProgress)

"""Stage 3, inference: a trained network (checkpoint or exported file) and a case in -> a label map
on the case's original grid out.

Enters: a checkpoint (through :mod:`lightning_brats.training.module` and
:mod:`lightning_brats.training.checkpoints`) or an exported model, and cases read and preprocessed by
:mod:`lightning_brats.data`. Leaves: NIfTI label maps (and optionally probabilities) that
:mod:`lightning_brats.evaluation` scores.

- :mod:`.sliding_window`: whole-case inference (Gaussian sliding window in 3D, slice by slice in
  2D, flip TTA) and its settings, :class:`InferenceSettings`; training validates with it too;
- :mod:`.prediction`: the predictor (checkpoint -> preprocessing -> sliding window -> ensemble ->
  post-processing -> original grid -> NIfTI);
- :mod:`.export`: TorchScript/ONNX files that predict without this package's training code;
- :mod:`.postprocessing_tuning`: the post-processing rule chosen on cross-validation.

This package was the module ``lightning_brats/inference.py``: its names (:class:`InferenceSettings`,
:func:`predict_logits`, :func:`predict_probabilities`, ...) are re-exported here, so
``from lightning_brats.inference import InferenceSettings`` keeps working, without a warning. Only
:mod:`.sliding_window` is imported here, so training can use it without loading the predictor.
"""

from lightning_brats.inference import sliding_window as _sliding_window
from lightning_brats.inference.sliding_window import (
    DEFAULT_THRESHOLD,
    InferenceSettings,
    flip_axes_combinations,
    predict_logits,
    predict_probabilities,
)

__all__ = ["DEFAULT_THRESHOLD", "InferenceSettings", "flip_axes_combinations", "predict_logits", "predict_probabilities"]


def __getattr__(name: str):
    """Any other name the old module ``lightning_brats.inference`` held."""
    try:
        return getattr(_sliding_window, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None

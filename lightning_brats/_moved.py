"""The flat module paths of earlier versions, still importable: ``lightning_brats.module``,
``lightning_brats.budget``, ``lightning_brats.callbacks.step_timer``, ... (:data:`MOVED`).

Enters: an ``import`` of an old path (from user code, or Hydra instantiating the ``_target_`` an old
checkpoint stores, e.g. ``lightning_brats.module.SegmentationModule``). Leaves: the new module itself
under the old name (``lightning_brats.module is lightning_brats.training.module``, so ``isinstance``
checks, old ``_target_`` strings and even ``monkeypatch.setattr`` on the old module act on the real
one); for ``lightning_brats.budget``, split in two, a module that forwards to both. And one
:class:`DeprecationWarning` per process naming the new path. Python shows a
``DeprecationWarning`` only for code run as ``__main__`` (and pytest's ``filterwarnings`` here ignores
it), so loading an old checkpoint does not print it on every run.

No file is left at the old paths: :func:`install` (run by ``lightning_brats/__init__.py``) adds an
import finder for exactly the names of :data:`MOVED`. Keeping the
old files away lets git see every move as a rename, so edits made meanwhile on another branch to,
say, ``lightning_brats/metrics.py`` merge into ``lightning_brats/evaluation/metrics.py``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

#: old module -> the modules its names live in now (searched in order)
MOVED: dict[str, tuple[str, ...]] = {
    "lightning_brats.labels": ("lightning_brats.data.labels",),
    "lightning_brats.module": ("lightning_brats.training.module",),
    "lightning_brats.losses": ("lightning_brats.training.losses",),
    "lightning_brats.hardware": ("lightning_brats.training.hardware",),
    "lightning_brats.allocator": ("lightning_brats.training.allocator",),
    "lightning_brats.nonfinite": ("lightning_brats.training.nonfinite",),
    "lightning_brats.checkpoints": ("lightning_brats.training.checkpoints",),
    "lightning_brats.budget": ("lightning_brats.training.schedules", "lightning_brats.training.callbacks.budget"),
    "lightning_brats.curves": ("lightning_brats.training.callbacks.curves",),
    "lightning_brats.callbacks": ("lightning_brats.training.callbacks",),
    **{
        f"lightning_brats.callbacks.{name}": (f"lightning_brats.training.callbacks.{name}",)
        for name in ("checkpoint_io", "lesionwise_validation", "model_card", "pictures", "preemption", "publish",
                     "step_timer")
    },
    "lightning_brats.prediction": ("lightning_brats.inference.prediction",),
    "lightning_brats.export": ("lightning_brats.inference.export",),
    "lightning_brats.postprocessing_tuning": ("lightning_brats.inference.postprocessing_tuning",),
    "lightning_brats.metrics": ("lightning_brats.evaluation.metrics",),
    "lightning_brats.lesion_metrics": ("lightning_brats.evaluation.lesion_metrics",),
    "lightning_brats.comparison": ("lightning_brats.evaluation.comparison",),
    "lightning_brats.report": ("lightning_brats.evaluation.report",),
    "lightning_brats.visualize": ("lightning_brats.evaluation.visualize",),
}

#: old paths that were packages (their old submodules import through them)
PACKAGES = {"lightning_brats.callbacks"}


def forward(module: ModuleType, new: tuple[str, ...]) -> None:
    """Make ``module`` (an old path) hand out the names of the modules ``new``; warn once that it moved."""
    old = module.__name__
    warnings.warn(
        f"{old} moved to {' and '.join(new)}; import from there (the old path will be removed)",
        DeprecationWarning,
        stacklevel=3,  # forward, exec_module, then (the import machinery skipped) the importing line
    )
    targets = [importlib.import_module(name) for name in new]

    def __getattr__(name: str):
        for target in targets:
            if hasattr(target, name):
                return getattr(target, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved to {' and '.join(new)})")

    def __dir__() -> list[str]:
        return sorted({name for target in targets for name in dir(target)})

    public: list[str] = []
    for target in targets:
        names = getattr(target, "__all__", None) or [
            name for name, value in vars(target).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == target.__name__
        ]
        public += [name for name in names if name not in public]
    module.__doc__ = f"Deprecated: moved to {' and '.join(new)}."
    module.__getattr__, module.__dir__, module.__all__ = __getattr__, __dir__, public


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the names of :data:`MOVED` (nothing else): a module that moved whole is the new module
    itself under its old name; one split in two (``budget``) forwards to both (:func:`forward`)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname in PACKAGES)

    def create_module(self, spec):
        new = MOVED[spec.name]
        return importlib.import_module(new[0]) if len(new) == 1 else None  # None: a fresh module

    def exec_module(self, module: ModuleType) -> None:
        old = next(name for name, value in sys.modules.items() if value is module and name in MOVED)
        new = MOVED[old]
        if len(new) == 1:
            warnings.warn(
                f"{old} moved to {new[0]}; import from there (the old path will be removed)",
                DeprecationWarning,
                stacklevel=2,  # exec_module, then (the import machinery skipped) the importing line
            )
        else:
            forward(module, new)


def install() -> None:
    """Put the finder of the old paths first in ``sys.meta_path`` (once).

    First, not last: it claims only the names of :data:`MOVED`, and an editable install of another
    checkout (setuptools' ``_EditableFinder``) would otherwise serve that checkout's old files.
    """
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModules())

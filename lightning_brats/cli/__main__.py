"""``lightning-brats <command> [hydra overrides]``: one entry point for the project's commands.

Commands: ``train``, ``predict``, ``eval`` (same as ``lightning-brats-{train,predict,eval}``), ``check-data``,
``summarize <multirun dir>`` (a multirun's Dice per job and mean/std over folds), ``compare <eval dir> <eval dir> ...``
(models evaluated on the same cases: paired tests and the BraTS ranking), ``export`` (a checkpoint's network as ONNX
or TorchScript with its preprocessing metadata), ``tune-postprocessing`` (the ET threshold and small-component rule
chosen on cross-validation predictions, written into the runs).
"""

from __future__ import annotations

import sys


def main() -> None:
    commands = {
        "train": "lightning_brats.cli.train",
        "predict": "lightning_brats.cli.predict",
        "eval": "lightning_brats.cli.eval",
        "check-data": "lightning_brats.cli.check_data",
        "summarize": "lightning_brats.cli.summarize",
        "compare": "lightning_brats.cli.compare",
        "export": "lightning_brats.cli.export",
        "tune-postprocessing": "lightning_brats.cli.tune_postprocessing",
    }
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(f"usage: lightning-brats {{{','.join(commands)}}} [overrides ...]   (add --help to a command for its options)")
        sys.exit(2)
    import importlib

    module = importlib.import_module(commands[sys.argv[1]])
    sys.argv = [f"lightning-brats {sys.argv[1]}", *sys.argv[2:]]
    module.main()


if __name__ == "__main__":
    main()

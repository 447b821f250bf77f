"""Score segmentations like BraTS: ``python eval.py predictions=... ground_truth=... data=brats20``
or ``python eval.py ckpt_path=... ground_truth=...`` (predicting first).

Thin wrapper around :mod:`lightning_brats.cli.eval` (also installed as ``lightning-brats-eval``).
"""

from lightning_brats.cli.eval import main

if __name__ == "__main__":
    main()

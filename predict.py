"""Segment cases with a trained checkpoint: ``python predict.py ckpt_path=... input=...``.

Thin wrapper around :mod:`lightning_brats.cli.predict` (also installed as ``lightning-brats-predict``).
"""

from lightning_brats.cli.predict import main

if __name__ == "__main__":
    main()

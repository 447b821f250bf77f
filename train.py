"""Train a brain-tumour segmentation model: ``python train.py [group=option] [key=value ...]``.

Thin wrapper around :mod:`lightning_brats.cli.train` (also installed as ``lightning-brats-train``).
"""

from lightning_brats.cli.train import main

if __name__ == "__main__":
    main()

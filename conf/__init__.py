"""The Hydra configs, installed as the package ``lightning_brats.conf`` (see ``lightning_brats/configs.py``)."""

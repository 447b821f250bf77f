"""Where the Hydra configs are: the checkout's ``conf/`` or the installed package's copy of it.

``pyproject.toml`` maps the repository's ``conf/`` folder to the package ``lightning_brats.conf``
(``package-dir``), so a wheel ships every YAML file inside the package and the console scripts
work from any folder through Hydra's ``pkg://lightning_brats.conf`` search path. From a source
checkout (``python train.py``, an editable install) the checkout's own ``conf/`` beside the
package is used as a folder: the configs you edit are the configs that run, even when another
checkout of the project is installed in the same environment.

Users add their own config folders with ``hydra.searchpath=[file:///path/to/conf]`` (its groups
merge with ours: ``data/mine.yaml`` becomes ``data=mine``; a ``local/default.yaml`` there is
picked up as the per-machine ``local`` config).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT_CONF = _PACKAGE.parent / "conf"

#: True when running from a source checkout (its ``conf/train.yaml`` beside the package).
FROM_CHECKOUT = (_CHECKOUT_CONF / "train.yaml").is_file() and (_CHECKOUT_CONF.parent / "pyproject.toml").is_file()

#: The config folder on disk (for listing groups, composing in tests and tools).
CONFIG_DIR = str(_CHECKOUT_CONF if FROM_CHECKOUT else _PACKAGE / "conf")

#: What the entry points give ``hydra.main(config_path=...)``.
CONFIG_PATH = CONFIG_DIR if FROM_CHECKOUT else "pkg://lightning_brats.conf"

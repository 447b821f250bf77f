"""Build another release's folder layout from BraTS 2018-style cases: a thin wrapper around
:mod:`tests.release_layouts` (the one builder, kept with the tests that use it; its docstring lists the releases).

Usage:
    python experiments/build_layouts.py --source ../shared/data/brats2018 --out data/layouts/brats20 --release brats20
    python experiments/build_layouts.py --source ../shared/data/brats2018 --out data/layouts/msd --release msd_task01
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's tests/ package

from tests.release_layouts import main

if __name__ == "__main__":
    sys.exit(main())

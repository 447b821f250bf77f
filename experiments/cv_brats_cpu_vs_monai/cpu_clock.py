"""Run train.py or the MONAI baseline with its training budget counted in CPU seconds of the process, not wall seconds.

On a core shared with other jobs a wall-clock budget measures the neighbours as much as the method (in this
study's session the load average went from 2 to 14 on 2 cores within minutes); with one torch thread, CPU
seconds are the compute the job got, so "5 minutes" stays 5 minutes of one core whatever else runs.
Only the clocks the budgets read are replaced, in the modules that read them: Lightning's ``Timer`` (which
``trainer.max_time`` and this project's TrainingBudget, its fill plan and LR schedule use) reads
``time.monotonic``; ``monai_unet.py`` reads ``time.perf_counter`` (its --minutes, and the seconds it records).
Everything else (logs, timestamps) keeps the wall clock.
    python experiments/cv_brats_cpu_vs_monai/cpu_clock.py train.py experiment=brats_cpu ...
    python experiments/cv_brats_cpu_vs_monai/cpu_clock.py experiments/baselines/monai_unet.py --root ... --minutes 5
"""

from __future__ import annotations

import importlib.util
import runpy
import sys
import time
import types

cpu_time = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
cpu_time.monotonic = cpu_time.perf_counter = time.process_time

if __name__ == "__main__":
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    if script.endswith("monai_unet.py"):
        spec = importlib.util.spec_from_file_location("monai_unet", script)
        module = importlib.util.module_from_spec(spec)
        sys.modules["monai_unet"] = module
        spec.loader.exec_module(module)
        module.time = cpu_time
        sys.exit(0 if module.main() else 1)
    from pytorch_lightning.callbacks import timer

    timer.time = cpu_time
    runpy.run_path(script, run_name="__main__")

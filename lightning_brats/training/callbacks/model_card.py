"""``model_card.md`` in every run folder: what the model is, what it was trained on, how, and how well.

Follows the sections of Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019), cut to what
a training run knows: data, preprocessing, network, training length and hardware, validation
metrics, the command that reproduces it, intended use and limitations. ``eval.py`` appends its
summary to the card of the checkpoint's run (:func:`append_evaluation`).
"""

from __future__ import annotations

import datetime
import logging
import platform
import shlex
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytorch_lightning as pl
import torch

import lightning_brats
from lightning_brats.data.context import input_description
from lightning_brats.data.splits import FOLD_ALL, FOLD_ALL_NOTE
from lightning_brats.io import atomic_save
from lightning_brats.training.callbacks.publish import log_file, log_summary
from lightning_brats.training.checkpoints import run_dir_of

log = logging.getLogger(__name__)

#: The card's file name in the run folder.
CARD_NAME = "model_card.md"

#: CPU instruction sets worth naming (they decide the speed of bf16 and int8 CPU kernels), as
#: ``torch.cpu.get_capabilities()`` spells them and as ``/proc/cpuinfo`` does.
ISA_FLAGS = {
    "avx2": "avx2", "avx512_f": "avx512f", "avx512_bf16": "avx512_bf16", "avx512_fp16": "avx512_fp16",
    "avx512_vnni": "avx512_vnni", "amx_tile": "amx_tile", "amx_bf16": "amx_bf16", "amx_int8": "amx_int8",
}

INTENDED_USE = (
    "Research on automatic brain-tumour segmentation in multimodal MRI. **Not a medical device**: "
    "not validated for clinical use, diagnosis or treatment planning; its output must not guide the care "
    "of a patient. Expect it to fail on scanners, protocols, pathologies or preprocessing unlike its training "
    "data, and on images that are not skull-stripped and co-registered like BraTS."
)


def cpu_description() -> dict:
    """``{"cpu": model name, "cpu_isa": ["avx2", ...], "cpu_capability": torch's kernel level}``.

    The ISA flags come from ``torch.cpu.get_capabilities()`` (torch >= 2.6) or ``/proc/cpuinfo``.
    """
    name, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                present = set(value.split())
                flags = [spelled for spelled in ISA_FLAGS.values() if spelled in present]
                break
    except OSError:
        pass
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        caps = capabilities()
        flags = [spelled for key, spelled in ISA_FLAGS.items() if caps.get(key)]
    return {"cpu": name, "cpu_isa": flags, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the checkout the package is imported from (``+ uncommitted changes`` when dirty),
    or ``None`` when it is not a git checkout (an installed wheel) or git is missing."""
    root = path or Path(lightning_brats.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit} + uncommitted changes" if dirty else commit


def _hydra_facts() -> dict:
    """The composed overrides and config group choices of the running Hydra job (empty outside one)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {"overrides": [], "choices": {}}
    hydra_cfg = HydraConfig.get()
    choices = {str(k): str(v) for k, v in hydra_cfg.runtime.choices.items() if not str(k).startswith("hydra/") and v is not None}
    return {"overrides": [str(o) for o in hydra_cfg.overrides.task], "choices": choices}


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "-"
    return "-" if value is None or value == "" else str(value)


class ModelCard(pl.Callback):
    """Write ``<dirpath>/model_card.md`` at the end of ``fit`` (global rank 0, atomically), record its
    fields in every logger (``card/*``: hyperparameters, W&B summary) and attach the file to the loggers
    that hold files. When the best checkpoint is validated after fit (``validate_best=true``), the card
    is rewritten with those metrics too.

    The wall time adds up over resumed runs (it travels in the checkpoint as callback state).

    Args:
        dirpath: the run folder.
        task_name: the run's ``task_name``.
        seed: the run's seed.
        filename: the card's name.
    """

    def __init__(self, dirpath: str, task_name: str = "train", seed: int | None = None, filename: str = CARD_NAME) -> None:
        self.path = Path(dirpath) / filename
        self.task_name, self.seed = task_name, seed
        self.seconds_before = 0.0
        self._started: float | None = None
        self.facts: dict | None = None

    def _elapsed(self) -> float:
        return self.seconds_before + (time.monotonic() - self._started if self._started is not None else 0.0)

    def state_dict(self) -> dict:
        return {"train_seconds": self._elapsed()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seconds_before = float(state_dict.get("train_seconds", 0.0))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.facts = self.collect(trainer, pl_module)
        self.write()
        log_summary(trainer.loggers, self.fields())
        log_file(trainer.loggers, self.path, step=trainer.global_step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pytorch_lightning.trainer.states import TrainerFn

        if self.facts is None or trainer.state.fn != TrainerFn.VALIDATING or not trainer.is_global_zero:
            return
        self.facts["best_validation"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.write()
        log_file(trainer.loggers, self.path, step=trainer.global_step)

    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        """Everything the card says, as plain values (see :meth:`render`)."""
        dm = trainer.datamodule
        run = pl_module.run_config or {}
        data, model = run.get("data", {}), run.get("model", {})
        data = {**data, **(data.get("preprocessing") or {})}  # the plan's settings beside the sampling ones
        hydra_facts = _hydra_facts()
        train_ids, val_ids = list(getattr(dm, "train_ids", [])), list(getattr(dm, "val_ids", []))
        # the strategy's device, not the module's: Lightning moves the module back to the CPU before on_fit_end
        device = trainer.strategy.root_device
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        checkpoint = trainer.checkpoint_callback
        best_score = getattr(checkpoint, "best_model_score", None)
        return {
            "task_name": self.task_name,
            "written": datetime.datetime.now().isoformat(timespec="seconds"),
            "run_dir": str(self.path.parent.resolve()),
            "data": {
                "config": hydra_facts["choices"].get("data"),
                "experiment": hydra_facts["choices"].get("experiment"),
                "reader": getattr(getattr(dm, "reader", None), "name", None),
                "root": str(Path(str(getattr(dm, "root", ""))).resolve()),
                "cases": len(set(train_ids) | set(val_ids)),  # fold all: the validation cases are training cases
                "training_cases": len(train_ids),
                "validation_cases": len(val_ids),
                "fold": getattr(dm, "fold", None),
                "validation_on_training_cases": str(getattr(dm, "fold", None)) == FOLD_ALL,
                "num_folds": getattr(dm, "num_folds", None),
                "splits_file": str(Path(dm.splits_path).resolve()) if hasattr(dm, "splits_path") else None,
                "modalities": list(getattr(dm, "modalities", [])),
                "labels": dict(getattr(dm, "labels", {})),
                "regions": {k: list(v) for k, v in getattr(dm, "regions", {}).items()},
                "synthetic": bool(getattr(dm, "phantoms", None)),
                "notice": getattr(dm, "notice", None),
            },
            "preprocessing": {
                key: data.get(key)
                for key in ("crop", "crop_size", "normalization", "spacing", "sampling", "context_slices", "patch_size", "batch_size",
                            "samples_per_epoch", "oversample_foreground", "foreground_sampling", "min_foreground_fraction", "augment")
                if key in data
            },
            "network": {
                "name": pl_module.hparams.get("name"),
                "class": model.get("net", {}).get("_target_", type(pl_module.net).__name__),
                "parameters": sum(p.numel() for p in pl_module.net.parameters()),
                "input": input_description(pl_module.modalities, getattr(pl_module, "context_slices", 0), pl_module.patch_size),
                "output": f"{len(pl_module.region_names)} sigmoid channels ({', '.join(pl_module.region_names)})",
                "loss": model.get("loss", {}).get("_target_"),
                "optimizer": {k: v for k, v in model.get("optimizer", {}).items() if k != "_partial_"},
                "scheduler": {k: v for k, v in (model.get("scheduler") or {}).items() if k != "_partial_"} or None,
                "threshold": pl_module.inference.threshold,
            },
            "training": {
                "steps": trainer.global_step,
                "epochs": trainer.current_epoch,
                "max_epochs": trainer.max_epochs,
                "wall_time_s": round(self._elapsed(), 1),
                "fast_dev_run": bool(trainer.fast_dev_run),
                "interrupted": trainer.interrupted,
                "seed": self.seed,
            },
            "hardware": {
                **cpu_description(),
                "torch_threads": torch.get_num_threads(),
                "gpu": gpu,
                "accelerator": type(trainer.accelerator).__name__,
                "devices": trainer.num_devices,
                "nodes": trainer.num_nodes,
                "precision": str(trainer.precision),
                "software": f"Python {platform.python_version()}, torch {torch.__version__}, "
                f"pytorch-lightning {pl.__version__}, lightning-brats {lightning_brats.__version__}",
            },
            "validation": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
            "best_checkpoint": {
                "path": getattr(checkpoint, "best_model_path", "") or None,
                "monitor": getattr(checkpoint, "monitor", None),
                "score": float(best_score) if best_score is not None else None,
            },
            "best_validation": None,
            "reproduce": {
                "overrides": hydra_facts["overrides"],
                "command": " ".join(["lightning-brats-train", *map(shlex.quote, hydra_facts["overrides"])]),
                "git_commit": git_commit(),
            },
        }

    def fields(self) -> dict:
        """The card's main facts, flat (``card/<name>``: str, int or float) for the loggers."""
        f = self.facts
        return {
            "card/data_config": _format(f["data"]["config"]),
            "card/data_root": f["data"]["root"],
            "card/cases": f["data"]["cases"],
            "card/fold": _format(f["data"]["fold"]),
            "card/validation_on_training_cases": bool(f["data"].get("validation_on_training_cases")),
            "card/splits_file": _format(f["data"]["splits_file"]),
            "card/synthetic_data": f["data"]["synthetic"],
            "card/parameters": f["network"]["parameters"],
            "card/steps": f["training"]["steps"],
            "card/epochs": f["training"]["epochs"],
            "card/wall_time_s": f["training"]["wall_time_s"],
            "card/cpu": f["hardware"]["cpu"],
            "card/cpu_isa": _format(f["hardware"]["cpu_isa"]),
            "card/gpu": _format(f["hardware"]["gpu"]),
            "card/precision": f["hardware"]["precision"],
            "card/command": f["reproduce"]["command"],
            "card/git_commit": _format(f["reproduce"]["git_commit"]),
        }

    def write(self) -> None:
        """Render the card and write it atomically."""
        text = self.render(self.facts)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(self.path, lambda p: p.write_text(text))

    @staticmethod
    def render(f: Mapping) -> str:
        """The card as Markdown, from :meth:`collect`'s facts."""
        d, n, t, h = f["data"], f["network"], f["training"], f["hardware"]
        lines = [f"# Model card: {n['name']} on {d['config'] or d['reader']} ({f['task_name']})", ""]
        lines += [f"Run folder `{f['run_dir']}`, written {f['written']}.", ""]
        if d["synthetic"]:
            lines += [f"> **Trained on SYNTHETIC phantoms, not real MRI.** {d['notice'] or ''}".rstrip(), ""]
        lines += ["## Data", "", f"- dataset config: `data={d['config']}`" + (f", `experiment={d['experiment']}`" if d["experiment"] else ""),
                  f"- reader: {d['reader']}; root: `{d['root']}`",
                  f"- labelled cases: {d['cases']} ({d['training_cases']} training, {d['validation_cases']} validation)",
                  (f"- fold all: every labelled case trains; split file: `{d['splits_file']}` (copied as `splits.json`)"
                   if d.get("validation_on_training_cases") else
                   f"- fold {d['fold']} of {d['num_folds']}; split file: `{d['splits_file']}` (copied as `splits.json`)"),
                  f"- modalities: {_format(d['modalities'])}; labels: {d['labels']}; regions: {d['regions']}", ""]
        lines += ["## Preprocessing", ""] + [f"- {k}: {_format(v)}" for k, v in f["preprocessing"].items()] + [""]
        lines += ["## Network", "", f"- `{n['class']}` (model={n['name']}): {n['parameters']:,} parameters",
                  f"- input: {n['input']}; output: {n['output']}, threshold {n['threshold']}",
                  f"- loss: `{n['loss']}`; optimizer: {n['optimizer']}; scheduler: {n['scheduler']}", ""]
        minutes = t["wall_time_s"] / 60
        lines += ["## Training", "", (f"- {t['steps']} steps, {t['epochs']} epochs (max_epochs {t['max_epochs']}), "
                  f"wall time {t['wall_time_s']:.0f} s ({minutes:.1f} min); seed {t['seed']}")]
        if t["fast_dev_run"]:
            lines.append("- **fast_dev_run**: a debugging run of one batch; the weights are meaningless")
        if t["interrupted"]:
            lines.append("- stopped early (interrupted)")
        lines += ["", "## Hardware", "", (f"- CPU: {h['cpu']}; ISA: {_format(h['cpu_isa'])}; torch kernels: {h['cpu_capability']}; "
                  f"{h['torch_threads']} threads"),
                  f"- GPU: {_format(h['gpu'])}; accelerator {h['accelerator']}, {h['devices']} device(s) x {h['nodes']} node(s)",
                  f"- precision: {h['precision']}", f"- {h['software']}", ""]
        lines += ["## Validation metrics", ""]
        if d.get("validation_on_training_cases"):
            lines += [f"> **Validation on training cases.** {FOLD_ALL_NOTE}.", ""]
        if f["validation"]:
            lines += ["| metric | last validation |" + (" best checkpoint |" if f["best_validation"] else ""),
                      "|---|---|" + ("---|" if f["best_validation"] else "")]
            for key, value in sorted(f["validation"].items()):
                best = f["best_validation"].get(key) if f["best_validation"] else None
                lines.append(f"| {key} | {value:.4f} |" + (f" {_format(best)} |" if f["best_validation"] else ""))
        else:
            lines.append("No validation ran.")
        best = f["best_checkpoint"]
        if best["path"] and best["monitor"] is None:
            lines += ["", f"Checkpoint: `{best['path']}`, the final epoch's weights (no selection by validation)."]
        elif best["path"]:
            lines += ["", f"Best checkpoint: `{best['path']}` ({best['monitor']} = {_format(best['score'])})."]
        r = f["reproduce"]
        lines += ["", "## Reproduce", "", "```", r["command"], "```", "",
                  f"(`python train.py` with the same overrides from a checkout) at git commit: {r['git_commit'] or 'unknown (not a git checkout)'}.",
                  "Paths in the overrides are those of the machine that trained.", ""]
        lines += ["## Intended use and limitations", "", INTENDED_USE]
        if d["synthetic"]:
            lines += ["", ("These weights were trained on synthetic phantoms: they show that the pipeline runs and say "
                      "nothing about performance on real MRI.")]
        return "\n".join(lines) + "\n"


def append_evaluation(ckpt_paths: str | Path | Iterable, summary: list[dict], description: str) -> list[Path]:
    """Append an evaluation summary to the model card of each checkpoint's run folder.

    Args:
        ckpt_paths: ``<run>/checkpoints/<name>.ckpt`` (or several: an ensemble); the card is
            ``<run>/model_card.md``.
        summary: :func:`lightning_brats.evaluation.summarize`'s rows (``metric``, ``region``, ``cases``,
            ``mean``, ``std``, ``median``, ...).
        description: one line saying what was evaluated (ground truth, case count, output folder).

    Returns:
        the cards appended to; a run without a card (trained before cards existed) is skipped with a warning.
    """
    paths = [ckpt_paths] if isinstance(ckpt_paths, (str, Path)) else list(ckpt_paths)
    section = [f"## Evaluation {datetime.datetime.now().isoformat(timespec='seconds')}", ""]
    if len(paths) > 1:
        section.append(f"Ensemble of {len(paths)} checkpoints: {', '.join(f'`{p}`' for p in paths)}.")
    section += [description, "", "| metric | region | cases | mean | std | median |", "|---|---|---|---|---|---|"]
    for row in summary:
        section.append(f"| {row['metric']} | {row['region']} | {row['cases']} | "
                       + " | ".join(_format(float(row[s])) for s in ("mean", "std", "median")) + " |")
    text = "\n".join(section) + "\n"
    appended = []
    for ckpt in paths:
        card = run_dir_of(ckpt) / CARD_NAME
        if not card.is_file():
            log.warning(f"{card} does not exist (a run from before model cards?): the evaluation is not appended")
            continue
        old = card.read_text()
        atomic_save(card, lambda p, old=old: p.write_text(old.rstrip("\n") + "\n\n" + text))
        appended.append(card)
    return appended

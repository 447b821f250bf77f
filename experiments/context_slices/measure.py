"""What data.context_slices = 0, 1, 2 costs experiment=brats_cpu per training step and per validated case (issue 25).

One process builds the preset's three networks (``data.context_slices`` 0, 1, 2: 4, 12, 20 input channels)
and its training samples (the preset's augmentation, the 2 mm cache's slice-major copies), then times,
round-robin so that a machine shared with other work slows every ``k`` alike:

- ``load``: drawing one batch (``data.batch_size`` samples: read, stack, crop, augment, targets);
- ``step``: one training step on it (forward with deep supervision, loss, backward, fused AdamW step) in
  the precision the preset picks here (bf16 autocast on CPUs with native bf16, else fp32);
- ``case``: whole-case inference of one validation case as validation and ``predict.py`` run it
  (``predict_logits``: the stack built once by ``stack_volume``, then slice by slice, one pass);
- ``stack``: ``stack_volume`` alone on that case.

Each is recorded as wall seconds and CPU seconds of this process (``time.process_time``: all its threads),
the second far less disturbed by other processes on a loaded machine. Untrained weights: the times do not
depend on them. Writes ``measurements.csv`` (one row per timed item) and prints the medians.

    python experiments/context_slices/measure.py --root ../shared/data/brats2018 --cache /tmp/ctx_cache \
        [--rounds 12] [--threads 1] [--out experiments/context_slices/measurements.csv]
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from pathlib import Path

import hydra
import torch
from torch.utils.data import default_collate

from lightning_brats.api import compose
from lightning_brats.data.context import stack_volume
from lightning_brats.data.sampling import TrainingSampleDataset
from lightning_brats.inference.sliding_window import predict_logits
from lightning_brats.training.hardware import cpu_info, inference_precision

CONTEXTS = (0, 1, 2)


def timed(fn, *args):
    """``(result, wall seconds, CPU seconds of this process)`` of ``fn(*args)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def draw_batch(dataset: TrainingSampleDataset, epoch: int, batch_size: int) -> dict:
    """One training batch as the loader collates it."""
    return default_collate([dataset[(epoch, i)] for i in range(batch_size)])


def train_step(module, optimizer, batch: dict, bf16: bool) -> torch.Tensor:
    """Forward (deep supervision), loss, backward and optimiser step, as the training loop runs them."""
    module.net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = module.train_loss(module.net(batch["image"]), batch["target"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def infer_case(module, case: torch.Tensor, inference, k: int, bf16: bool) -> torch.Tensor:
    """Whole-case logits as validation computes them (one pass, no flips)."""
    module.net.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return predict_logits(module.net, case, module.patch_size, inference.overlap, inference.sw_batch_size, k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/brats2018")
    parser.add_argument("--cache", default="/tmp/ctx_cache")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="rounds run first and not recorded")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the preset uses the CPUs it has)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("measurements.csv")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = inference_precision("auto", torch.device("cpu")) == "bf16"
    setups = {}
    for k in CONTEXTS:
        cfg = compose(["experiment=brats_cpu", f"data.root={args.root}", f"paths.cache_dir={args.cache}",
                       f"data.context_slices={k}", "data.num_workers=0"])
        torch.manual_seed(0)
        module = hydra.utils.instantiate(cfg.model)
        if not setups:
            datamodule = hydra.utils.instantiate(cfg.data)
            datamodule.prepare_data()
            datamodule.setup("fit")
            train_cases = datamodule.train_set.cases
            case = datamodule.val_set[0]["image"][None]
        dm = datamodule
        dataset = TrainingSampleDataset(train_cases, dm.regions, dm.patch_size, dm.batch_size, dm.oversample_foreground,
                                        dm.augment, dm.seed, dm.min_foreground_fraction, context_slices=k)
        optimizer = module.optimizer_factory(params=module.net.parameters())
        setups[k] = (module, dataset, optimizer, cfg)
    rows = []
    for round_ in range(args.warmup + args.rounds):
        for k, (module, dataset, optimizer, cfg) in setups.items():
            batch, load_wall, load_cpu = timed(draw_batch, dataset, round_, cfg.data.batch_size)
            _, step_wall, step_cpu = timed(train_step, module, optimizer, batch, bf16)
            logits, case_wall, case_cpu = timed(infer_case, module, case, cfg.inference, k, bf16)
            assert logits.shape[2:] == case.shape[2:]
            _, stack_wall, _ = timed(stack_volume, case, k)
            if round_ < args.warmup:
                continue
            rows.append({"context_slices": k, "input_channels": int(batch["image"].shape[1]), "round": round_,
                         "batch_size": cfg.data.batch_size, "load_wall_s": load_wall, "load_cpu_s": load_cpu,
                         "step_wall_s": step_wall, "step_cpu_s": step_cpu, "case_wall_s": case_wall,
                         "case_cpu_s": case_cpu, "case_shape": "x".join(map(str, case.shape[2:])),
                         "stack_wall_ms": stack_wall * 1000, "precision": "bf16" if bf16 else "32",
                         "threads": args.threads})
            print({key: round(v, 4) if isinstance(v, float) else v for key, v in rows[-1].items()}, flush=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({key: round(v, 5) if isinstance(v, float) else v for key, v in row.items()} for row in rows)
    print(f"\n{cpu_info().describe()}, {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"medians over {args.rounds} rounds")
    print("k  channels  load_cpu_s  step_cpu_s  step_wall_s  case_cpu_s  case_wall_s  stack_ms")
    base = {}
    for k in CONTEXTS:
        mine = [r for r in rows if r["context_slices"] == k]
        med = {key: statistics.median(r[key] for r in mine)
               for key in ("load_cpu_s", "step_cpu_s", "step_wall_s", "case_cpu_s", "case_wall_s", "stack_wall_ms")}
        base.setdefault("step", med["step_cpu_s"])
        base.setdefault("case", med["case_cpu_s"])
        print(f"{k}  {mine[0]['input_channels']:8d}  {med['load_cpu_s']:10.3f}  {med['step_cpu_s']:10.3f}  "
              f"{med['step_wall_s']:11.3f}  {med['case_cpu_s']:10.3f}  {med['case_wall_s']:11.3f}  {med['stack_wall_ms']:8.2f}"
              f"   (step CPU x{med['step_cpu_s'] / base['step']:.2f}, case CPU x{med['case_cpu_s'] / base['case']:.2f})")


if __name__ == "__main__":
    main()

"""Parameters, peak memory and CPU time per training step of every ``model=`` variant.

Usage:
    python experiments/benchmark_models.py [--repeats 3] [--models unet3d,segresnet] [--precisions 32,bf16]

Each variant is built from its own config (``conf/model/<name>.yaml``, 4 modalities in,
3 regions out) in a fresh process, so peak memory is that variant's alone. A step is what
training does: forward, loss (with deep supervision where the model has it), backward and an
AdamW update, under the stated precision. Prints a Markdown table; record it in
experiments/README.md with the machine and whether tcmalloc was preloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# model config, patch (voxels), batch size: 3D at brats_cpu_3d's 2 mm scale, 2D at brats_cpu's
CASES = [
    ("unet3d", (64, 64, 64), 2),
    ("resunet3d", (64, 64, 64), 2),
    ("attention_unet3d", (64, 64, 64), 2),
    ("unet3d_ds", (64, 64, 64), 2),
    ("segresnet", (64, 64, 64), 2),
    ("swinunetr", (64, 64, 64), 2),
    ("unet2d", (128, 128), 16),
    ("resunet2d", (128, 128), 16),
    ("attention_unet2d", (128, 128), 16),
    ("unet2d_ds", (128, 128), 16),
    # the 2024 networks (issue 25): full size (nnU-Net's ResEnc topology, MedNeXt S) and CPU size
    ("resencunet3d", (64, 64, 64), 2),
    ("resencunet3d_cpu", (64, 64, 64), 2),
    ("mednext", (64, 64, 64), 2),
    ("mednext_cpu", (64, 64, 64), 2),
    ("resencunet2d", (128, 128), 16),
    ("resencunet2d_cpu", (128, 128), 16),
    ("mednext2d", (128, 128), 16),
    ("mednext2d_cpu", (128, 128), 16),
]
PRECISIONS = ["32", "bf16"]


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(name: str, patch: tuple[int, ...], batch: int, precision: str, repeats: int) -> dict:
    """Build ``model=name`` and time ``repeats`` training steps after one warm-up (this process)."""
    import hydra
    import torch
    from hydra import compose, initialize_config_dir

    import lightning_brats  # noqa: F401  (resolvers)
    from lightning_brats.cli.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        # the module checks at construction that the network takes the window: give it the measured one
        window = [f"data.sampling={len(patch)}d", f"data.patch_size=[{','.join(map(str, patch))}]"]
        cfg = compose("train", overrides=[f"model={name}", "data=sample", *window])
    before = _rss_mib()
    torch.manual_seed(0)
    module = hydra.utils.instantiate(cfg.model)
    net, loss_fn = module.net.train(), module.train_loss
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 4, *patch)
    y = (torch.rand(batch, 3, *patch) > 0.9).float()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(x)
        loss = loss_fn([o.float() for o in out] if isinstance(out, list) else out.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "parameters": sum(p.numel() for p in net.parameters()),
        "seconds": statistics.median(times),
        "peak_mib": peak - before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="", help="comma-separated subset of model configs")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated subset of 32,bf16")
    parser.add_argument("--one", nargs=4, metavar=("NAME", "PATCH", "BATCH", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, patch, batch, precision = args.one
        result = measure(name, tuple(int(p) for p in patch.split("x")), int(batch), precision, args.repeats)
        print(json.dumps(result))
        return
    import torch

    wanted = set(filter(None, args.models.split(",")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}")
    print("| model | patch | batch | precision | params (M) | s/step | peak RSS increase (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, patch, batch in CASES:
        if wanted and name not in wanted:
            continue
        for precision in filter(None, args.precisions.split(",")):
            patch_text = "x".join(map(str, patch))
            proc = subprocess.run(
                [sys.executable, __file__, "--repeats", str(args.repeats), "--one", name, patch_text, str(batch), precision],
                cwd=REPO, capture_output=True, text=True, check=False,
            )
            if proc.returncode:
                print(f"| {name} | {patch_text} | {batch} | {precision} | failed: {proc.stderr.strip().splitlines()[-1]} |||")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"| {name} | {patch_text} | {batch} | {precision} | {r['parameters'] / 1e6:.2f} | {r['seconds']:.2f} "
                f"| {r['peak_mib'] / 1024:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

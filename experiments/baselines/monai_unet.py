"""Peer baseline: a plain MONAI 3D U-Net script for BraTS, trained on one fold of this project's
case-level split and predicting the held-out cases as NIfTI on their original 1 mm grid.

What it is (issue 16): MONAI ``UNet`` (channels 16-32-64-128, strides 2, one residual unit,
instance norm), 2 mm spacing, 64^3 patches, batch 2, a third of the samples centred on tumour
(``RandCropByPosNegLabeld`` pos 1 : neg 2), random flips and intensity scale/shift, sigmoid Dice +
BCE over WT/TC/ET, AdamW 2e-3 with poly decay (power 0.9) over ``--steps`` (3000), fp32, stopped
early by ``--minutes`` of training wall time. MONAI does the loading, preprocessing,
augmentation, sliding-window inference and the return to the original grid (``Invertd`` undoes
the spacing and the brain crop); lightning-brats gives only the fold split
(:func:`lightning_brats.data.datamodule.kfold_split` on the sorted labelled case IDs with the same
seed, so ``--fold k`` holds out the cases of ``train.py data.fold=k``) and the region -> label-code
nesting for the written label maps (:func:`lightning_brats.data.labels.regions_to_labels`).

    python experiments/baselines/monai_unet.py --root ../shared/data/brats2018 --fold 0 --minutes 16 \
        --out runs/monai_unet_fold0
    python eval.py predictions=runs/monai_unet_fold0/predictions ground_truth=../shared/data/brats2018 \
        data=brats20 'cases=[...]'     # the exact command is written to <out>/eval_command.txt

Outputs in ``--out``: ``checkpoint.pt`` (weights and settings), ``split.json`` (the fold's
cases), ``train_log.csv`` (step, loss, lr, seconds), ``summary.json`` (steps, s/step, wall
times), ``predictions/<case>.nii.gz`` (uint8, the release's codes 1 NCR/NET, 2 ED, 4 ET, the
input's affine and header), ``eval_command.txt``. Files are written through a temporary name
and renamed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, MetaTensor, decollate_batch
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from monai.networks.layers import Norm
from monai.networks.nets import UNet
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Spacingd,
    SpatialPadd,
)

from lightning_brats.data.labels import regions_to_labels
from lightning_brats.data.splits import kfold_split, read_splits

#: input channels, in the order of this project's data configs
MODALITIES = ("flair", "t1", "t1ce", "t2")
#: BraTS 2018-2021 regions -> label codes, in the output-channel order of conf/data/brats20.yaml
REGIONS = {"wt": [1, 2, 4], "tc": [1, 4], "et": [4]}


class LabelsToRegionsd(MapTransform):
    """``label (1, X, Y, Z)`` of label codes -> ``(R, X, Y, Z)`` float binary masks, one per region
    (keeping the MetaTensor's affine and transform history, which Spacingd and Invertd read)."""

    def __init__(self, keys, regions: dict[str, list[int]]) -> None:
        super().__init__(keys)
        self.regions = regions

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            masks = torch.stack([torch.isin(label[0].as_tensor(), torch.tensor(codes)) for codes in self.regions.values()])
            d[key] = MetaTensor(masks.float(), meta=dict(label.meta))  # the meta carries the affine
        return d


def find_cases(root: Path) -> dict[str, dict[str, str]]:
    """Labelled BraTS 2018-2021 cases under ``root``: ``{case_id: {"image": [4 paths], "label": path}}``.

    A case is a folder holding ``<case>_seg.nii[.gz]`` and the four modalities ``<case>_<m>.nii[.gz]``
    (the layout of conf/data/brats20.yaml, whose reader names cases the same way).

    Raises:
        FileNotFoundError: no labelled case under ``root``, or a case lacks a modality (named).
    """
    cases = {}
    for seg in sorted(root.rglob("*_seg.nii*")):
        case_id = re.sub(r"_seg\.nii(\.gz)?$", "", seg.name)
        images = []
        for m in MODALITIES:
            found = [seg.parent / f"{case_id}_{m}{ext}" for ext in (".nii.gz", ".nii")]
            found = [p for p in found if p.is_file()]
            if not found:
                raise FileNotFoundError(f"{seg.parent}: case {case_id} has no {m} image ({case_id}_{m}.nii[.gz])")
            images.append(str(found[0]))
        cases[case_id] = {"image": images, "label": str(seg), "case_id": case_id}
    if not cases:
        raise FileNotFoundError(f"--root {root}: no labelled BraTS case (<case>/<case>_seg.nii[.gz]) found")
    return cases


def fold_split(case_ids: list[str], fold: int, num_folds: int, seed: int, splits_file: str | None):
    """The fold's (train, val) case IDs, as this project's ``data.fold`` (or a splits file's fold ``fold``)."""
    if splits_file:
        folds = read_splits(splits_file)
        if not 0 <= fold < len(folds):
            raise ValueError(f"--splits-file {splits_file} has {len(folds)} folds, no fold {fold}")
        return sorted(folds[fold]["train"]), sorted(folds[fold]["val"])
    return kfold_split(case_ids, num_folds, fold, seed)


def preprocessing(spacing: float, keys: list[str]) -> list:
    """The deterministic part, shared by training and prediction (and inverted by ``Invertd``)."""
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    return [
        LoadImaged(keys=keys, ensure_channel_first=True),
        *([LabelsToRegionsd("label", REGIONS)] if "label" in keys else []),
        CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
        Spacingd(keys=keys, pixdim=(spacing,) * 3, mode=modes),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        EnsureTyped(keys=keys, dtype=torch.float32),
    ]


def training_transforms(spacing: float, patch: int) -> Compose:
    keys = ["image", "label"]
    return Compose(
        [
            *preprocessing(spacing, keys),
            SpatialPadd(keys=keys, spatial_size=(patch,) * 3),
            # pos 1 : neg 2 -> a third of the samples centred on a tumour voxel
            RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=(patch,) * 3, pos=1, neg=2, num_samples=1),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        ]
    )


def build_network() -> UNet:
    """MONAI ``UNet``: channels 16-32-64-128, strides 2, one residual unit, instance norm; 4 in, 3 out."""
    return UNet(
        spatial_dims=3,
        in_channels=len(MODALITIES),
        out_channels=len(REGIONS),
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=1,
        norm=Norm.INSTANCE,
    )


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data) -> None:
    _atomic(path, lambda p: p.write_text(json.dumps(data, indent=1)))


def train(args, train_cases: list[dict], out: Path) -> tuple[UNet, dict]:
    """Train for ``args.steps`` steps or ``args.minutes`` of training time, whichever ends first."""
    torch.manual_seed(args.seed)
    transforms = training_transforms(args.spacing, args.patch)
    transforms.set_random_state(seed=args.seed)
    start = time.perf_counter()
    # the deterministic preprocessing runs once per case (MONAI CacheDataset), outside the time budget
    dataset = CacheDataset(train_cases, transforms, cache_rate=1.0, num_workers=0, progress=False)
    setup_seconds = time.perf_counter() - start
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True)
    net = build_network()
    dice, bce = DiceLoss(sigmoid=True), torch.nn.BCEWithLogitsLoss()
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=args.steps, power=0.9)
    log_rows, step, budget = [], 0, (args.minutes * 60 if args.minutes else float("inf"))
    train_start = time.perf_counter()
    net.train()
    while step < args.steps and time.perf_counter() - train_start < budget:
        for batch in loader:
            image, target = batch["image"].as_tensor(), batch["label"].as_tensor()
            logits = net(image)
            loss = dice(logits, target) + bce(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss = loss.detach()
            optimizer.step()
            scheduler.step()
            step += 1
            log_rows.append({"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                             "seconds": round(time.perf_counter() - train_start, 3)})
            if step % 50 == 0 or step == args.steps:
                print(f"step {step}/{args.steps} loss {loss.item():.4f} ({log_rows[-1]['seconds']:.0f} s)", flush=True)
            if step >= args.steps or time.perf_counter() - train_start >= budget:
                break
    train_seconds = time.perf_counter() - train_start
    _atomic(out / "train_log.csv", lambda p: _write_csv(p, log_rows))
    stats = {
        "steps": step,
        "planned_steps": args.steps,
        "stopped_by": "steps" if step >= args.steps else "minutes",
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / max(step, 1), 4),
        "setup_seconds": round(setup_seconds, 1),
        "threads": torch.get_num_threads(),
        "precision": "32",
    }
    checkpoint = {"state_dict": net.state_dict(), "settings": vars(args) | {"regions": REGIONS,
                  "modalities": list(MODALITIES)}, "stats": stats}
    _atomic(out / "checkpoint.pt", lambda p: torch.save(checkpoint, p))
    return net, stats


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "loss", "lr", "seconds"])
        writer.writeheader()
        writer.writerows(rows)


def predict(args, net: torch.nn.Module, cases: list[dict], folder: Path) -> list[Path]:
    """Segment whole cases: MONAI Gaussian sliding window at the training patch, probabilities
    brought back to the original grid by ``Invertd`` (trilinear), thresholded at 0.5 and nested
    WT > TC > ET into the release's codes; written with the first modality's affine and header.

    Raises:
        RuntimeError: the inverted prediction does not have the input's shape (names the case).
    """
    folder.mkdir(parents=True, exist_ok=True)
    pre = Compose(preprocessing(args.spacing, ["image"]))
    invert = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)
    written = []
    net.eval()
    for case in cases:
        item = pre({"image": case["image"]})
        with torch.no_grad():
            logits = sliding_window_inference(
                item["image"][None], (args.patch,) * 3, sw_batch_size=4, predictor=net, overlap=0.5, mode="gaussian"
            )
        item["pred"] = decollate_batch(torch.sigmoid(logits))[0]
        probabilities = np.asarray(invert(item)["pred"])
        reference = nib.load(case["image"][0])
        if probabilities.shape[1:] != reference.shape:
            raise RuntimeError(f"{case['case_id']}: prediction {probabilities.shape[1:]} is not on the input grid {reference.shape}")
        label = regions_to_labels(probabilities > 0.5, REGIONS)
        image = nib.Nifti1Image(label.astype(np.uint8), reference.affine, reference.header.copy())
        image.set_data_dtype(np.uint8)
        path, tmp = folder / f"{case['case_id']}.nii.gz", folder / f".{case['case_id']}.tmp{os.getpid()}.nii.gz"
        nib.save(image, str(tmp))  # through a temporary name: no reader sees half a file
        os.replace(tmp, path)
        written.append(path)
        print(f"predicted {case['case_id']}", flush=True)
    return written


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="folder of BraTS 2018-2021 case folders (labelled)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--fold", type=int, default=0, help="held-out fold, as train.py data.fold")
    parser.add_argument("--num-folds", type=int, default=5, help="as data.num_folds")
    parser.add_argument("--seed", type=int, default=12345, help="as train.py seed (draws the folds)")
    parser.add_argument("--splits-file", default=None, help="a run's splits.json instead of drawing the folds")
    parser.add_argument("--steps", type=int, default=3000, help="training steps; the poly decay spans them")
    parser.add_argument("--minutes", type=float, default=None, help="training wall-clock budget (setup excluded)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--patch", type=int, default=64, help="cubic patch size in voxels")
    parser.add_argument("--spacing", type=float, default=2.0, help="mm, isotropic")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 3 training cases, 2 held out, 4 steps, 32^3")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.patch = min(args.steps, 4), 32
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    cases = find_cases(args.root)
    train_ids, val_ids = fold_split(list(cases), args.fold, args.num_folds, args.seed, args.splits_file)
    unknown = sorted(set(train_ids + val_ids) - set(cases))
    if unknown:
        raise ValueError(f"the split names cases not under --root {args.root}: {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"fold": args.fold, "num_folds": args.num_folds, "seed": args.seed, "splits_file": args.splits_file,
              "train": train_ids, "val": val_ids}
    if args.tiny:  # train on 3 of the fold's training cases, predict 2 of its held-out ones
        train_ids, val_ids = train_ids[:3], val_ids[:2]
        record |= {"tiny_train": train_ids, "tiny_val": val_ids}
    _write_json(args.out / "split.json", record)
    start = time.perf_counter()
    net, stats = train(args, [cases[i] for i in train_ids], args.out)
    predicted = predict(args, net, [cases[i] for i in val_ids], args.out / "predictions")
    stats["wall_seconds"] = round(time.perf_counter() - start, 1)
    _write_json(args.out / "summary.json", stats)
    command = (f"python eval.py predictions={args.out / 'predictions'} ground_truth={args.root} data=brats20 "
               f"'cases=[{','.join(val_ids)}]' task_name=eval_monai_unet")
    _atomic(args.out / "eval_command.txt", lambda p: p.write_text(command + "\n"))
    print(json.dumps(stats), "\n" + command, flush=True)
    return {"stats": stats, "predictions": predicted, "train": train_ids, "val": val_ids, "eval_command": command}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

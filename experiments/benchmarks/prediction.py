"""Prediction profile: seconds per case of every stage of the ``predict.py`` path against the sliding
window alone.

Usage:
    python experiments/benchmarks/prediction.py --root ../shared/data/brats2018 [--experiment brats_cpu]
        [--repeats 3] [--override model.net.base_filters=16 ...] [--csv experiments/benchmarks/prediction.csv]
    python experiments/benchmarks/prediction.py --tiny ...   # a tiny 3D network at 4 mm, no TTA, 1 repeat

The network is the ``--experiment``'s model with random weights (seeded): its cost per window is what a
trained one costs, and every stage after it sees the same shapes. One case (the first under ``--root``)
goes through the stages of :meth:`~lightning_brats.inference.prediction.Predictor.predict_case` and ``predict.py``,
each timed on its own (median of ``--repeats``, in the order they run):

``read`` (``load_case``, 4 modalities) -> ``preprocess`` (crop, z-score, resampling to the experiment's
spacing) -> ``network`` (the configured sliding window with flip TTA, ``inference.flip_tta``) ->
``resample_back`` (probabilities to the crop box of the original grid, trilinear) -> ``labels``
(threshold, nested regions to label codes, in the box) -> ``postprocess`` (small ET components, in
the box) -> ``uncrop`` (the uint8 label map onto the whole grid) -> ``write`` (the label map as
``.nii.gz``, atomically).

``sliding_window`` is one pass without TTA, the figure the issue compares with. ``whole`` times
``Predictor.predict_case`` plus the write in one go, a check that the stages add up. ``share`` is a
stage's share of ``whole`` (``cpu_share``: in CPU seconds of the process); ``share_of_window`` is its
share of ``sliding_window``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose, machine, median_seconds, report

from lightning_brats.data.labels import regions_to_labels
from lightning_brats.data.layouts import load_case
from lightning_brats.data.preprocess import preprocess_case, resample_to_crop, uncrop
from lightning_brats.data.readers import make_reader
from lightning_brats.inference.prediction import Predictor, TrainedModel, postprocessing_for, write_nifti
from lightning_brats.inference.sliding_window import InferenceSettings, predict_probabilities

STAGES = ("read", "preprocess", "network", "resample_back", "labels", "postprocess", "uncrop", "write")


def build_predictor(root: str | Path, overrides: Sequence[str], device: str = "cpu") -> Predictor:
    """A :class:`Predictor` with the experiment's network (random weights, seed 0) and inference settings."""
    cfg = compose([f"data.root={root}", *overrides])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    model = TrainedModel(net.eval().to(device), data, Path("random-weights"), torch.device(device))
    settings = InferenceSettings.from_config(cfg.inference)
    return Predictor(model, settings, postprocessing_for(model.release, settings.postprocess))


def profile(predictor: Predictor, files, out: Path, repeats: int) -> tuple[dict, dict]:
    """Median seconds of every stage, the sliding window alone and the whole path, for one case."""
    model, settings = predictor.model, predictor.settings
    timings = {}
    state = {}

    def timed(name: str, fn) -> None:
        timings[name] = median_seconds(fn, repeats)
        state[name] = fn()  # the stage's output for the next stage (not timed)

    timed("read", lambda: load_case(files, model.preprocessing.modalities, read_label=False))
    timed("preprocess", lambda: preprocess_case(state["read"], model.preprocessing))
    image, _, record = state["preprocess"]
    tensor = torch.from_numpy(image)[None].to(model.device)

    def network(tta: bool):
        with torch.no_grad(), predictor._autocast():
            probs = predict_probabilities(model.net, tensor, model.patch_size, settings.overlap, settings.sw_batch_size, tta)
        return probs[0].float().cpu().numpy()

    timings["sliding_window"] = median_seconds(lambda: network(False), repeats)
    timed("network", lambda: network(settings.flip_tta))
    probs = state["network"]
    timed("resample_back", lambda: resample_to_crop(probs, record, order=1))
    box = state["resample_back"]
    thresholds = np.asarray(settings.thresholds(list(model.regions)), dtype=box.dtype).reshape(-1, 1, 1, 1)
    timed("labels", lambda: regions_to_labels(box > thresholds, model.regions))
    box_label = state["labels"]
    timed("postprocess", lambda: predictor.postprocess.apply(box_label, model.regions)[0] if predictor.postprocess else box_label)
    timed("uncrop", lambda: uncrop(state["postprocess"], record, fill=0))
    label = state["uncrop"]
    case = state["read"]
    timed("write", lambda: write_nifti(label, case, out / f"{files.case_id}.nii.gz", "benchmark"))

    def whole() -> None:
        result = predictor.predict_case(files)
        write_nifti(result.label, result.case, out / f"{files.case_id}.nii.gz", "benchmark")

    timings["whole"] = median_seconds(whole, repeats)
    shapes = {"original": "x".join(map(str, case.image.shape[1:])), "preprocessed": "x".join(map(str, image.shape[1:]))}
    return timings, shapes


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    overrides = [f"experiment={args.experiment}", *args.override]
    predictor = build_predictor(args.root, overrides, args.device)
    layout = make_reader(predictor.model.release.layout)  # the experiment's data config's reader
    files = min(layout.find_cases(Path(args.root)), key=lambda c: c.case_id)
    with tempfile.TemporaryDirectory() as tmp:
        timings, shapes = profile(predictor, files, Path(tmp), args.repeats)
    whole, window = timings["whole"].wall, timings["sliding_window"].wall
    settings = predictor.settings
    common = {"experiment": args.experiment, "overrides": " ".join(args.override), "case": files.case_id, **shapes,
              "window": "x".join(map(str, predictor.model.patch_size)), "flip_tta": settings.flip_tta,
              "precision": predictor.precision, "repeats": args.repeats}
    rows = []
    for name in (*STAGES, "sliding_window", "whole"):
        t = timings[name]
        rows.append({"stage": name, "s_per_case": t.wall, "cpu_s": t.cpu, "share": t.wall / whole,
                     "share_of_window": t.wall / window, "cpu_share": t.cpu / timings["whole"].cpu,
                     "runs_s": t.runs_text(), **common})
        print(rows[-1], flush=True)
    outside = sum(timings[s].wall for s in STAGES if s != "network")
    outside_cpu = sum(timings[s].cpu for s in STAGES if s != "network")
    rows.append({"stage": "all but the network", "s_per_case": outside, "cpu_s": outside_cpu, "share": outside / whole,
                 "share_of_window": outside / window, "cpu_share": outside_cpu / timings["whole"].cpu, **common})
    return rows


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/brats2018", help="BraTS 2018-2020 cases (the first is predicted)")
    parser.add_argument("--experiment", default="brats_cpu", help="conf/experiment/<name>: the model, spacing, window")
    parser.add_argument("--override", nargs="*", default=[], help="more Hydra overrides (e.g. inference.flip_tta=false)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csv", default="experiments/benchmarks/prediction.csv")
    parser.add_argument("--tiny", action="store_true", help="3D U-Net of 4 base filters at 4 mm, 32^3 window, no TTA, 1 repeat")
    args = parser.parse_args(argv)
    if args.tiny:
        args.experiment, args.repeats = "brats_cpu_3d", 1
        args.override = ["model.net.base_filters=4", "data.preprocessing.spacing=[4,4,4]", "data.patch_size=[32,32,32]",
                         "inference.flip_tta=false", *args.override]
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse(argv)
    rows = run(args)
    settings = {k: rows[0][k] for k in ("experiment", "overrides", "case", "original", "preprocessed", "window",
                                         "flip_tta", "precision", "repeats")}
    report(rows, args.csv, "Prediction, seconds per case by stage", {**settings, **machine()},
           shown=["stage", "s_per_case", "cpu_s", "share", "cpu_share", "share_of_window", "runs_s"])
    return rows


if __name__ == "__main__":
    main()

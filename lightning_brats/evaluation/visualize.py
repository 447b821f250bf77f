"""Pictures of segmentations: ground truth and prediction through the tumour centre, Dice box plots.

The same case picture is written by ``eval.py`` (one PNG per case) and logged to W&B during
validation, so what a user sees while training is what the evaluation shows.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

#: Label colours (RGB 0-255), in nesting order: the label WT adds (edema), the label TC adds
#: (necrosis), the label ET adds (enhancing tumour); a single-region dataset uses the first.
LABEL_COLOURS = [(0, 200, 0), (255, 220, 0), (230, 30, 30)]

#: The three views: name, the axis held fixed (of an ``(X, Y, Z)`` RAS-like BraTS volume).
VIEWS = [("axial", 2), ("coronal", 1), ("sagittal", 0)]


def _pyplot():
    """``matplotlib.pyplot`` on a backend that draws without a screen (Agg), except in a Jupyter kernel,
    whose inline backend is left in place so figures show in the notebook."""
    import os

    import matplotlib

    chosen = getattr(matplotlib.rcParams, "_get_backend_or_none", lambda: None)() or os.environ.get("MPLBACKEND", "")
    if "inline" not in str(chosen).lower():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tumour_center(*labels: np.ndarray) -> tuple[int, int, int]:
    """Voxel index of the centre of mass of the first non-empty label map's tumour (label > 0).

    Args:
        labels: ``(X, Y, Z)`` label maps, tried in order (e.g. ground truth, then prediction).

    Returns:
        ``(x, y, z)`` voxels; the volume's centre when every map is empty.
    """
    for label in labels:
        if label is not None and np.any(label > 0):
            return tuple(int(np.rint(c)) for c in np.argwhere(label > 0).mean(0))
    shape = labels[0].shape
    return tuple(n // 2 for n in shape)


def _view(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2D slice of ``volume`` ``(X, Y, Z)`` through ``index`` on ``axis``, oriented for display."""
    plane = np.take(volume, index, axis=axis)
    return np.rot90(plane)  # RAS: anterior (axial) or superior (coronal, sagittal) up


def overlay(background: np.ndarray, label: np.ndarray, colours: Mapping[int, tuple], alpha: float = 0.5) -> np.ndarray:
    """Blend a label map onto a grey slice.

    Args:
        background: ``(H, W)`` intensities (any scale; shown between its 1st and 99th percentile).
        label: ``(H, W)`` label codes.
        colours: label code -> RGB (0-255); codes not in it are not painted.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    lo, hi = np.percentile(background, [1, 99]) if background.any() else (0.0, 1.0)
    grey = np.clip((background - lo) / max(hi - lo, 1e-8), 0, 1)
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    for code, colour in colours.items():
        m = label == code
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour, dtype=np.float64)
    return rgb.astype(np.uint8)


def label_colours(labels: Mapping[str, int], nesting: Sequence[int]) -> dict[int, tuple]:
    """Label code -> RGB: codes in ``nesting`` order (outermost region's first) get :data:`LABEL_COLOURS`.

    Args:
        labels: the release's label map, name -> code (for codes outside the nesting).
        nesting: the codes regions add, outermost first (from :func:`~lightning_brats.data.labels.nested_region_codes`).
    """
    codes = list(dict.fromkeys([*nesting, *labels.values()]))
    palette = [*LABEL_COLOURS, (0, 120, 255), (200, 0, 200)]
    return {int(code): palette[i % len(palette)] for i, code in enumerate(codes)}


def case_figure(
    background: np.ndarray,
    truth: np.ndarray | None,
    prediction: np.ndarray,
    labels: Mapping[str, int],
    nesting: Sequence[int],
    title: str = "",
    background_name: str = "",
):
    """Axial, coronal and sagittal slices through the tumour centre: ground truth | prediction.

    Args:
        background: ``(X, Y, Z)`` image shown underneath (T1ce or FLAIR).
        truth: ``(X, Y, Z)`` ground-truth label map, or ``None`` (prediction only).
        prediction: ``(X, Y, Z)`` predicted label map.
        labels: the release's label map, name -> code (names the legend).
        nesting: label codes in nesting order (ED, NCR, ET for BraTS), which fixes the colours.
        title: the figure's title (e.g. the case and its Dice).
        background_name: the modality underneath, for the column titles.

    Returns:
        a matplotlib ``Figure`` (close it with ``matplotlib.pyplot.close``).
    """
    plt = _pyplot()
    from matplotlib.patches import Patch

    colours = label_colours(labels, nesting)
    center = tumour_center(*([truth] if truth is not None else []), prediction)
    columns = [("ground truth", truth)] if truth is not None else []
    columns.append(("prediction", prediction))
    fig, axes = plt.subplots(len(VIEWS), len(columns), figsize=(3.2 * len(columns), 9.6), dpi=100, squeeze=False)
    for row, (view, axis) in enumerate(VIEWS):
        for col, (name, label) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(overlay(_view(background, axis, center[axis]), _view(label, axis, center[axis]), colours))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{name}" + (f" on {background_name}" if background_name else ""), fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{view} {'xyz'[axis]}={center[axis]}", fontsize=9)
    names = {int(code): name for name, code in labels.items()}
    legend = [Patch(color=np.asarray(colours[c]) / 255, label=f"{str(names.get(c, c)).upper()} ({c})") for c in colours if c in names]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return fig


def figure_to_png(fig) -> bytes:
    """Render a figure to PNG bytes and close it."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def figure_to_array(fig) -> np.ndarray:
    """Render a figure to an ``(H, W, 3)`` uint8 RGB array (for W&B) and close it."""
    plt = _pyplot()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def dice_boxplot(dice: Mapping[str, Sequence[float]], title: str = "Dice per case"):
    """Box plot of per-case Dice, one box per region, every case drawn as a point.

    Args:
        dice: region name -> per-case Dice values.

    Returns:
        a matplotlib ``Figure``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(dice), 4), dpi=100)
    names = list(dice)
    ax.boxplot([list(dice[n]) for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), [n.upper() for n in names])
    rng = np.random.default_rng(0)
    for i, name in enumerate(names, start=1):
        values = np.asarray(dice[name], dtype=float)
        ax.scatter(i + rng.uniform(-0.08, 0.08, values.size), values, s=12, alpha=0.6, zorder=3)
    ax.set(ylim=(-0.02, 1.02), ylabel="Dice", title=f"{title} (n={len(next(iter(dice.values()), []))})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig

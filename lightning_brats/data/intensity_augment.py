"""nnU-Net's intensity augmentations, on ``(B, C, *spatial)`` batches in torch, for both augmentation paths.

The transforms and their ranges follow nnU-Net v2's default training transforms
(``nnUNetTrainer.get_training_transforms``, Isensee et al., Nature Methods 2021, with the
``batchgeneratorsv2`` transforms it composes), each applied to a sample with its own probability
(nnU-Net's ``RandomTransform(apply_probability=...)``), in nnU-Net's order:

============================  ======  ==============================================================
transform                     nnU-Net what it does (z-scored intensities)
============================  ======  ==============================================================
Gaussian noise                0.1     add ``N(0, s^2)`` noise, ``s ~ U(0, 0.1)``, one field for all channels
Gaussian blur                 0.2     each channel with p 0.5: a separable Gaussian, ``sigma ~ U(0.5, 1)`` voxels per axis
multiplicative brightness     0.15    each channel times ``m``, ``m`` drawn as nnU-Net's ``BGContrast((0.75, 1.25))``
contrast                      0.15    each channel ``(x - mean) * m + mean`` (same ``m`` draw), clipped to its old range
simulated low resolution      0.25    each channel with p 0.5: nearest down to ``U(0.5, 1)`` of the size, linear back up
inverted gamma                0.1     each channel negated, gamma ``g`` (``BGContrast((0.7, 1.5))``), negated back
gamma                         0.3     each channel ``((x - min) / range) ** g * range + min``, mean and SD restored
============================  ======  ==============================================================

``BGContrast((lo, hi))``: with probability 0.5 ``U(lo, 1)``, else ``U(1, hi)`` (as many darker as brighter draws).
Voxels outside the brain (0 in every channel before the set, as ``zscore`` normalisation inside the brain
mask and the affine's zero padding leave them) are set back to 0 afterwards, as nnU-Net's
``MaskImageTransform(set_outside_to=0)`` does for datasets normalised inside a mask (BraTS), so that
training sees the background inference sees.
The probabilities are settings (``data.augment.noise_prob`` ...; 0 switches a transform off, the default, so
that presets train as they were recorded); ``augment=nnunet`` sets nnU-Net's. Labels are never touched.

With 2D samples that carry neighbouring slices as channels (``data.context_slices = k``, 2.5D input,
:mod:`lightning_brats.data.context`), a modality's ``2k + 1`` slices are one small volume to this set: they
share every draw of their modality (blur width, brightness, contrast, low-resolution scale, gamma), the
statistics the contrast and gamma transforms keep are the modality's over its slices, blur and low
resolution stay in-plane, and the noise field differs per slice but is shared by the modalities, as in 3D.
Independent draws per neighbouring slice would turn the context into noise.

Both paths run this same code: the per-sample CPU path (:class:`~lightning_brats.data.sampling.Augmentation`)
as a batch of one, with a ``torch.Generator`` seeded from the sample's NumPy generator, and the batch path
(:class:`~lightning_brats.data.batch_augment.BatchAugmentation`) on the training device, so both draw from
the same distributions by construction. Every parameter of a batch is drawn at once from one generator
(a fixed stream whatever is switched on); only the simulated low resolution loops, over the (sample,
channel) pairs it picked, since each has its own target size: on a GPU that choice is the one read back
to the host (the other transforms run unconditionally there and keep their result where drawn, so the
batch path syncs only when low resolution is on).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# the probabilities' names and defaults (torch-free, so importing lightning_brats registers them cheaply)
from lightning_brats.data.intensity_settings import (
    PROBABILITY_FIELDS,
    IntensityProbabilities,
    register_config_defaults,
)


def __getattr__(name: str):
    """``NNUNET_PROBABILITIES``: nnU-Net v2's apply probabilities (``nnUNetTrainer.get_training_transforms``),
    ``{"noise_prob": 0.1, ...}``, read from ``conf/augment/nnunet.yaml`` (``augment=nnunet``), where they are
    written once."""
    if name != "NNUNET_PROBABILITIES":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from omegaconf import OmegaConf

    from lightning_brats.configs import CONFIG_DIR

    values = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "augment" / "nnunet.yaml"))
    return {key: float(values[key]) for key in PROBABILITY_FIELDS}


NOISE_SD = (0.0, 0.1)            # nnU-Net's noise_variance, used by batchgeneratorsv2 as the SD
BLUR_SIGMA = (0.5, 1.0)          # voxels
BLUR_CHANNEL_PROB = 0.5
BRIGHTNESS = (0.75, 1.25)
CONTRAST = (0.75, 1.25)
LOW_RES_SCALE = (0.5, 1.0)
LOW_RES_CHANNEL_PROB = 0.5
GAMMA = (0.7, 1.5)
#: taps of our blur kernels: batchgeneratorsv2 uses ``round_to_odd(6 sigma + 0.5)``, at most 7 for sigma <= 1;
#: ours always 7 (their outer taps, where present, are the same Gaussian; weights differ by < 0.5 %)
BLUR_TAPS = 7


@dataclass(frozen=True)
class IntensityAugmentation(IntensityProbabilities):
    """nnU-Net's intensity augmentations (table in the module docstring), each with its probability per sample.

    Args:
        noise_prob, blur_prob, brightness_prob, contrast_prob, low_res_prob, inverted_gamma_prob, gamma_prob:
            probability in ``[0, 1]`` that a sample gets the transform (:class:`IntensityProbabilities`;
            nnU-Net's: :data:`NNUNET_PROBABILITIES`).

    Raises:
        ValueError: a probability outside ``[0, 1]``.
    """

    @classmethod
    def from_settings(cls, settings: Mapping) -> IntensityAugmentation:
        """Pick this class's fields out of a larger settings mapping (``data.augment``)."""
        return cls(**{name: settings[name] for name in PROBABILITY_FIELDS if name in settings})

    @property
    def enabled(self) -> bool:
        """Whether any transform has a non-zero probability."""
        return any(getattr(self, name) > 0 for name in PROBABILITY_FIELDS)

    def draw(
        self, batch: int, channels: int, dims: int, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Draw the parameters of a batch with ``generator`` (of ``device``).

        Returns:
            For each transform ``t`` a ``(B,)`` bool ``do_t`` (applied to the sample) and its parameters:
            ``noise_sd (B,)``; ``blur_channels (B, C)`` bool, ``blur_sigma (B, C, dims)`` voxels;
            ``brightness (B, C)``; ``contrast (B, C)``; ``low_res_channels (B, C)`` bool,
            ``low_res_scale (B, C)``; ``inverted_gamma_value (B, C)``; ``gamma_value (B, C)``; and
            ``noise_field`` ``None`` (the field is drawn by :meth:`apply`, which knows the patch size).
        """
        def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
            return low + (high - low) * torch.rand(*shape, generator=generator, device=device)

        def bg_contrast(low: float, high: float) -> torch.Tensor:  # nnU-Net's BGContrast, per (B, C)
            below = uniform(batch, channels) < 0.5
            return torch.where(below, uniform(batch, channels, low=low, high=1.0), uniform(batch, channels, low=1.0, high=high))

        params = {}
        for name in PROBABILITY_FIELDS:
            params["do_" + name.removesuffix("_prob")] = uniform(batch) < getattr(self, name)
        params["noise_sd"] = uniform(batch, low=NOISE_SD[0], high=NOISE_SD[1])
        params["blur_channels"] = uniform(batch, channels) < BLUR_CHANNEL_PROB
        params["blur_sigma"] = uniform(batch, channels, dims, low=BLUR_SIGMA[0], high=BLUR_SIGMA[1])
        params["brightness"] = bg_contrast(*BRIGHTNESS)
        params["contrast"] = bg_contrast(*CONTRAST)
        params["low_res_channels"] = uniform(batch, channels) < LOW_RES_CHANNEL_PROB
        params["low_res_scale"] = uniform(batch, channels, low=LOW_RES_SCALE[0], high=LOW_RES_SCALE[1])
        params["inverted_gamma_value"] = bg_contrast(*GAMMA)
        params["gamma_value"] = bg_contrast(*GAMMA)
        params["noise_field"] = None  # drawn in apply, only when some sample gets noise (its size is the patch's)
        return params

    @staticmethod
    def background(image: torch.Tensor, slices: int = 1) -> torch.Tensor:
        """Where every modality is 0 (outside the brain): the ``outside`` mask :meth:`apply` takes.

        Args:
            image: ``(B, C, *spatial)``; with ``slices > 1`` ``(B, M * slices, X, Y)``, ``slices``
                neighbouring slices per modality (modality-major, :mod:`lightning_brats.data.context`).
            slices: input channels per modality (``2k + 1``).

        Returns:
            ``(B, 1, *spatial)`` bool, or ``(B, 1, slices, X, Y)``: the background of each slice.
        """
        return (_by_modality(image, slices) == 0).all(dim=1, keepdim=True)

    def apply(
        self,
        image: torch.Tensor,
        params: Mapping[str, torch.Tensor],
        generator: torch.Generator | None = None,
        outside: torch.Tensor | None = None,
        slices: int = 1,
    ) -> torch.Tensor:
        """Apply drawn parameters to ``image (B, C, *spatial)`` (float); returns a new tensor of the same shape.

        Args:
            image: ``(B, C, *spatial)``, every spatial axis at least 4 voxels when blur is on; with
                ``slices > 1`` a 2D ``(B, M * slices, X, Y)``: ``slices`` neighbouring slices of each of
                ``M`` modalities, which share their modality's draws (module docstring).
            params: from :meth:`draw` (``channels`` = modalities ``M``, ``dims`` = 2 with ``slices > 1``).
            generator: draws the noise field when some sample gets noise (on ``image``'s device); ``None``
                uses torch's global generator (not reproducible per batch).
            outside: bool, voxels set to 0 afterwards (outside the brain), as :meth:`background` gives it
                (``(B, 1, *spatial)``, or ``(B, 1, slices, X, Y)``); default: :meth:`background` of ``image``.
            slices: input channels per modality, ``2k + 1`` (1: one channel per modality).

        Computations run in float32 and the result is cast back to ``image``'s dtype.

        Raises:
            ValueError: blur is drawn and an in-plane axis has fewer than 4 voxels (its reflect padding).
        """
        dtype = image.dtype
        x = _by_modality(image.float(), slices)  # (B, M, slices, X, Y) with slices > 1: a small volume per modality
        batch, channels, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
        dims = len(spatial)
        plane = spatial[1:] if slices > 1 else spatial  # blur and low resolution act in these axes

        def planar(values: torch.Tensor) -> torch.Tensor:  # (B, M, ...) per-modality values -> one per slice
            return values.repeat_interleave(slices, dim=1) if slices > 1 else values

        def slicewise(volume: torch.Tensor) -> torch.Tensor:  # (B, M, [slices,] X, Y) -> (B, M * slices, X, Y)
            return volume.reshape(batch, -1, *plane)
        per_channel = (batch, channels) + (1,) * dims
        per_sample = (batch,) + (1,) * (dims + 1)
        if outside is None:
            outside = (x == 0).all(dim=1, keepdim=True)
        outside = outside.reshape(batch, 1, *spatial)
        on_host = x.device.type == "cpu"  # on a GPU, no host sync: run a transform and keep it where drawn

        def chosen(name: str, channel_mask: torch.Tensor | None = None) -> torch.Tensor:
            mask = params["do_" + name][:, None].expand(batch, channels)
            return mask if channel_mask is None else mask & channel_mask

        def any_of(probability: float, mask: torch.Tensor) -> bool:
            return probability > 0 and (bool(mask.any()) if on_host else True)

        if any_of(self.noise_prob, params["do_noise"]):
            field = torch.randn((batch, 1, *spatial), generator=generator, device=x.device)
            x = x + torch.where(params["do_noise"].view(per_sample), field * params["noise_sd"].view(per_sample), 0.0)
        mask = chosen("blur", params["blur_channels"])
        if any_of(self.blur_prob, mask):
            if min(plane) < 4:
                raise ValueError(f"Gaussian blur needs every axis >= 4 voxels (reflect padding of 3); got {plane}")
            blurred = gaussian_blur(slicewise(x), planar(params["blur_sigma"])).view(x.shape)
            x = torch.where(mask.view(per_channel), blurred, x)
        x = x * torch.where(chosen("brightness"), params["brightness"], 1.0).view(per_channel)
        mask = chosen("contrast")
        if any_of(self.contrast_prob, mask):
            mean = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
            low, high = _channel_min(x), _channel_max(x)
            contrasted = ((x - mean) * params["contrast"].view(per_channel) + mean).clamp(low, high)
            x = torch.where(mask.view(per_channel), contrasted, x)
        mask = chosen("low_res", params["low_res_channels"])
        if any_of(self.low_res_prob, mask):
            if on_host:  # only the picked channels, each at its own size
                flat = slicewise(x).clone()
                for b, c in torch.nonzero(planar(mask)).tolist():
                    flat[b, c] = simulate_low_resolution(flat[b, c], float(params["low_res_scale"][b, c // slices]))
                x = flat.view(x.shape)
            else:  # every channel at its drawn size, kept where picked: the sizes never leave the device
                low = simulate_low_resolution_batch(slicewise(x), planar(params["low_res_scale"])).view(x.shape)
                x = torch.where(mask.view(per_channel), low, x)
        for name, sign in (("inverted_gamma", -1.0), ("gamma", 1.0)):
            mask = chosen(name)
            if any_of(getattr(self, f"{name}_prob"), mask):
                x = torch.where(mask.view(per_channel), sign * gamma_retaining_stats(sign * x, params[f"{name}_value"]), x)
        return x.masked_fill(outside, 0.0).reshape(image.shape).to(dtype)

    def __call__(
        self, image: torch.Tensor, generator: torch.Generator, outside: torch.Tensor | None = None, slices: int = 1
    ) -> torch.Tensor:
        """Draw with ``generator`` (on ``image``'s device) and apply to ``image (B, C, *spatial)``; see :meth:`apply`
        (``slices``: input channels per modality; the draws are per modality, ``C / slices`` of them)."""
        params = self.draw(image.shape[0], image.shape[1] // slices, image.ndim - 2, generator, image.device)
        return self.apply(image, params, generator, outside, slices)


def _by_modality(image: torch.Tensor, slices: int) -> torch.Tensor:
    """``(B, M * slices, X, Y)`` as ``(B, M, slices, X, Y)`` (a view); ``image`` itself for ``slices = 1``.

    Raises:
        ValueError: the channels are not a multiple of ``slices``.
    """
    if slices == 1:
        return image
    if image.shape[1] % slices:
        raise ValueError(f"{image.shape[1]} input channels are not {slices} slices per modality")
    return image.reshape(image.shape[0], image.shape[1] // slices, slices, *image.shape[2:])


def _channel_min(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).amin(dim=2).view(*x.shape[:2], *(1,) * (x.ndim - 2))


def _channel_max(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).amax(dim=2).view(*x.shape[:2], *(1,) * (x.ndim - 2))


def gaussian_kernels(sigma: torch.Tensor, taps: int = BLUR_TAPS) -> torch.Tensor:
    """Normalised 1D Gaussian kernels of ``taps`` taps centred on the middle one.

    Args:
        sigma: ``(...)`` standard deviations in voxels (> 0).

    Returns:
        ``(..., taps)`` kernels summing to 1. With ``taps=7`` a sigma of 0.5-1 voxel keeps what
        batchgeneratorsv2's ``round_to_odd(6 sigma + 0.5)`` taps keep (its outer taps, where present, are the same
        Gaussian).
    """
    offsets = torch.arange(taps, device=sigma.device, dtype=torch.float32) - (taps - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma[..., None].float()) ** 2)
    return weights / weights.sum(dim=-1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of every channel of every sample with its own sigma per axis.

    Args:
        x: ``(B, C, *spatial)`` float32, 2 or 3 spatial axes of at least 4 voxels.
        sigma: ``(B, C, dims)`` voxels.

    Returns:
        ``(B, C, *spatial)``: one grouped 1D convolution per axis, reflect padding (``torch``'s ``reflect``,
        scipy's ``mirror``), as batchgeneratorsv2's ``blur_dimension``.

    Raises:
        KeyError: ``x`` has neither 2 nor 3 spatial axes. RuntimeError (from ``F.pad``): an axis below 4 voxels.
    """
    batch, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
    dims = len(spatial)
    conv = {2: F.conv2d, 3: F.conv3d}[dims]
    kernels = gaussian_kernels(sigma)  # (B, C, dims, taps)
    half = (kernels.shape[-1] - 1) // 2
    out = x.reshape(1, batch * channels, *spatial)
    for axis in range(dims):
        shape = [batch * channels, 1] + [1] * dims
        shape[2 + axis] = kernels.shape[-1]
        weight = kernels[:, :, axis].reshape(shape)
        padding = [0, 0] * dims
        padding[2 * (dims - 1 - axis)] = padding[2 * (dims - 1 - axis) + 1] = half  # F.pad: last axis first
        # F.pad's reflect mode needs the padding below the axis size; patches are far larger than 3 voxels
        out = conv(F.pad(out, padding, mode="reflect"), weight, groups=batch * channels)
    return out.reshape(x.shape)


def simulate_low_resolution(channel: torch.Tensor, scale: float) -> torch.Tensor:
    """nnU-Net's simulated low resolution of one channel (batchgeneratorsv2's ``SimulateLowResolutionTransform``
    with synchronised axes).

    Args:
        channel: ``(*spatial)`` float, 2 or 3 axes.
        scale: relative size, e.g. 0.5 halves every axis (at least 1 voxel).

    Returns:
        ``(*spatial)``: nearest-exact down to ``round(size * scale)`` voxels per axis, then (bi/tri)linear
        (``align_corners=False``) back to the original size.
    """
    spatial = tuple(channel.shape)
    small = [max(1, round(size * scale)) for size in spatial]
    mode = {2: "bilinear", 3: "trilinear"}[len(spatial)]
    down = F.interpolate(channel[None, None], size=small, mode="nearest-exact")
    return F.interpolate(down, size=spatial, mode=mode, align_corners=False)[0, 0]


def simulate_low_resolution_batch(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """:func:`simulate_low_resolution` of every channel of a batch at once, each at its own scale, with
    no host synchronisation: the nearest-exact and linear (``align_corners=False``) resampling of
    ``F.interpolate`` written as gathers whose indices follow from ``scale`` on the device, one axis at a
    time (separable, as ``F.interpolate``'s linear modes are).

    Args:
        x: ``(B, C, *spatial)`` float, 2 or 3 spatial axes.
        scale: ``(B, C)`` relative sizes (``round(size * scale)`` voxels per axis, at least 1).

    Returns:
        ``(B, C, *spatial)``, equal to :func:`simulate_low_resolution` per channel up to float rounding.
    """
    batch, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
    out = x
    for axis, n in enumerate(spatial):
        m = torch.round(n * scale.float()).clamp_min(1)  # (B, C) reduced sizes
        j = torch.arange(n, device=x.device, dtype=torch.float32)
        source = ((m / n)[..., None] * (j + 0.5) - 0.5).clamp_min(0)  # linear up-sampling: where in the small grid
        i0 = source.floor()
        w1 = source - i0
        i1 = torch.minimum(i0 + 1, m[..., None] - 1)

        step = (n / m)[..., None]  # nearest-exact down-sampling: small voxel i comes from full voxel (i + 0.5) * step
        shape = [batch, channels] + [1] * len(spatial)
        shape[2 + axis] = n
        full = list(out.shape)
        g0 = out.gather(2 + axis, ((i0 + 0.5) * step).floor().clamp_max(n - 1).long().view(shape).expand(full))
        g1 = out.gather(2 + axis, ((i1 + 0.5) * step).floor().clamp_max(n - 1).long().view(shape).expand(full))
        w1 = w1.view(shape)
        out = g0 * (1 - w1) + g1 * w1
    return out


def gamma_retaining_stats(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``((x - min) / range) ** gamma * range + min`` per channel, then the channel's mean and SD restored
    (batchgeneratorsv2's ``GammaTransform`` with ``p_retain_stats=1``).

    Args:
        x: ``(B, C, *spatial)`` float32.
        gamma: ``(B, C)`` exponents.
    """
    shape = (*x.shape[:2], *(1,) * (x.ndim - 2))
    axes = tuple(range(2, x.ndim))
    mean, sd = x.mean(dim=axes, keepdim=True), x.std(dim=axes, keepdim=True)
    low = _channel_min(x)
    span = (_channel_max(x) - low).clamp_min(1e-7)
    y = ((x - low) / span).pow(gamma.view(shape)) * span + low
    new_mean, new_sd = y.mean(dim=axes, keepdim=True), y.std(dim=axes, keepdim=True)
    return (y - new_mean) * (sd / new_sd.clamp_min(1e-7)) + mean


def intensity_seed(rng: np.random.Generator) -> int:
    """A ``torch.Generator`` seed drawn from a NumPy generator (the CPU path's per-sample stream)."""
    return int(rng.integers(0, 2**62))


__all__ = [  # and NNUNET_PROBABILITIES, read from conf/augment/nnunet.yaml on access (module __getattr__)
    "PROBABILITY_FIELDS",
    "IntensityAugmentation",
    "IntensityProbabilities",
    "gamma_retaining_stats",
    "gaussian_blur",
    "gaussian_kernels",
    "intensity_seed",
    "register_config_defaults",
    "simulate_low_resolution",
]

"""Training augmentation of whole batches on the training device, in pure torch.

The same transforms, with the same distributions, as the per-sample CPU path
(:class:`~lightning_brats.data.sampling.Augmentation`), applied after the batch reaches the
device (``data.augment.device=batch``, from :meth:`SegmentationDataModule.on_after_batch_transfer
<lightning_brats.data.datamodule.SegmentationDataModule.on_after_batch_transfer>`): parameters are drawn
for the whole batch with one ``torch.Generator`` on the batch's device, the random rotation and
scaling of every sample is one ``affine_grid`` and one ``grid_sample`` per tensor (images
trilinear, label maps or targets nearest so they keep their values), flips and intensity changes are masked
tensor operations. The loader sends uint8 label maps, turned into float region targets here after the
augmentation (:func:`label_regions`). Nothing leaves the device, so a GPU runs it with no CPU in the loop
(nnU-Net's simulated low resolution, when on, reads which channels it picked back to the host); this follows the
GPU-batched augmentation of nnU-Net users' trainers (batchgeneratorsv2 transforms run per
batch), written for our transforms.

The affine follows MONAI's ``Affine`` (which the CPU path used before it called this module's): an output voxel at
centred coordinates ``p`` (voxels from the patch centre) samples the input at ``R S p`` with
``R = Rx Ry Rz`` (3D; one angle in 2D) and ``S = diag(scales)``, zero padding, ``align_corners=False``.
An elastic deformation (:func:`elastic_displacement`, batchgenerators' ``elastic_deform_coordinates_2``
as nnU-Net's BraTS 2020 entry used it) moves where each voxel samples by a smooth random offset before
the rotation and scaling, in the same ``grid_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from lightning_brats.data.context import per_modality, slices_per_modality
from lightning_brats.data.intensity_augment import IntensityAugmentation


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices as MONAI's ``create_rotate`` builds them (``"XYZ"``: ``Rx @ Ry @ Rz``).

    Args:
        angles: ``(B, 1)`` radians (2D, about the slice normal) or ``(B, 3)`` radians about the
            first, second and third spatial axes (3D).

    Returns:
        ``(B, 2, 2)`` or ``(B, 3, 3)`` matrices acting on spatial coordinates in array-axis order.

    Raises:
        ValueError: ``angles`` has neither 1 nor 3 columns.
    """
    cos, sin = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])
    if angles.shape[1] == 1:
        return torch.stack([torch.stack([cos[:, 0], -sin[:, 0]], -1), torch.stack([sin[:, 0], cos[:, 0]], -1)], 1)
    if angles.shape[1] != 3:
        raise ValueError(f"expected (B, 1) or (B, 3) angles, got {tuple(angles.shape)}")
    c, s = cos.unbind(1), sin.unbind(1)
    rx = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, c[0], -s[0]], -1),
                      torch.stack([zero, s[0], c[0]], -1)], 1)
    ry = torch.stack([torch.stack([c[1], zero, s[1]], -1), torch.stack([zero, one, zero], -1),
                      torch.stack([-s[1], zero, c[1]], -1)], 1)
    rz = torch.stack([torch.stack([c[2], -s[2], zero], -1), torch.stack([s[2], c[2], zero], -1),
                      torch.stack([zero, zero, one], -1)], 1)
    return rx @ ry @ rz


def affine_grid(matrices: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Sampling grid for ``grid_sample`` that samples the input at ``matrices @ p`` (MONAI's convention).

    Args:
        matrices: ``(B, d, d)`` linear maps on centred voxel coordinates (array-axis order), ``d = 2 or 3``.
        spatial: the patch's spatial shape ``(x, y[, z])`` (voxels), the same for input and output.

    Returns:
        ``(B, *spatial, d)`` grid in ``grid_sample``'s normalised coordinates (last axis reversed:
        ``(z, y, x)`` order, ``align_corners=False``).
    """
    # theta maps normalised output coordinates (reversed axes) to normalised input coordinates:
    # p = u * n / 2 (align_corners=False), q = M p, v = q * 2 / n: theta = diag(2/n) M diag(n/2)
    d = len(spatial)
    theta = torch.stack([torch.stack([matrices[:, i, j] * (spatial[j] / spatial[i]) for j in range(d)], -1)
                         for i in range(d)], 1)  # scalar factors: no host-to-device copy (no sync on a GPU)
    theta = theta.flip(1).flip(2)  # array-axis order -> grid_sample's (last axis first) order
    return _centred_affine_grid(theta, spatial)


def _centred_affine_grid(theta: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """``F.affine_grid(cat([theta, 0]), align_corners=False)`` as a sum of broadcast 1D ramps.

    The grid is linear in each voxel index, so ``d`` outer sums of ``(n_k, d)`` ramps build it in one
    pass over the output, several times faster than ``F.affine_grid`` on a CPU (experiments/benchmarks/README.md).
    Equal to ``F.affine_grid`` within float32 rounding (tested).

    Args:
        theta: ``(B, d, d)`` linear map from normalised output to normalised input coordinates, both
            in ``grid_sample``'s reversed axis order.
        spatial: the output's spatial shape in tensor order.

    Returns:
        ``(B, *spatial, d)`` contiguous grid.
    """
    d = theta.shape[1]
    grid = theta.new_zeros((theta.shape[0], *([1] * d), d))
    for k in range(d):  # grid coordinate k runs along tensor dim d - 1 - k (x is the last dim)
        dim = d - 1 - k
        n = spatial[dim]
        ramp = (torch.arange(n, dtype=theta.dtype, device=theta.device) * 2 + 1) / n - 1  # voxel centres
        shape = [theta.shape[0]] + [1] * d + [d]
        shape[1 + dim] = n
        grid = grid + (ramp[None, :, None] * theta[:, None, :, k]).reshape(shape)
    return grid


#: Coarse grid nodes per axis on which :func:`elastic_displacement` smooths its noise.
ELASTIC_NODES = 32


def elastic_displacement(
    scale: torch.Tensor, magnitude: torch.Tensor, spatial: tuple[int, ...], generator: torch.Generator,
) -> torch.Tensor:
    """Random elastic offsets, as batchgenerators' ``elastic_deform_coordinates_2`` (used by
    ``augment_spatial_2``, the spatial transform of nnU-Net's BraTS 2020 entry, Isensee et al. 2020, "DA3").

    For each axis ``a``: ``U(-1, 1)`` noise, smoothed by a periodic Gaussian (``fourier_gaussian``) of
    ``sigma_a = scale * n_a`` voxels, then divided by its largest absolute value and multiplied by
    ``magnitude[:, a]``, so that axis's largest offset is exactly ``magnitude[:, a]`` voxels.
    batchgenerators smooths the full-resolution noise; here the noise is drawn on a periodic grid of
    ``ELASTIC_NODES`` nodes per axis, smoothed there by FFT and interpolated (linearly, periodically) to
    the patch. The smoothed field is band-limited, so this matches the full-resolution field's statistics
    where ``sigma_a`` spans two nodes or more (tested against scipy); for smaller ``sigma_a`` (under
    ``2 n_a / ELASTIC_NODES`` voxels, largest offsets under ``n_a / ELASTIC_NODES``) the field comes out
    smoother than asked. Everything stays on ``scale``'s device with no host sync.

    Args:
        scale: ``(B,)`` the Gaussian's width as a fraction of the patch size (DA3: ``U(0, 0.25)``).
        magnitude: ``(B, d)`` the largest offset per axis in voxels (DA3: ``U(sigma_a / 8, sigma_a / 2)``).
        spatial: the patch's spatial shape (voxels), 2 or 3 axes.
        generator: draws the noise, on ``scale``'s device.

    Returns:
        ``(B, *spatial, d)`` float32 offsets in voxels, last axis in array-axis order.
    """
    batch, d, device = scale.shape[0], len(spatial), scale.device
    nodes = [min(ELASTIC_NODES, n) for n in spatial]
    noise = torch.rand(batch, d, *nodes, generator=generator, device=device, dtype=torch.float32) * 2 - 1
    spectrum = torch.fft.fftn(noise, dim=tuple(range(2, 2 + d)))
    for axis, (n, m) in enumerate(zip(spatial, nodes)):
        # fourier_gaussian: exp(-2 pi^2 sigma^2 f^2), f in cycles per node, sigma in nodes (n / m voxels each)
        frequency = torch.fft.fftfreq(m, device=device)
        width = scale.to(torch.float32) * m  # sigma_a / (n / m)
        gain = torch.exp(-2 * math.pi ** 2 * (width[:, None] * frequency[None]) ** 2)  # (B, m)
        spectrum = spectrum * gain.view(batch, 1, *([1] * axis), m, *([1] * (d - axis - 1)))
    field = torch.fft.ifftn(spectrum, dim=tuple(range(2, 2 + d))).real
    for axis in range(d):  # periodic: node 0 again after the last, so the patch spans nodes 0 .. m exactly
        field = torch.cat([field, field.narrow(2 + axis, 0, 1)], dim=2 + axis)
    mode = "bilinear" if d == 2 else "trilinear"
    field = F.interpolate(field, size=tuple(n + 1 for n in spatial), mode=mode, align_corners=True)
    field = field[(slice(None), slice(None), *(slice(0, n) for n in spatial))]
    peak = field.abs().amax(dim=tuple(range(2, 2 + d)), keepdim=True).clamp_min(1e-8)
    field = field / peak * magnitude.to(torch.float32).view(batch, d, *(1,) * d)
    return field.movedim(1, -1)


def elastic_grid_offsets(offsets: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Grid offsets that deform before the affine, as batchgenerators does (offsets added to the
    coordinates, then rotated and scaled): a voxel at ``p`` samples the input at ``M (p + offset(p))``.

    Args:
        offsets: ``(B, *spatial, d)`` voxel offsets from :func:`elastic_displacement`.
        matrices: ``(B, d, d)`` the affine's matrices (identity where only the elastic deformation is drawn).

    Returns:
        ``(B, *spatial, d)`` offsets to add to :func:`affine_grid`'s grid (normalised, reversed axes).
    """
    moved = torch.einsum("b...j,bij->b...i", offsets, matrices.to(offsets.dtype))  # M @ offset per voxel
    return displacement_to_grid(moved)


def displacement_to_grid(displacement: torch.Tensor) -> torch.Tensor:
    """Voxel offsets ``(B, *spatial, d)`` (array-axis order) as ``grid_sample`` offsets (normalised,
    ``align_corners=False``, last axis reversed), to add to :func:`affine_grid`'s grid."""
    spatial = displacement.shape[1:-1]
    return torch.stack([displacement[..., a] * (2.0 / n) for a, n in enumerate(spatial)], -1).flip(-1)


class BatchAugmentation:
    """The CPU augmentation's transforms on ``(B, C, *spatial)`` batches, in torch on their device.

    Args:
        flip: flip each spatial axis of each sample with probability 0.5.
        intensity: with probability 0.5 each (per sample), scale the channels by ``U(0.9, 1.1)`` and
            shift them by ``U(-0.1, 0.1)`` (independently per modality; a modality's neighbouring slices,
            ``context_slices`` in :meth:`apply`, share its values).
        spatial_prob: probability, per sample, of a random rotation and scaling.
        rotate_deg: rotation range in degrees, ``U(-r, r)`` about each axis (about the slice normal in 2D).
        scale: relative scaling range, ``1 + U(-s, s)`` per axis.
        elastic_prob: probability, per sample, of an elastic deformation (:func:`elastic_displacement`),
            resampled in the same ``grid_sample`` as the rotation and scaling (0: off, nnU-Net v2's default).
        elastic_scale: ``(low, high)``: its Gaussian's width as a fraction of the patch size,
            ``U(low, high)`` per sample (DA3: ``(0, 0.25)``); each axis's largest offset is then
            ``U(sigma_a / 8, sigma_a / 2)`` voxels (batchgenerators' rule).
        **intensity_probs: nnU-Net's intensity augmentations' probabilities (``noise_prob`` ...,
            :class:`~lightning_brats.data.intensity_augment.IntensityAugmentation`), 0 by default.

    The order matches the CPU path: affine and elastic, then flips, then scale, then shift, then nnU-Net's
    intensity set.

    Raises:
        ValueError: ``elastic_prob`` outside ``[0, 1]``, or ``elastic_scale`` not ``[low, high]`` with
            ``0 <= low <= high``.
    """

    def __init__(
        self, flip: bool = True, intensity: bool = True, spatial_prob: float = 0.2, rotate_deg: float = 15.0,
        scale: float = 0.15, elastic_prob: float = 0.0, elastic_scale: tuple[float, float] = (0.0, 0.25),
        **intensity_probs: float,
    ) -> None:
        self.flip, self.intensity = flip, intensity
        self.spatial_prob, self.rotate_deg, self.scale = float(spatial_prob), float(rotate_deg), float(scale)
        self.elastic_prob = float(elastic_prob)
        self.elastic_scale = elastic_range(elastic_prob, elastic_scale)
        self.intensity_set = IntensityAugmentation(**intensity_probs)

    def draw(
        self, batch: int, channels: int, dims: int, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Draw the parameters of a batch (on ``device``, with ``generator`` of that device).

        Returns:
            ``spatial (B,)`` bool, ``angles (B, 1 | 3)`` radians, ``scales (B, dims)``, ``flips (B, dims)``
            bool, ``do_scale (B,)`` bool, ``factors (B, C)``, ``do_shift (B,)`` bool, ``shifts (B, C)``.
            Parameters of transforms that are switched off are drawn all the same (a fixed stream).
            With ``elastic_prob > 0`` also ``elastic (B,)`` bool, ``elastic_scale (B,)`` and
            ``elastic_magnitude (B, dims)`` (fractions of ``sigma_a`` in ``[1/8, 1/2]``), drawn after the
            others (so the stream of the others does not change).
        """
        def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
            return low + (high - low) * torch.rand(*shape, generator=generator, device=device)

        angle = math.radians(self.rotate_deg)
        return {
            "spatial": uniform(batch) < self.spatial_prob,
            "angles": uniform(batch, 1 if dims == 2 else 3, low=-angle, high=angle),
            "scales": 1.0 + uniform(batch, dims, low=-self.scale, high=self.scale),
            "flips": (uniform(batch, dims) < 0.5) & self.flip,
            "do_scale": (uniform(batch) < 0.5) & self.intensity,
            "factors": uniform(batch, channels, low=0.9, high=1.1),
            "do_shift": (uniform(batch) < 0.5) & self.intensity,
            "shifts": uniform(batch, channels, low=-0.1, high=0.1),
            **({
                "elastic": uniform(batch) < self.elastic_prob,
                "elastic_scale": uniform(batch, low=self.elastic_scale[0], high=self.elastic_scale[1]),
                "elastic_magnitude": uniform(batch, dims, low=1 / 8, high=1 / 2),
            } if self.elastic_prob > 0 else {}),
        }

    def apply(
        self,
        image: torch.Tensor,
        target: torch.Tensor,
        params: Mapping[str, torch.Tensor],
        subset: bool | None = None,
        generator: torch.Generator | None = None,
        context_slices: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply drawn parameters to a batch.

        Args:
            image: ``(B, C, *spatial)`` float images.
            target: ``(B, R, *spatial)`` binary float targets, or ``(B, 1, *spatial)`` integer label maps
                (uint8 codes, as the training loader sends them: :func:`label_regions` then gives the same
                targets as augmenting the targets, since nearest resampling and flips pick the same source
                voxel for every channel and zero padding is background); resampled nearest, so they keep
                their values and dtype.
            params: from :meth:`draw`.
            subset: resample only the samples drawn for the affine (needs their indices on the host:
                a device sync) instead of resampling all and keeping those; default: on CPU only.
            generator: draws nnU-Net's intensity set's parameters and noise (when the set is on) and the
                elastic deformation's noise, on the batch's device.
            context_slices: ``k`` of 2.5D samples (:mod:`lightning_brats.data.context`): ``image`` holds
                ``2k + 1`` slices per modality, which share their modality's intensity draws (``params``
                then has ``factors``/``shifts`` per modality, ``(B, C / (2k + 1))``); spatial transforms
                move every channel alike anyway.

        Returns:
            ``(image, target)`` augmented, same shapes and dtypes.
        """
        dims = image.ndim - 2
        spatial = tuple(image.shape[2:])
        elastic = self.elastic_prob > 0
        if self.spatial_prob > 0 or elastic:
            matrices = rotation_matrices(params["angles"].to(torch.float32)) @ torch.diag_embed(params["scales"].to(torch.float32))
            moved = params["spatial"]
            offsets = None
            if elastic:
                if generator is None:
                    raise ValueError("elastic deformation (elastic_prob > 0) needs a generator to draw its noise")
                eye = torch.eye(dims, dtype=matrices.dtype, device=matrices.device)
                matrices = torch.where(moved.view(-1, 1, 1), matrices, eye)  # elastic only: no affine
                voxels = elastic_displacement(params["elastic_scale"], elastic_magnitudes(params, spatial), spatial,
                                              generator)
                offsets = elastic_grid_offsets(voxels, matrices)
                offsets = offsets * params["elastic"].view(-1, *(1,) * (dims + 1)).to(offsets.dtype)
                moved = moved | params["elastic"]
            subset = image.device.type == "cpu" if subset is None else subset
            if subset:
                chosen = torch.nonzero(moved).flatten()
                if len(chosen):
                    grid = affine_grid(matrices[chosen], spatial)
                    if offsets is not None:
                        grid = grid + offsets[chosen]
                    image, target = image.clone(), target.clone()
                    image[chosen] = resample(image[chosen], grid, "bilinear")
                    target[chosen] = resample(target[chosen], grid, "nearest")
            else:
                grid = affine_grid(matrices, spatial)
                if offsets is not None:
                    grid = grid + offsets
                keep = moved.view(-1, *(1,) * (dims + 1))
                image = torch.where(keep, resample(image, grid, "bilinear"), image)
                target = torch.where(keep, resample(target, grid, "nearest"), target)
        if self.flip:
            for axis in range(dims):
                chosen = params["flips"][:, axis].view(-1, *(1,) * (dims + 1))
                image = torch.where(chosen, image.flip(axis + 2), image)
                target = torch.where(chosen, target.flip(axis + 2), target)
        slices = slices_per_modality(context_slices)
        outside = IntensityAugmentation.background(image, slices) if self.intensity_set.enabled else None
        if self.intensity:
            shape = (*image.shape[:2], *(1,) * dims)
            factors = per_modality(torch.where(params["do_scale"][:, None], params["factors"], 1.0), context_slices)
            shifts = per_modality(torch.where(params["do_shift"][:, None], params["shifts"], 0.0), context_slices)
            image = image * factors.view(shape).to(image.dtype) + shifts.view(shape).to(image.dtype)
        if self.intensity_set.enabled:
            image = self.intensity_set(image, generator, outside, slices)
        return image, target

    def __call__(
        self, image: torch.Tensor, target: torch.Tensor, generator: torch.Generator, context_slices: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw with ``generator`` (on the batch's device) and apply; see :meth:`draw` and :meth:`apply`
        (``context_slices``: the draws are per modality, ``C / (2k + 1)`` of them)."""
        channels = image.shape[1] // slices_per_modality(context_slices)
        params = self.draw(image.shape[0], channels, image.ndim - 2, generator, image.device)
        return self.apply(image, target, params, generator=generator, context_slices=context_slices)


def region_table(table, device: torch.device | str) -> torch.Tensor:
    """A label -> regions lookup table as a float32 tensor on ``device``.

    Args:
        table: ``(R, 256)`` array, ``table[r, code]`` 1 where label ``code`` belongs to region ``r``
            (:attr:`TrainingSampleDataset.region_table <lightning_brats.data.sampling.TrainingSampleDataset.region_table>`,
            built by :func:`~lightning_brats.data.labels.labels_to_regions` itself).
        device: where the labels are.

    Returns:
        ``(256, R)`` float32 tensor (one row per code; the layout :func:`label_regions` indexes).
    """
    return torch.as_tensor(table, dtype=torch.float32).T.contiguous().to(device)


def label_regions(label: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Region targets from a label map, on the label map's device with no host sync.

    Args:
        label: ``(B, 1, *spatial)`` uint8 label codes.
        table: ``(256, R)`` float32 from :func:`region_table`, on ``label``'s device.

    Returns:
        ``(B, R, *spatial)`` contiguous float32 binary targets, equal to
        :func:`~lightning_brats.data.labels.labels_to_regions` of each sample's labels.
    """
    regions = table[label[:, 0].long()]  # (B, *spatial, R): one gather
    return regions.movedim(-1, 1).contiguous()


def elastic_magnitudes(params: Mapping, spatial: tuple[int, ...]) -> torch.Tensor:
    """The largest offset per axis in voxels, ``(B, d)``: the drawn fraction (``elastic_magnitude``, in
    ``[1/8, 1/2]``) of ``sigma_a = elastic_scale * n_a`` (batchgenerators' ``augment_spatial_2``)."""
    fraction, scale = params["elastic_magnitude"], params["elastic_scale"]
    return torch.stack([fraction[:, a] * scale * n for a, n in enumerate(spatial)], -1)


def elastic_range(prob: float, scale) -> tuple[float, float]:
    """``elastic_scale`` as a float pair (config lists accepted).

    Raises:
        ValueError: ``prob`` outside ``[0, 1]``; ``scale`` not two numbers ``0 <= low <= high``.
    """
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"data.augment.elastic_prob={prob}: expected a probability in [0, 1]")
    try:
        low, high = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise ValueError(f"data.augment.elastic_scale={scale!r}: expected [low, high]") from None
    if not 0.0 <= low <= high:
        raise ValueError(f"data.augment.elastic_scale=[{low}, {high}]: expected 0 <= low <= high "
                         "(fractions of the patch size)")
    return low, high


def resample(x: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """``grid_sample`` of ``x (B, C, *spatial)`` on ``grid`` (from :func:`affine_grid`) with zero padding,
    ``align_corners=False``, in ``x``'s dtype (computed in float32 for half inputs); ``mode`` ``"bilinear"``
    (trilinear in 3D) or ``"nearest"``."""
    out = F.grid_sample(x.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)

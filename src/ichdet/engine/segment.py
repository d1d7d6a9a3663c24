"""Segmenting one volume with a `seg_unet` model or a bundle of kind "segmentation".

    Volume (Z, H, W) HU -> prepare_volume (the bundle's prep: windows, head crop, resize; never
    slabs) -> (3, Z, s, s) -> seg_unet, `batch` slices at a time (inference mode, channels-last)
    -> class probabilities (6, Z, s, s) -> restore_mask (resample to the original pixels, argmax)
    -> label mask uint8 (Z, H, W) in the volume's own geometry (0 none, i + 1 = SUBTYPES[i])

The scan's bleed probability is the kind's rule (`ichdet.models.kinds`, "segmentation"): the
maximum over slices of the largest P(any bleed) = 1 - P(background) that holds over a 3 x 3 patch
of prepared pixels (`bleed_slice_scores`), so a bundle's operating point applies to it. Slices that
show no cranial cavity are background and skip the network (`segment_intracranial`), in validation
as here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ichdet.engine.bundle import Bundle
from ichdet.errors import InputError
from ichdet.io.volume import Volume
from ichdet.models.kinds import KINDS, ModelOutputs
from ichdet.models.seg_unet import SEG_BATCH, SEG_CLASSES, SegUNet, bleed_slice_scores, segment_slices
from ichdet.preprocess.masks import check_seg_spec, crop_box, prepare_mask, restore_mask
from ichdet.preprocess.anatomy import cranial_cavity
from ichdet.preprocess.pipeline import PrepSpec, prepare_volume

KIND = "segmentation"


@dataclass
class SegmentationResult:
    """One volume segmented.

    mask: uint8 (Z, H, W) labels in the volume's geometry (0 none, i + 1 = SUBTYPES[i]).
    probabilities: float32 (6, Z, s, s) class probabilities on the prepared grid (`SEG_CLASSES`
        order: background first).
    scan_probability: the scan's bleed score (see the module docstring).
    slice_probabilities: float64 (Z,) each slice's bleed score.
    threshold: the bundle's operating point, None for a bare model.
    seconds: wall time of the whole call.
    """

    mask: np.ndarray
    probabilities: np.ndarray
    scan_probability: float
    slice_probabilities: np.ndarray
    threshold: float | None
    seconds: float

    @property
    def decision(self) -> bool | None:
        """scan_probability >= threshold; None without a threshold."""
        return None if self.threshold is None else bool(self.scan_probability >= self.threshold)


def _model_and_spec(model_or_bundle: Bundle | torch.nn.Module, spec: PrepSpec | None
                    ) -> tuple[torch.nn.Module, PrepSpec, float | None]:
    if isinstance(model_or_bundle, Bundle):
        if model_or_bundle.kind != KIND:
            raise InputError(f"segment_volume needs a bundle of kind {KIND}, got kind {model_or_bundle.kind}",
                             model_or_bundle.path)
        return model_or_bundle.model, spec or model_or_bundle.prep, model_or_bundle.threshold
    if not isinstance(model_or_bundle, SegUNet):
        raise InputError(f"segment_volume needs a seg_unet model or a segmentation bundle, got "
                         f"{type(model_or_bundle).__name__}")
    if spec is None:
        raise InputError("segment_volume with a bare model needs its PrepSpec (spec=...)")
    return model_or_bundle, spec, None


def segment_volume(model_or_bundle: Bundle | torch.nn.Module, volume: Volume, batch: int = SEG_BATCH,
                   spec: PrepSpec | None = None, channels_last: bool = True) -> SegmentationResult:
    """Segment `volume` (see the module docstring). `spec`: the preparation (a bundle's `prep` by
    default; required for a bare model)."""
    t0 = time.perf_counter()
    model, spec, threshold = _model_and_spec(model_or_bundle, spec)
    check_seg_spec(spec)
    if not isinstance(volume, Volume):
        raise InputError(f"segment_volume needs a Volume, got {type(volume).__name__}")
    if volume.info.get("units") == "display":
        raise InputError("segment_volume needs a CT volume in HU, not a display image (PNG/JPEG)")
    if int(batch) < 1:
        raise InputError(f"batch must be >= 1 slice, got {batch}")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    image = prepare_volume(volume, spec)  # (3, Z, s, s)
    result = segment_prepared(lambda im: segment_slices(model, im, int(batch), channels_last), volume, image, spec,
                              threshold)
    result.seconds = time.perf_counter() - t0
    return result


def segment_intracranial(run: Callable[[np.ndarray], torch.Tensor], image: np.ndarray | torch.Tensor,
                         cranial: np.ndarray) -> torch.Tensor:
    """A prepared scan (3, Z, s, s) -> class probabilities (6, Z, s, s): `run` (the network, slice by
    slice) on the slices that show a cranial cavity (`cranial` bool (Z,), `cranial_slices`) only;
    every other slice is background (P = 1). An intracranial bleed cannot lie there, and the network
    never saw such slices (its slices without bleed are drawn from cranial ones, `data.cranial_only`),
    so what it marks below the skull base is noise (226 mL of it on a 32-slice synthetic scan reaching
    the neck); not running it there also saves its time (8 of 32 slices on a synthetic scan, 48 of
    238 on the CQ500 series). A scan with no cranial slice found runs every slice."""
    keep = np.asarray(cranial, bool)
    if keep.shape != (image.shape[1],):
        raise InputError(f"cranial flags must be one per slice ({image.shape[1]}), got shape {keep.shape}")
    if keep.all() or not keep.any():
        return torch.as_tensor(run(image))
    inside = torch.as_tensor(run(image[:, keep]))  # (6, Zc, s, s)
    out = inside.new_zeros((inside.shape[0], len(keep), *inside.shape[2:]))
    out[0] = 1.0
    out[:, torch.from_numpy(keep)] = inside
    return out


def background_outside(probabilities: torch.Tensor, cavity: np.ndarray) -> torch.Tensor:
    """Class probabilities (6, Z, s, s) with every pixel outside `cavity` (bool (Z, s, s), the cranial
    cavity on the same grid) set to background: scalp, temporal muscle and the soft tissue of the
    face and neck look like a subdural rim to a network trained on synthetic heads (on the real
    CQ500 series this took `make demo`'s recipe, trained on the quick demo's cohort, from 79.4 to 26.9 mL
    subdural and from 91.0 to 35.0 mL in all)."""
    inside = torch.from_numpy(np.asarray(cavity, bool))
    if inside.shape != probabilities.shape[1:]:
        raise InputError(f"the cavity mask must be {tuple(probabilities.shape[1:])} like the probabilities, "
                         f"got {tuple(inside.shape)}")
    if bool(inside.all()):
        return probabilities
    out = probabilities.clone()
    out[:, ~inside] = 0.0
    out[0, ~inside] = 1.0
    return out


def segment_prepared(run: Callable[[np.ndarray], torch.Tensor], volume: Volume, image: np.ndarray, spec: PrepSpec,
                     threshold: float | None) -> SegmentationResult:
    """A volume already prepared with `spec` (`image` (3, Z, s, s)) -> SegmentationResult; `run` maps
    the image to class probabilities (6, Z, s, s) (`segment_slices` on a model, or `predict`'s
    runtime). `seconds` covers this call."""
    t0 = time.perf_counter()
    cranial, cavity = cranial_cavity(volume.hu, volume.spacing)
    box = crop_box(volume.hu, volume.spacing, spec)
    probs = segment_intracranial(run, image, cranial)
    probs = background_outside(probs, prepare_mask(cavity.view(np.uint8), spec, box) > 0)
    slices = bleed_slice_scores(probs)
    score = KINDS[KIND].score(ModelOutputs(slices, np.zeros((len(slices), 0), np.float32), None))
    mask = restore_mask(probs, volume.shape, spec, box)
    mask[~cavity] = 0  # the prepared grid's cavity is coarser: no label off the cavity on the original voxels
    return SegmentationResult(mask, probs.numpy(), score.probability, score.slice_probabilities, threshold,
                              time.perf_counter() - t0)


__all__ = ["KIND", "SEG_CLASSES", "SegmentationResult", "background_outside", "segment_intracranial",
           "segment_prepared", "segment_volume"]

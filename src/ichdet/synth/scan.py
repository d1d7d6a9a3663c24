"""One synthetic head CT in memory: phantom + mimics + haemorrhages + scanner -> Volume and labels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ichdet.datasets.manifest import SUBTYPES
from ichdet.errors import InputError
from ichdet.io.volume import Volume, affine_from_geometry
from ichdet.synth.bleeds import SUBTYPE_WEIGHTS, Bleed, paint_bleed, render_bleed, sample_bleed
from ichdet.synth.grid import Pose, SampleGrid, ScanGeometry, upsample_nearest
from ichdet.synth.head import AIR_HU, HeadParams, Tissue, head_half_extent, sample_head
from ichdet.synth.mimics import apply_mimics, head_for, sample_mimics
from ichdet.synth.phantom import Anatomy, render_anatomy
from ichdet.synth.scanner import acquire, noise_sigma_for

COVERAGE_MM = 150.0  # default z coverage (skull base to vertex) when n_slices is None
FOV_MM = (230.0, 250.0)  # reconstruction field of view
N_BLEEDS_P = (0.6, 0.3, 0.1)  # probability of 1, 2, 3 bleeds in a positive scan
MAX_TRIES = 8


@dataclass
class SynthScan:
    """A generated scan: `volume` (HU), `mask` uint8 (Z, H, W) with 0 = none and i + 1 for
    ``SUBTYPES[i]``, `tissue` uint8 (Z, H, W) phantom labels (`Tissue`), and JSON-able `meta`."""

    volume: Volume
    mask: np.ndarray
    tissue: np.ndarray
    meta: dict[str, Any]


def default_n_slices(slice_thickness: float) -> int:
    return max(1, int(round(COVERAGE_MM / slice_thickness)))


def check_difficulty(difficulty: float) -> float:
    d = float(difficulty)
    if not 0.0 <= d <= 1.0:
        raise InputError(f"difficulty must be in [0, 1], got {difficulty}")
    return d


def slice_subtypes(mask: np.ndarray) -> np.ndarray:
    """(Z, H, W) label mask -> bool (Z, 5): which subtypes each slice shows."""
    present = np.zeros((mask.shape[0], len(SUBTYPES)), bool)
    for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        labels = np.unique(mask[z])
        present[z, labels[labels > 0] - 1] = True
    return present


def _pose(rng: np.random.Generator, head: HeadParams, geo: ScanGeometry) -> Pose:
    """Random yaw/tilt/roll and offset; slices cover skull base to vertex (or the mid-brain if short)."""
    yaw, pitch, roll = rng.uniform(-10, 10), rng.uniform(-8, 12), rng.uniform(-4, 4)
    rot = Pose(yaw, pitch, roll, (0.0, 0.0, 0.0)).rotation()
    n = rot.T @ np.array([0.0, 0.0, 1.0])  # scanner z in the head frame
    a, b, c_sup, _ = head.half_axes
    top = float(np.sqrt((a * n[0]) ** 2 + (b * n[1]) ** 2 + (c_sup * n[2]) ** 2))
    dz, nz = geo.slice_thickness_mm, geo.n_slices
    if nz * dz >= 110.0:
        oz = (nz - 1) * dz - top - rng.uniform(-0.3, 0.9) * min(dz, 6.0)
    else:
        oz = 0.5 * (nz - 1) * dz - 8.0 + rng.uniform(-0.5, 0.5) * dz
    return Pose(yaw, pitch, roll, (rng.uniform(-8, 8), rng.uniform(-8, 8), oz))


def _sample_bleeds(rng: np.random.Generator, head: HeadParams, grid: SampleGrid, difficulty: float,
                   subtypes: Sequence[str] | None) -> list[tuple[Bleed, float]]:
    """1-3 (bleed, size fraction) pairs, or one per requested subtype, centred on the scanned range."""
    names = list(subtypes) if subtypes else list(rng.choice(
        SUBTYPES, size=rng.choice([1, 2, 3], p=N_BLEEDS_P), p=[SUBTYPE_WEIGHTS[s] for s in SUBTYPES]))
    mean = 0.8 - 0.6 * difficulty  # mean of the size fraction: large when easy, small when hard
    out = []
    for name in names:
        size01 = float(rng.beta(2.0, 2.0 * (1.0 - mean) / mean))
        for _ in range(MAX_TRIES):
            b = sample_bleed(rng, head, str(name), size01, difficulty)
            k = grid.head_to_index(b.centre)[0]
            if 0.0 <= k <= grid.shape[0] - 1.0 or b.subtype == "intraventricular":
                out.append((b, size01))
                break
    return out


def _paint_bleeds(rng: np.random.Generator, bleeds: list[tuple[Bleed, float]], grid: SampleGrid, head: HeadParams,
                  anat: Anatomy, n_sub: int, difficulty: float) -> tuple[np.ndarray, list[tuple[Bleed, bool]]]:
    """Paint bleeds into `anat.hu`; a bleed too small or off the slices to leave a labelled voxel is
    redrawn larger (without mass effect). Returns the label map and (bleed, had its mass effect)."""
    labels = np.zeros(grid.shape, np.uint8)
    painted = []
    for b, size01 in bleeds:
        original = True
        for _ in range(MAX_TRIES):
            hit = render_bleed(b, grid, head, anat, n_sub)
            if hit is not None and (hit[1] >= 0.5).any():
                box, occ, oedema = hit
                paint_bleed(anat.hu, b, box, occ, oedema, rng)
                labels[box][occ >= 0.5] = SUBTYPES.index(b.subtype) + 1
                painted.append((b, original))
                break
            size01, original = min(1.0, size01 + 0.15), False
            b = sample_bleed(rng, head, b.subtype, size01, difficulty)
    return labels, painted


def synthesize(rng_or_seed: np.random.Generator | int | Sequence[int], *, size: int = 512,
               n_slices: int | None = None, slice_thickness: float = 5.0, difficulty: float = 0.5,
               positive: bool | None = None, subtypes: Sequence[str] | None = None,
               anatomy_seed: int | Sequence[int] | None = None, pixel_spacing: float | None = None,
               patient_id: str = "", study_uid: str = "", series_uid: str = "") -> SynthScan:
    """Generate one head CT. `positive` None: a coin flip; `subtypes` forces those bleeds (positive).

    `anatomy_seed` fixes the head (shared by scans of one patient); everything else comes from
    `rng_or_seed`. HU volume (Z, size, size), slices inferior -> superior, LPS affine.
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    difficulty = check_difficulty(difficulty)
    if subtypes:
        bad = [s for s in subtypes if s not in SUBTYPES]
        if bad:
            raise InputError(f"subtypes must be among {', '.join(SUBTYPES)}, got {bad}")
    head = sample_head(np.random.default_rng(anatomy_seed) if anatomy_seed is not None else rng)
    nz = default_n_slices(slice_thickness) if n_slices is None else int(n_slices)
    px = float(pixel_spacing) if pixel_spacing else rng.uniform(*FOV_MM) / int(size)
    geo = ScanGeometry(nz, int(size), float(slice_thickness), px)
    full = SampleGrid(geo, _pose(rng, head, geo))
    grid = full.cropped(head_half_extent(head))  # render only where the head is
    plan = sample_mimics(rng, head, difficulty)
    head_r = head_for(head, plan, rng)
    positive = bool(subtypes) or (bool(rng.uniform() < 0.5) if positive is None else bool(positive))
    bleeds = _sample_bleeds(rng, head, grid, difficulty, subtypes) if positive else []
    warps = [w for w in (b.warp() for b, _ in bleeds) if w is not None]
    anat = render_anatomy(grid, head_r, warps, pv_scale=plan.vertex_pv)
    n_sub = int(np.clip(round(geo.slice_thickness_mm / 1.5), 1, 4))
    apply_mimics(anat.hu, grid, head_r, anat, plan, rng, n_sub)
    labels, painted = _paint_bleeds(rng, bleeds, grid, head_r, anat, n_sub, difficulty)
    hu = np.full(full.shape, AIR_HU, np.float32)
    hu[grid.region] = anat.hu
    sigma = noise_sigma_for(difficulty, rng)
    image = acquire(hu, geo.factor, grid.pixel_mm, rng, sigma)
    mask = np.zeros(full.shape, np.uint8)
    mask[grid.region] = labels
    mask = upsample_nearest(mask, geo.factor)
    tissue = np.full(full.shape, Tissue.AIR, np.uint8)
    tissue[grid.region] = anat.tissue
    tissue = upsample_nearest(tissue, geo.factor)
    n, dz = geo.size, geo.slice_thickness_mm
    affine = affine_from_geometry(np.array([-(n - 1) / 2 * px, -(n - 1) / 2 * px, -grid.pose.offset_mm[2]]),
                                  np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, dz]), px, px)
    vol = Volume(hu=image, spacing=(dz, px, px), affine=affine, patient_id=patient_id, study_uid=study_uid,
                 series_uid=series_uid, info={"format": "synthetic"})
    voxel_ml = dz * px * px / 1000.0
    per_slice = slice_subtypes(mask)
    meta = {"label": int(mask.any()), "difficulty": difficulty, "noise_sigma_hu": round(sigma, 2),
            "subtypes": {s: int(per_slice[:, i].any()) for i, s in enumerate(SUBTYPES)},
            "bleeds": [{"subtype": b.subtype, "centre_head_mm": [round(float(v), 1) for v in b.centre],
                        "size_mm": round(b.size_mm, 2), "hu": round(b.hu, 1),
                        "mass_effect_mm": round(w.shift_mm, 1) if original and (w := b.warp()) else 0.0}
                       for b, original in painted],
            "subtype_volume_ml": {s: round(float((mask == i + 1).sum() * voxel_ml), 3) for i, s in enumerate(SUBTYPES)},
            "slice_labels": per_slice.astype(int).tolist(), "mimics": plan.names(),
            "pose_deg": {"yaw": round(grid.pose.yaw_deg, 2), "pitch": round(grid.pose.pitch_deg, 2),
                         "roll": round(grid.pose.roll_deg, 2)}}
    return SynthScan(volume=vol, mask=mask, tissue=tissue, meta=meta)


def generate_scan(rng_or_seed: np.random.Generator | int | Sequence[int], *, size: int = 512,
                  n_slices: int | None = None, slice_thickness: float = 5.0, difficulty: float = 0.5,
                  positive: bool | None = None, subtypes: Sequence[str] | None = None,
                  anatomy_seed: int | Sequence[int] | None = None, pixel_spacing: float | None = None,
                  patient_id: str = "", study_uid: str = "", series_uid: str = "",
                  ) -> tuple[Volume, np.ndarray, dict[str, Any]]:
    """One synthetic head CT in memory: ``(volume, mask, meta)``.

    volume: HU (Z, size, size) float32, slices inferior -> superior, LPS affine; mask: uint8
    (Z, size, size), 0 none, i + 1 = ``SUBTYPES[i]``; meta: JSON-able labels (``label``,
    ``subtypes``, ``slice_labels`` (Z, 5)), bleeds, mimics, noise. See `synthesize`.
    """
    s = synthesize(rng_or_seed, size=size, n_slices=n_slices, slice_thickness=slice_thickness,
                   difficulty=difficulty, positive=positive, subtypes=subtypes, anatomy_seed=anatomy_seed,
                   pixel_spacing=pixel_spacing, patient_id=patient_id, study_uid=study_uid, series_uid=series_uid)
    return s.volume, s.mask, s.meta

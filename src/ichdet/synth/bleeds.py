"""Intracranial haemorrhages: where each subtype sits, its shape, size and density.

Each bleed is a `Bleed` (head-frame mm) sampled by `sample_bleed`; `render_bleed` evaluates it on
the render grid with `n_sub` planes per slab, giving a fractional occupancy (partial volume) whose
>= 0.5 part is the labelled voxel mask; `paint_bleed` blends its density into the HU.

- epidural: biconvex lens against the inner table, compact (it does not cross sutures);
- subdural: crescent along the convexity hugging the inner table, one side of the falx;
- intraparenchymal: irregular blob in the basal ganglia, thalamus or a lobe, oedema rim;
- intraventricular: blood layering in the dependent (posterior, larger row) lateral ventricle;
- subarachnoid: hyperdense filling of sulci, fissures and basal cisterns in a region.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ichdet.datasets.manifest import SUBTYPES
from ichdet.errors import InputError
from ichdet.synth.grid import Box, SampleGrid
from ichdet.synth.head import PARENCHYMA, HeadParams, Tissue, cavity_sdf, surface_point
from ichdet.synth.phantom import Anatomy, Warp

ACUTE_BLOOD_HU = (50.0, 90.0)  # acute haemorrhage
SUBDURAL_HU = (50.0, 80.0)
OEDEMA_HU = (16.0, 24.0)  # perihaematomal oedema
MASS_EFFECT_ML = 12.0  # bleeds larger than this push the brain (and falx) away
MAX_SHIFT_MM = 12.0
SUBTYPE_WEIGHTS = {"epidural": 0.12, "intraparenchymal": 0.24, "intraventricular": 0.18,
                   "subarachnoid": 0.22, "subdural": 0.24}
# (smallest, largest) characteristic size (mm): EDH/SDH thickness, IPH radius, IVH layer, SAH radius
SIZE_MM = {"epidural": (2.5, 26.0), "intraparenchymal": (2.0, 26.0), "intraventricular": (2.0, 14.0),
           "subarachnoid": (6.0, 45.0), "subdural": (1.8, 17.0)}
EXTENT_MM = {"epidural": (10.0, 45.0), "subdural": (22.0, 85.0)}  # radius along the inner table


@dataclass
class Bleed:
    """One haemorrhage (head-frame mm). `size_mm`/`extent_mm` per subtype, see `SIZE_MM`."""

    subtype: str
    centre: np.ndarray
    size_mm: float
    extent_mm: float
    hu: float
    side: int  # +1 patient left, -1 right; 0 both (IVH)
    waves: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # irregularity (rad per unit, phase)
    axes_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    cast: bool = False  # IVH filling the whole ventricle

    def __post_init__(self) -> None:
        if self.subtype not in SUBTYPES:
            raise InputError(f"subtype must be one of {', '.join(SUBTYPES)}, got {self.subtype!r}")

    def volume_ml(self) -> float:
        """Rough volume (mL) from the shape parameters, used for mass effect."""
        t, r = self.size_mm, self.extent_mm
        if self.subtype == "epidural":
            return np.pi * t * r * r / 3.0 / 1000.0
        if self.subtype == "subdural":
            return 0.6 * np.pi * t * r * r / 2.0 / 1000.0
        if self.subtype == "intraparenchymal":
            return 4.0 / 3.0 * np.pi * t**3 * float(np.prod(self.axes_scale)) / 1000.0
        return 0.0

    def warp(self) -> Warp | None:
        """Mass effect of a large space-occupying bleed, or None."""
        v = self.volume_ml()
        if v < MASS_EFFECT_ML:
            return None
        shift = min(MAX_SHIFT_MM, 1.5 + 0.12 * (v - MASS_EFFECT_ML))
        radius = (3.0 * v * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        u = self.centre / max(np.linalg.norm(self.centre), 1e-6)
        centre = self.centre - u * 0.5 * self.size_mm if self.subtype in ("epidural", "subdural") else self.centre
        return Warp(centre=centre, radius_mm=radius, shift_mm=shift)


def blood_hu(subtype: str, difficulty: float, rng: np.random.Generator) -> float:
    """Density (HU): bright at low difficulty, faint (near grey matter) at high difficulty."""
    lo, hi = SUBDURAL_HU if subtype == "subdural" else ACUTE_BLOOD_HU
    mean = hi - 8.0 - (hi - lo - 12.0) * difficulty
    return float(np.clip(rng.normal(mean, 4.0), lo + 2.0, hi))


def _direction(rng: np.random.Generator, side: int, y_range: tuple[float, float], z_range: tuple[float, float]) -> np.ndarray:
    u = np.array([side * 1.0, rng.uniform(*y_range), rng.uniform(*z_range)])
    return u / np.linalg.norm(u)


def sample_bleed(rng: np.random.Generator, head: HeadParams, subtype: str, size01: float,
                 difficulty: float) -> Bleed:
    """One bleed of `subtype`; `size01` in [0, 1] interpolates its size geometrically."""
    if subtype not in SUBTYPES:
        raise InputError(f"subtype must be one of {', '.join(SUBTYPES)}, got {subtype!r}")
    lo, hi = SIZE_MM[subtype]
    size = lo * (hi / lo) ** size01
    side = int(rng.choice([-1, 1]))
    hu = blood_hu(subtype, difficulty, rng)
    a, b = head.half_axes[:2]
    if subtype in ("epidural", "subdural"):
        elo, ehi = EXTENT_MM[subtype]
        extent = elo * (ehi / elo) ** size01
        if subtype == "epidural":
            extent = float(np.clip(extent, 1.4 * size, 2.6 * size + 6.0))
            u = _direction(rng, side, (-0.7, 0.7), (-0.15, 0.8))
        else:
            u = _direction(rng, side, (-0.9, 0.7), (-0.05, 0.9))
        return Bleed(subtype, surface_point(head, u), size, extent, hu, side)
    if subtype == "intraparenchymal":
        where = rng.choice(["putamen", "thalamus", "lobar"], p=[0.35, 0.2, 0.45])
        if where == "putamen":
            centre = np.array([side * 22.0, -3.0, 0.0]) + rng.normal(0, 3.0, 3)
        elif where == "thalamus":
            centre = np.array([side * 11.0, 12.0, 2.0]) + rng.normal(0, 2.0, 3)
        else:
            sp = surface_point(head, _direction(rng, side, (-1.2, 1.2), (-0.1, 1.2)))
            depth = rng.uniform(12.0, 22.0) + 0.6 * size
            centre = sp * max(0.2, 1.0 - depth / np.linalg.norm(sp))
        waves = np.hstack([rng.normal(0, 2.5, (3, 3)), rng.uniform(0, 2 * np.pi, (3, 1))])
        return Bleed(subtype, centre, size, 0.35 * size, hu, side, waves=waves,
                     axes_scale=tuple(rng.uniform(0.7, 1.3, 3)))
    if subtype == "intraventricular":
        side = int(rng.choice([-1, 0, 1], p=[0.35, 0.3, 0.35]))
        return Bleed(subtype, np.array([side * 14.0, 30.0, 6.0]), size, 0.0, hu, side,
                     cast=bool(size01 > 0.9 and rng.uniform() < 0.6))
    region = rng.choice(["sylvian", "convexity", "basal", "interhemispheric"], p=[0.3, 0.3, 0.25, 0.15])
    if region == "sylvian":
        centre = np.array([side * 0.62 * a, -8.0, -6.0])
    elif region == "convexity":
        centre = surface_point(head, _direction(rng, side, (-1.0, 1.0), (0.2, 1.5))) * 0.92
    elif region == "basal":
        centre = np.array([0.0, 4.0, -16.0])
    else:
        centre = np.array([0.0, rng.uniform(-0.5, 0.5) * b, rng.uniform(10.0, 40.0)])
    waves = np.hstack([rng.normal(0, 2.0, (3, 3)), rng.uniform(0, 2 * np.pi, (3, 1))])
    return Bleed(subtype, centre, size, size, hu, side, waves=waves)


def _wobble(waves: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, r: np.ndarray, amp: float) -> np.ndarray:
    """1 + amp * (random smooth function of direction), for irregular outlines."""
    out = np.ones_like(dx)
    if len(waves) == 0 or amp == 0:
        return out
    inv = 1.0 / np.maximum(r, np.float32(1e-3))
    for kx, ky, kz, ph in waves.astype(np.float32):
        out += np.float32(amp / len(waves)) * np.cos((kx * dx + ky * dy + kz * dz) * inv + ph)
    return out


def render_bleed(bleed: Bleed, grid: SampleGrid, head: HeadParams, anat: Anatomy,
                 n_sub: int = 3) -> tuple[Box, np.ndarray, np.ndarray | None] | None:
    """(box, occupancy float32 in [0, 1], oedema occupancy or None) on the render grid, or None off-grid.

    Occupancy is the fraction of the slab (`n_sub` planes per slice) inside the bleed.
    """
    s = bleed.subtype
    reach = {"epidural": bleed.extent_mm + bleed.size_mm, "subdural": bleed.extent_mm + bleed.size_mm,
             "intraparenchymal": 1.6 * bleed.size_mm * max(bleed.axes_scale) + 2.0,
             "intraventricular": 75.0, "subarachnoid": 1.3 * bleed.size_mm + 2.0}[s]
    box = grid.box(bleed.centre, reach)
    if box is None:
        return None
    x, y, z = grid.coords(box, n_sub)
    tissue = np.repeat(anat.tissue[box], n_sub, axis=0)
    # stay off the inner table's partial-volume rim (in-plane pixel, and the slab where it cuts obliquely)
    h = np.abs(grid.plane_height_mm(n_sub)[box[0].start * n_sub:box[0].stop * n_sub]).astype(np.float32)
    r = np.sqrt(x * x + y * y + z * z) + np.float32(1.0)
    slab = np.float32(grid.geometry.slice_thickness_mm) * np.minimum(h[:, None, None] / r, 1.0)
    edge = np.float32(-0.5) * (np.float32(grid.pixel_mm) + slab)
    oedema = None
    if s in ("epidural", "subdural"):
        d = cavity_sdf(head, x, y, z)
        c = np.asarray(bleed.centre, np.float32)
        rc = float(np.linalg.norm(c))
        cosang = (x * c[0] + y * c[1] + z * c[2]) / (np.sqrt(x * x + y * y + z * z) * np.float32(rc) + np.float32(1e-3))
        arc = np.float32(rc) * np.arccos(np.clip(cosang, -1.0, 1.0)) / np.float32(bleed.extent_mm)
        if s == "epidural":
            thick = bleed.size_mm * np.sqrt(np.clip(1.0 - arc * arc, 0.0, 1.0))
            inside = (d < edge) & (-d < thick)
        else:
            thick = bleed.size_mm * np.clip(1.0 - arc**4, 0.0, 1.0) ** 0.7
            inside = (d < edge) & (-d < thick) & (bleed.side * x > 1.0)
    elif s == "intraparenchymal":
        dx, dy, dz = (q - np.float32(v) for q, v in zip((x, y, z), bleed.centre))
        ax = np.float32(bleed.size_mm) * np.asarray(bleed.axes_scale, np.float32)
        r = np.sqrt(dx * dx + dy * dy + dz * dz)
        q = np.sqrt((dx / ax[0]) ** 2 + (dy / ax[1]) ** 2 + (dz / ax[2]) ** 2)
        q /= _wobble(bleed.waves, dx, dy, dz, r, 0.3 if bleed.size_mm > 4 else 0.1)
        inside = (q <= 1.0) & (cavity_sdf(head, x, y, z) < -1.5) & (tissue != Tissue.FALX)
        if bleed.extent_mm > 2.0:
            rim = (q <= 1.0 + bleed.extent_mm / bleed.size_mm) & ~inside & np.isin(tissue, PARENCHYMA)
            oedema = rim.reshape(-1, n_sub, *rim.shape[1:]).mean(axis=1, dtype=np.float32)
    elif s == "intraventricular":
        vent = tissue == Tissue.VENTRICLE
        if bleed.side:
            vent &= bleed.side * x > 0
        if bleed.cast:
            inside = vent | (tissue == Tissue.VENTRICLE_MID)
        else:
            rows = np.broadcast_to(np.arange(box[1].start, box[1].stop)[None, :, None], vent.shape)
            inside = np.zeros_like(vent)
            for sd in ((-1, 1) if bleed.side == 0 else (bleed.side,)):
                part = vent & (sd * x > 0) & (y > 5.0)
                if part.any():
                    level = rows[part].max() - bleed.size_mm / grid.pixel_mm
                    inside |= part & (rows >= level)
    else:
        dx, dy, dz = (q - np.float32(v) for q, v in zip((x, y, z), bleed.centre))
        r = np.sqrt(dx * dx + dy * dy + dz * dz)
        region = r < np.float32(bleed.size_mm) * _wobble(bleed.waves, dx, dy, dz, r, 0.35)
        inside = region & np.isin(tissue, (Tissue.CSF, Tissue.CISTERN)) & (cavity_sdf(head, x, y, z) < edge - 1.0)
    occ = inside.reshape(-1, n_sub, *inside.shape[1:]).mean(axis=1, dtype=np.float32)
    return box, occ, oedema


def paint_bleed(hu: np.ndarray, bleed: Bleed, box: Box, occ: np.ndarray, oedema: np.ndarray | None,
                rng: np.random.Generator) -> None:
    """Blend the bleed (and its oedema rim) into render-grid HU in place."""
    view = hu[box]
    if oedema is not None:
        view += (np.float32(rng.uniform(*OEDEMA_HU)) - view) * oedema * np.float32(0.85)
    view += (np.float32(bleed.hu) - view) * occ

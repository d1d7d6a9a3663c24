"""One phantom head: anatomy parameters, tissue densities and the analytic cranial-cavity shape.

Head frame (mm): x to patient left, y posterior, z superior, origin at the centre of the cranial
cavity (about the level of the foramina of Monro). The cavity is an egg-shaped ellipsoid above
z = 0 and a narrower, posteriorly shifted one below (posterior fossa), cut by the floors of the
anterior and middle cranial fossae and by the petrous ridges, with the brainstem passing down
through the foramen magnum.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Tissue labels of the rendered phantom (uint8)."""

    AIR = 0
    SCALP = 1
    FAT = 2
    BONE = 3
    SOFT = 4  # soft tissue below the skull base
    CSF = 5  # subarachnoid space, sulci, interhemispheric fissure
    CISTERN = 6  # basal cisterns and Sylvian fissures
    VENTRICLE = 7  # lateral ventricles
    VENTRICLE_MID = 8  # third and fourth ventricles
    GM = 9
    WM = 10
    DEEP_GM = 11  # caudate, lentiform nucleus, thalamus
    CEREBELLUM = 12
    BRAINSTEM = 13
    FALX = 14
    CALCIFICATION = 15


CSF_TISSUES = (Tissue.CSF, Tissue.CISTERN, Tissue.VENTRICLE, Tissue.VENTRICLE_MID)
PARENCHYMA = (Tissue.GM, Tissue.WM, Tissue.DEEP_GM, Tissue.CEREBELLUM, Tissue.BRAINSTEM)
AIR_HU = -1000.0
FALX_MM = 1.0  # true thickness of the falx (mm); thinner than a pixel it is partial-volumed
PF_SHIFT = 0.25  # posterior shift of the inferior cavity, fraction of the AP half-axis
STEM_RADIUS_MM = 12.0
FLOOR_TOP_MM = -12.0  # above this height nothing of the skull base reaches the cavity


@dataclass(frozen=True)
class TissueHU:
    """Mean density (HU) of each tissue for one scan."""

    wm: float = 26.0
    gm: float = 39.0
    deep_gm: float = 36.0
    csf: float = 7.0
    falx: float = 75.0
    scalp: float = 42.0
    fat: float = -95.0
    soft: float = 45.0
    bone_table: float = 1600.0  # cortical inner/outer tables
    bone_diploe: float = 750.0  # trabecular middle layer
    falx_mm: float = FALX_MM

    def lut(self, pixel_mm: float) -> np.ndarray:
        """float32 HU indexed by `Tissue`; the falx is partial-volumed over one `pixel_mm` band."""
        lut = np.zeros(len(Tissue), np.float32)
        vals = {Tissue.AIR: AIR_HU, Tissue.SCALP: self.scalp, Tissue.FAT: self.fat,
                Tissue.BONE: self.bone_table, Tissue.SOFT: self.soft, Tissue.CSF: self.csf,
                Tissue.CISTERN: self.csf, Tissue.VENTRICLE: self.csf, Tissue.VENTRICLE_MID: self.csf,
                Tissue.GM: self.gm, Tissue.WM: self.wm, Tissue.DEEP_GM: self.deep_gm,
                Tissue.CEREBELLUM: 0.5 * (self.gm + self.wm) + 3.0, Tissue.BRAINSTEM: self.wm + 3.0,
                Tissue.FALX: self.csf + (self.falx - self.csf) * min(1.0, self.falx_mm / pixel_mm),
                Tissue.CALCIFICATION: 250.0}
        for t, v in vals.items():
            lut[t] = v
        return lut


@dataclass(frozen=True)
class HeadParams:
    """Anatomy of one head (mm unless stated)."""

    half_axes: tuple[float, float, float, float] = (66.0, 84.0, 64.0, 60.0)  # A lateral, B AP, C up, C down
    egg: float = 0.06  # the vault is wider posteriorly: A * (1 + egg * y / B)
    skull_mm: float = 6.5
    skull_waves: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # rows kx, ky, kz (rad/mm), phase
    scalp_mm: float = 5.5
    subarachnoid_mm: float = 1.2  # CSF between inner table and cortex (grows with atrophy)
    cortex_mm: float = 3.0
    sulcus_depth_mm: float = 14.0
    sulcus_width: float = 0.2  # half-width of sulci in units of the gyral field
    gyri_waves: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    ventricle_scale: float = 1.0
    fissure_mm: float = 1.5  # half-width of the interhemispheric fissure
    hu: TissueHU = field(default_factory=TissueHU)


def _waves(rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float]) -> np.ndarray:
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = 2 * np.pi / rng.uniform(*wavelength_mm, size=(n, 1))
    return np.hstack([d * k, rng.uniform(0, 2 * np.pi, size=(n, 1))])


def sample_head(rng: np.random.Generator) -> HeadParams:
    """Draw one plausible adult head: size, shape, skull, atrophy and tissue densities."""
    s = rng.uniform(0.92, 1.08)  # overall size
    atrophy = rng.uniform(0.0, 1.0)
    gm = rng.uniform(36.0, 42.0)
    hu = TissueHU(wm=rng.uniform(23.0, 28.0), gm=gm, deep_gm=gm - rng.uniform(2.0, 5.0),
                  csf=rng.uniform(3.0, 10.0), falx=rng.uniform(60.0, 90.0), scalp=rng.uniform(35.0, 50.0),
                  fat=rng.uniform(-110.0, -80.0), soft=rng.uniform(38.0, 55.0),
                  bone_table=rng.uniform(1300.0, 1800.0), bone_diploe=rng.uniform(550.0, 900.0))
    return HeadParams(
        half_axes=(s * rng.uniform(62, 70), s * rng.uniform(80, 90), s * rng.uniform(60, 67), s * rng.uniform(56, 63)),
        egg=rng.uniform(0.02, 0.1), skull_mm=rng.uniform(4.5, 7.0), skull_waves=_waves(rng, 3, (60.0, 140.0)),
        scalp_mm=rng.uniform(4.0, 7.0), subarachnoid_mm=0.8 + 1.8 * atrophy, cortex_mm=rng.uniform(2.6, 3.4),
        sulcus_depth_mm=rng.uniform(12.0, 18.0), sulcus_width=0.12 + 0.12 * atrophy,
        gyri_waves=_waves(rng, 9, (16.0, 30.0)), ventricle_scale=rng.uniform(0.8, 1.1) + 0.5 * atrophy,
        fissure_mm=1.0 + 1.5 * atrophy, hu=hu)


def head_half_extent(head: HeadParams) -> tuple[float, float, float]:
    """Half-size (mm) of a head-frame box holding the head, scalp included, down to the neck."""
    a, b, c_sup, c_inf = head.half_axes
    out = 1.35 * head.skull_mm + head.scalp_mm + 2.0
    return (a * (1 + head.egg) + out, b + out, max(c_sup, 1.8 * c_inf) + out)


def _smoothstep(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _ellipse_sdf(px: np.ndarray, py: np.ndarray, pz: np.ndarray, ax: np.ndarray, b: float,
                 c: np.ndarray | float) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid (radial scaling)."""
    rho = np.sqrt((px / ax) ** 2 + (py / b) ** 2 + (pz / c) ** 2)
    r = np.sqrt(px * px + py * py + pz * pz)
    return (rho - 1.0) * r / np.maximum(rho, 1e-3)


def skull_base_floor(head: HeadParams, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height (mm) of the cranial fossa floor at (x, y): the anterior fossa at ~ -0.3 C, rounded
    basins for the temporal lobes (middle fossae) down to ~ -0.7 C, none in the posterior fossa."""
    a, b, _, c_inf = head.half_axes
    yn, xn = y / b, np.abs(x) / a
    basin = np.exp(-((xn - 0.62) / 0.26) ** 2 - ((yn + 0.02) / 0.24) ** 2)
    orbit_roofs = np.exp(-((xn - 0.35) / 0.2) ** 2)  # domed over the orbits, cribriform plate lower
    frontal = _smoothstep(-yn, 0.55, 1.0)  # the floor curves up into the frontal bone
    floor = (-0.36 + 0.12 * orbit_roofs + 0.3 * frontal) * c_inf - 0.36 * c_inf * basin
    return floor + (-3.0 * c_inf - floor) * _smoothstep(yn, 0.1, 0.3)


def _petrous_sdf(head: HeadParams, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Distance (mm) outside the two petrous ridges: oblique bars from the clivus to the mastoids."""
    a, b, _, c_inf = head.half_axes
    p0 = np.array([0.25 * a, 0.1 * b])
    p1 = np.array([0.9 * a, 0.38 * b])
    d = p1 - p0
    ax = np.abs(x)
    t = np.clip(((ax - p0[0]) * d[0] + (y - p0[1]) * d[1]) / (d @ d), 0, 1)
    dist = np.hypot(ax - p0[0] - t * d[0], y - p0[1] - t * d[1]) - 0.09 * a
    top = -0.45 * c_inf - 4.0 * t  # the ridge crest sinks laterally
    return np.maximum(dist, z - top)


def cavity_sdf(head: HeadParams, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm) from head-frame points to the inner skull table; < 0 inside.

    Arrays of any (equal) shape, float32 in, float32 out.
    """
    a, b, c_sup, c_inf = head.half_axes
    low = np.clip(-z / c_inf, 0.0, 1.0)
    yy = y - PF_SHIFT * b * low
    ax = a * (1.0 + head.egg * yy / b)
    d = _ellipse_sdf(x, yy, z, ax, b, np.where(z > 0, c_sup, c_inf).astype(np.float32))
    sel = z < FLOOR_TOP_MM
    if np.any(sel):
        xs, ys, zs, ds = x[sel], y[sel], z[sel], d[sel]
        ds = np.maximum(ds, skull_base_floor(head, xs, ys) - zs)
        ridge = (zs < -0.45 * c_inf + 1.0) & (ds < 30.0)
        ds[ridge] = np.maximum(ds[ridge], -_petrous_sdf(head, xs[ridge], ys[ridge], zs[ridge]))
        stem = np.maximum(np.hypot(xs, ys - 0.12 * b) - STEM_RADIUS_MM, zs - FLOOR_TOP_MM)
        d[sel] = np.minimum(ds, stem)
    return d.astype(np.float32, copy=False)


def envelope_sdf(head: HeadParams, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance (mm) to the vault's inner-table shape continued down below z = 0 as an
    elliptic cylinder that narrows towards the neck: the skull and scalp are offsets of it."""
    a, b, c_sup, c_inf = head.half_axes
    narrow = 1.0 - 0.2 * _smoothstep(-z, 0.5 * c_inf, 1.2 * c_inf)
    ax = a * narrow * (1.0 + head.egg * y / b)
    return _ellipse_sdf(x, y, np.maximum(z, 0.0), ax, b * (0.5 + 0.5 * narrow), c_sup).astype(np.float32, copy=False)


def surface_point(head: HeadParams, direction: np.ndarray) -> np.ndarray:
    """The inner-table point (head mm) along a direction from the cavity centre (bisection)."""
    u = np.asarray(direction, float) / np.linalg.norm(direction)
    lo, hi = 0.0, 2.0 * max(head.half_axes)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        p = (u * mid).astype(np.float32)
        if cavity_sdf(head, p[0:1], p[1:2], p[2:3])[0] < 0:
            lo = mid
        else:
            hi = mid
    return u * lo

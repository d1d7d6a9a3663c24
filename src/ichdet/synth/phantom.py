"""Render a head phantom in HU on a `SampleGrid`: scalp, skull with diploe, skull base, brain.

Everything is evaluated from analytic fields in the head frame (mm): signed distances for the
skull and scalp (partial-volumed over the pixel and, for surfaces cut obliquely, over the slab),
a random gyral field for the cortical ribbon and sulci, ellipsoids for the deep nuclei, ventricles
and cisterns, and a thin sheet for the falx. Mass effect displaces intracranial anatomy (never the
skull) away from large haemorrhages.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ichdet.synth.grid import SampleGrid
from ichdet.synth.head import (AIR_HU, FLOOR_TOP_MM, HeadParams, Tissue, _smoothstep, cavity_sdf,
                               envelope_sdf)

SKULL_BASE_EXTRA_MM = 14.0  # the skull base is this much thicker than the vault at its lowest
TEMPORAL_THINNING = 0.45  # fraction of the skull thickness lost at the temporal squama
DIPLOE_EDGE = 0.12  # tables take the outer (0.5 - DIPLOE_EDGE) of the bone thickness on each side
TENTORIUM_Z_MM, TENTORIUM_SLOPE = -8.0, 0.35  # tentorium height at y = 0.1 B and its fall posteriorly


@dataclass(frozen=True)
class Warp:
    """Mass effect: anatomy within ~3 `reach` pushed up to `shift_mm` away from `centre` (head mm)."""

    centre: np.ndarray
    radius_mm: float
    shift_mm: float

    @property
    def reach_mm(self) -> float:
        """Distance (mm) beyond which nothing moves."""
        return max(60.0, 3.5 * self.radius_mm)


@dataclass
class Anatomy:
    """The rendered phantom on the grid ``(Z, h, w)``: clean HU, tissue labels, and the signed
    distance (mm, < 0 inside) to the inner skull table."""

    hu: np.ndarray
    tissue: np.ndarray
    cavity_mm: np.ndarray


def _soft(d: np.ndarray, width: np.ndarray | float) -> np.ndarray:
    """Occupancy of the side d < 0 of a surface, linear over `width` mm (partial volume)."""
    out = 0.5 - d / width
    return np.clip(out, 0.0, 1.0, out=out)


def tentorium_z(head: HeadParams, y: np.ndarray) -> np.ndarray:
    """Height (mm) of the tentorium: the cerebellum lies below it, posteriorly."""
    return TENTORIUM_Z_MM - TENTORIUM_SLOPE * (y - 0.1 * head.half_axes[1])


def apply_warps(grid: SampleGrid, pts: tuple[np.ndarray, ...], warps: list[Warp]) -> tuple[tuple[np.ndarray, ...], np.ndarray | None]:
    """Displaced coordinates ``p - u(p)`` (anatomy pushed away from each warp centre) and |u| (mm).

    |u| = shift * min(1, r / radius) * (1 - (r / reach)^2)^2: smooth, zero beyond `reach_mm`.
    """
    if not warps:
        return pts, None
    xb, yb, zb = (p.copy() for p in pts)
    push = np.zeros_like(pts[0])
    for w in warps:
        box = grid.box(w.centre, w.reach_mm)
        if box is None:
            continue
        d = [p[box] - np.float32(c) for p, c in zip(pts, w.centre)]
        r = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + np.float32(1e-3)
        fall = np.clip(1.0 - (r / np.float32(w.reach_mm)) ** 2, 0.0, 1.0)
        mag = np.float32(w.shift_mm) * np.minimum(1.0, r / np.float32(w.radius_mm)) * fall * fall
        for q, dq in zip((xb, yb, zb), d):
            q[box] -= dq * (mag / r)
        push[box] += mag
    return (xb, yb, zb), push


def _structures(head: HeadParams) -> list[tuple[tuple[float, float, float], tuple[float, float, float], float, Tissue]]:
    """(centre, half-axes, yaw deg, label) of deep nuclei, cisterns and ventricles, in paint order."""
    a, b = head.half_axes[:2]
    k = 0.5 * (a / 66.0 + b / 84.0)
    v = head.ventricle_scale
    out = [((0, -10, -16), (9, 7, 4), 0, Tissue.CISTERN), ((0, 8, -16), (15, 15, 6), 0, Tissue.CISTERN),
           ((0, 26, -10), (6, 5, 6), 0, Tissue.CISTERN), ((0, -4, -34), (9, 3, 10), 0, Tissue.CISTERN),
           ((0, 8, -16), (11, 11, 7), 0, Tissue.BRAINSTEM)]
    for s in (-1, 1):
        out += [((s * (9 + 2 * v), -15, 6), (5, 8, 8), 0, Tissue.DEEP_GM),
                ((s * 23, -3, 0), (5, 13, 9), -s * 12, Tissue.DEEP_GM),
                ((s * 10, 12, 2), (8, 11, 8), 0, Tissue.DEEP_GM)]
    for s in (-1, 1):
        out += [((s * (2 + 3.5 * v), 2, 16), (3.5 * v, 22, 5.5 * v), -s * 6, Tissue.VENTRICLE),
                ((s * (3 + 3 * v), -22, 9), (4.5 * v, 10, 7 * v), s * 15, Tissue.VENTRICLE),
                ((s * (9 + 4 * v), 24, 8), (6 * v, 9, 7 * v), 0, Tissue.VENTRICLE),
                ((s * (13 + 3 * v), 38, 5), (3.5 * v, 10, 3.5 * v), -s * 20, Tissue.VENTRICLE),
                ((s * 27, -4, -17), (2.5 * v, 13, 2.5 * v), 0, Tissue.VENTRICLE)]
    out += [((0, 4, -2), (1.5 + v, 12, 8), 0, Tissue.VENTRICLE_MID),
            ((0, 0.12 * b / k + 16, -36), (6, 3.5, 7), 0, Tissue.VENTRICLE_MID)]
    return [(tuple(k * np.asarray(c, float)), tuple(k * np.asarray(ax, float)), yaw, lab) for c, ax, yaw, lab in out]


def _face(head: HeadParams) -> list[tuple[tuple[float, float, float], tuple[float, float, float], float, Tissue]]:
    """(centre, half-axes, HU, label) of the orbits, globes and air spaces below the skull base."""
    a, b, _, c = head.half_axes
    out = []
    for s in (-1, 1):
        out += [((s * 0.42 * a, -0.8 * b, -0.42 * c), (15, 20, 14), head.hu.fat, Tissue.FAT),
                ((s * 0.42 * a, -0.93 * b, -0.42 * c), (11, 11, 11), 10.0, Tissue.SOFT),
                ((s * 0.35 * a, -0.72 * b, -1.05 * c), (14, 17, 16), AIR_HU, Tissue.AIR),
                ((s * 0.8 * a, 0.33 * b, -0.62 * c), (8, 9, 8), AIR_HU, Tissue.AIR)]
    out += [((0, -0.78 * b, -0.6 * c), (9, 22, 28), AIR_HU, Tissue.AIR),
            ((0, -0.3 * b, -0.6 * c), (12, 10, 9), AIR_HU, Tissue.AIR),
            ((0, -0.25 * b, -1.1 * c), (12, 10, 12), AIR_HU, Tissue.AIR)]
    return out


def ellipsoid_mask(grid: SampleGrid, pts: tuple[np.ndarray, ...], centre, axes, yaw_deg: float = 0.0,
                   margin_mm: float = 0.0) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """(box, bool mask within the box) of an ellipsoid (head mm, yaw about z) on full-grid coords `pts`."""
    box = grid.box(np.asarray(centre, float), max(axes) + margin_mm)
    if box is None:
        return None
    dx, dy, dz = (p[box] - np.float32(c) for p, c in zip(pts, centre))
    if yaw_deg:
        cs, sn = np.float32(np.cos(np.radians(yaw_deg))), np.float32(np.sin(np.radians(yaw_deg)))
        dx, dy = cs * dx + sn * dy, -sn * dx + cs * dy
    q = (dx / np.float32(axes[0])) ** 2 + (dy / np.float32(axes[1])) ** 2 + (dz / np.float32(axes[2])) ** 2
    return box, q <= 1.0


def gyral_field(head: HeadParams, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(|g|, h) of random fields of the direction from the cavity centre, bent slightly with depth
    (so sulci, the level set g = 0, run roughly perpendicular to the surface). |g| has ~unit RMS;
    h in [0, 1] varies slowly and sets how deep each sulcus reaches. Same shape as x."""
    r0 = float(np.mean(head.half_axes))
    r = np.sqrt(x * x + y * y + z * z) + np.float32(1e-3)
    scale = np.float32(r0) / r
    bend = (np.float32(r0) - r) * np.float32(0.35)
    tilt = head.gyri_waves[0, :3] / np.linalg.norm(head.gyri_waves[0, :3])
    u, v, w = (c * scale + bend * np.float32(t) for c, t in zip((x, y, z), tilt))
    n_main = len(head.gyri_waves) - 2
    g = np.zeros_like(x)
    h = np.zeros_like(x)
    for i, (kx, ky, kz, phase) in enumerate(head.gyri_waves.astype(np.float32)):
        if i < n_main:
            g += np.cos(kx * u + ky * v + kz * w + phase)
        else:  # the last two waves, at a third of the frequency, modulate the depth
            h += np.cos((kx * u + ky * v + kz * w) * np.float32(0.33) + phase)
    g = np.abs(g * np.float32(np.sqrt(2.0 / n_main)))
    return g, np.clip(0.5 + 0.3 * h, 0.0, 1.0)


def _brain_labels(grid: SampleGrid, head: HeadParams, pts: tuple[np.ndarray, ...], d_brain: np.ndarray,
                  push: np.ndarray | None, margin: float) -> np.ndarray:
    """uint8 tissue labels inside the cranial cavity (values outside it are overwritten later)."""
    xb, yb, zb = pts
    a, b = head.half_axes[:2]
    lab = np.full(xb.shape, Tissue.WM, np.uint8)
    depth = -d_brain - np.float32(head.subarachnoid_mm)
    shell = np.nonzero((d_brain < 0.5) & (depth < head.sulcus_depth_mm + head.cortex_mm))
    g, h = gyral_field(head, xb[shell], yb[shell], zb[shell])
    k_mean = float(np.linalg.norm(head.gyri_waves[:-2, :3], axis=1).mean())
    ds = depth[shell]
    reach = np.float32(head.sulcus_depth_mm) * (0.4 + 0.8 * h)  # sulcal depth varies
    ws = np.float32(head.sulcus_width) * np.clip(1.3 - 0.7 * ds / reach, 0.4, 1.3)  # sulci taper
    if push is not None:  # sulci are effaced where the brain is compressed
        ws = ws * np.clip(1.0 - push[shell] / np.float32(3.0), 0.0, 1.0)
    gm = (ds < head.cortex_mm) | ((g < head.sulcus_width + head.cortex_mm * k_mean) & (ds < reach + head.cortex_mm))
    lab[tuple(i[gm] for i in shell)] = Tissue.GM
    sulcus = (g < ws) & (ds < reach)
    lab[tuple(i[sulcus] for i in shell)] = Tissue.CSF
    n_low = int(np.count_nonzero(zb.min(axis=(1, 2)) < TENTORIUM_Z_MM + margin))
    if n_low:
        sl = slice(0, n_low)
        cereb = (zb[sl] < tentorium_z(head, yb[sl])) & (yb[sl] > 0.1 * b) & (lab[sl] != Tissue.CSF)
        lab[sl][cereb] = Tissue.CEREBELLUM
        stem = (np.hypot(xb[sl], yb[sl] - np.float32(0.12 * b)) < 12.0) & (zb[sl] < FLOOR_TOP_MM)
        lab[sl][stem] = Tissue.BRAINSTEM
    for centre, axes, yaw, label in _structures(head):
        hit = ellipsoid_mask(grid, pts, centre, axes, yaw, margin)
        if hit is not None:
            lab[hit[0]][hit[1]] = label
    for s in (-1, 1):  # Sylvian fissures: CSF sheets opening laterally
        box = grid.box(np.array([s * 0.72 * a, -8.0, -6.0]), 0.35 * a + margin)
        if box is not None:
            x, y, z = xb[box], yb[box], zb[box]
            sheet = (np.abs(y + 8.0 - 0.35 * (np.abs(x) - 0.5 * a)) < 0.7 * head.fissure_mm) & (s * x > 0.5 * a)
            lab[box][sheet & (np.abs(z + 6.0) < 11.0)] = Tissue.CISTERN
    near = np.nonzero(np.abs(xb) < max(head.fissure_mm, 0.5 * grid.pixel_mm))
    y, z = yb[near], zb[near]
    z_cc = -20.0 + 44.0 * (1.0 - _smoothstep(np.abs(y), 0.35 * b, 0.5 * b))
    fissure = (z > z_cc) & (z > tentorium_z(head, y))
    falx = fissure & (np.abs(xb[near]) < max(0.5 * grid.pixel_mm, 0.5 * head.hu.falx_mm))
    lab[tuple(i[fissure] for i in near)] = Tissue.CSF
    lab[tuple(i[falx] for i in near)] = Tissue.FALX
    lab[depth < 0] = Tissue.CSF
    return lab


def render_anatomy(grid: SampleGrid, head: HeadParams, warps: list[Warp] | None = None,
                   pv_scale: float = 1.0, workers: int = 2) -> Anatomy:
    """The phantom on `grid`: HU float32 (Z, h, w), tissue labels, inner-table distance.

    `pv_scale` widens the slab partial volume of obliquely cut surfaces (vertex, skull base).
    Slices are rendered in `workers` threads (numpy releases the GIL); the result is the same.
    """
    chunks = grid.chunks(workers) if workers > 1 else [grid]
    if len(chunks) == 1:
        return _render(grid, head, warps or [], pv_scale)
    with ThreadPoolExecutor(len(chunks)) as pool:
        parts = list(pool.map(lambda g: _render(g, head, warps or [], pv_scale), chunks))
    return Anatomy(*(np.concatenate([getattr(a, f) for a in parts]) for f in ("hu", "tissue", "cavity_mm")))


def _render(grid: SampleGrid, head: HeadParams, warps: list[Warp], pv_scale: float) -> Anatomy:
    pts = grid.coords()
    x, y, z = pts
    a, b, c_sup, c_inf = head.half_axes
    hu_t = head.hu
    d_cav = cavity_sdf(head, x, y, z)
    d_env = envelope_sdf(head, x, y, z)
    waves = sum(grid.plane_wave(w[:3], w[3]) for w in head.skull_waves) / max(1, len(head.skull_waves))
    # partial volume: the slab (thickness dz) crosses surfaces whose normal has a z component
    r = np.sqrt(x * x + y * y + z * z) + np.float32(1.0)
    temporal = (x / r) ** 4 * np.exp(-((z / np.float32(35.0)) ** 2))  # the temporal squama is thin
    t = np.float32(head.skull_mm) * (1.0 + np.float32(0.3) * waves - np.float32(TEMPORAL_THINNING) * temporal)
    h = np.abs(grid.plane_height_mm()).astype(np.float32)[:, None, None]
    width = np.float32(grid.pixel_mm) + np.float32(pv_scale * grid.geometry.slice_thickness_mm) * np.minimum(h / r, 1.0)
    # outside the cavity: scalp with a fat layer, skull tables and diploe, skull base, soft tissue
    s = d_env - t
    a_scalp = _soft(s - np.float32(head.scalp_mm), width)
    fat = (s > 0.3 * head.scalp_mm) & (s < 0.7 * head.scalp_mm)
    hu_out = np.where(fat, np.float32(hu_t.fat), np.float32(hu_t.scalp))
    hu = AIR_HU + (hu_out - AIR_HU) * a_scalp
    sb = np.clip(d_cav / t, 0.0, 1.0)
    dense = np.clip((np.abs(sb - 0.5) - DIPLOE_EDGE) * 6.0, 0.0, 1.0)
    hu_bone = hu_t.bone_diploe + (hu_t.bone_table - hu_t.bone_diploe) * dense
    base = np.exp(-(((z / c_inf) + 0.6) / 0.3) ** 2)  # the skull base is thickest at mid-depth
    deep = d_cav > t + SKULL_BASE_EXTRA_MM * base
    hu_bone[deep] = hu_t.soft
    a_bone = _soft(s, width)
    hu += (hu_bone - hu) * a_bone
    face = []
    for centre, axes, value, label in _face(head):
        hit = ellipsoid_mask(grid, pts, centre, axes)
        if hit is not None:
            m = hit[1] & deep[hit[0]]
            hu[hit[0]][m] = value
            face.append((hit[0], m, label))
    # inside: brain (warped by mass effect), blended in over the inner table's partial volume
    pts_b, push = apply_warps(grid, pts, warps)
    d_brain = d_cav if not warps else d_cav.copy()
    for w in warps:
        box = grid.box(w.centre, w.reach_mm)
        if box is not None:
            d_brain[box] = cavity_sdf(head, *(p[box] for p in pts_b))
    margin = max((w.shift_mm for w in warps), default=0.0)
    tissue = _brain_labels(grid, head, pts_b, d_brain, push, margin)
    hu_brain = hu_t.lut(grid.pixel_mm)[tissue]
    a_cav = _soft(d_cav, width)
    hu += (hu_brain - hu) * a_cav
    outside = np.where(deep, Tissue.SOFT, Tissue.BONE).astype(np.uint8)
    outside[a_bone < 0.5] = Tissue.SCALP
    outside[(a_bone < 0.5) & fat] = Tissue.FAT
    outside[a_scalp < 0.5] = Tissue.AIR
    for box, m, label in face:
        outside[box][m] = label
    tissue = np.where(a_cav >= 0.5, tissue, outside)
    return Anatomy(hu=hu.astype(np.float32, copy=False), tissue=tissue, cavity_mm=d_cav)

"""Bleed mimics, in negatives and positives alike: hyperdense things that are not acute blood.

- physiological calcification (pineal, choroid plexus glomus, basal ganglia): small, 100-400 HU;
- posterior-fossa beam hardening: a dark Hounsfield bar with bright streaks between the petrous bones;
- a bright band along the inner table of the posterior fossa (beam hardening next to bone);
- partial volume of the skull at the vertex (a wider slab smear of bone into the top slices);
- a dense (thick, calcified) falx.

`sample_mimics` draws which appear (more often at higher difficulty); `head_for` and `pv_scale`
act before rendering, `apply_mimics` after.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ichdet.synth.grid import SampleGrid
from ichdet.synth.head import HeadParams, Tissue
from ichdet.synth.phantom import Anatomy

CALCIFICATION_HU = (100.0, 400.0)
DENSE_FALX_HU = (95.0, 130.0)
STREAK_HU = (25.0, 50.0)  # bright beam-hardening streaks (dark bar about -1.2x)
BAND_HU = (15.0, 35.0)  # bright rim along the posterior fossa's inner table


@dataclass
class MimicPlan:
    """Which mimics one scan shows; calcifications as (centre head mm, radius mm, HU)."""

    calcifications: list[tuple[np.ndarray, float, float]] = field(default_factory=list)
    dense_falx: bool = False
    vertex_pv: float = 1.0  # slab partial-volume scale (> 1: smeared vertex)
    streaks: float = 0.0  # HU of the bright streaks, 0 for none
    band: float = 0.0  # HU of the posterior-fossa inner-table band, 0 for none

    def names(self) -> list[str]:
        out = [f"calcification_{i}" for i in range(len(self.calcifications))]
        out += [n for n, on in (("dense_falx", self.dense_falx), ("vertex_partial_volume", self.vertex_pv > 1.0),
                                ("beam_hardening_streaks", self.streaks > 0), ("posterior_fossa_band", self.band > 0)) if on]
        return out


def sample_mimics(rng: np.random.Generator, head: HeadParams, difficulty: float) -> MimicPlan:
    """Draw mimics; each kind appears with probability ~0.1 + 0.7 * difficulty."""
    def p(base: float) -> bool:
        return bool(rng.uniform() < base + 0.7 * difficulty)

    k = 0.5 * (head.half_axes[0] / 66.0 + head.half_axes[1] / 84.0)
    plan = MimicPlan()
    if p(0.25):  # pineal gland, behind the third ventricle
        plan.calcifications.append((k * np.array([0.0, 18.0, 0.0]), rng.uniform(1.5, 4.0), rng.uniform(*CALCIFICATION_HU)))
    if p(0.15):  # choroid plexus glomus in the atria, usually both sides
        for s in (-1, 1):
            if s == 1 or rng.uniform() < 0.8:
                c = k * np.array([s * 13.0, 25.0, 7.0]) + rng.normal(0, 1.0, 3)
                plan.calcifications.append((c, rng.uniform(1.5, 4.5), rng.uniform(*CALCIFICATION_HU)))
    if p(-0.15):  # basal ganglia (globus pallidus) calcification: the hardest mimic of a small IPH
        s = float(rng.choice([-1, 1]))
        plan.calcifications.append((k * np.array([s * 18.0, -2.0, -1.0]) + rng.normal(0, 1.5, 3),
                                    rng.uniform(1.0, 3.0), rng.uniform(90.0, 200.0)))
    plan.dense_falx = p(0.05)
    plan.vertex_pv = float(rng.uniform(1.6, 2.6)) if p(0.1) else 1.0
    plan.streaks = float(rng.uniform(*STREAK_HU)) if p(0.1) else 0.0
    plan.band = float(rng.uniform(*BAND_HU)) if p(0.05) else 0.0
    return plan


def head_for(head: HeadParams, plan: MimicPlan, rng: np.random.Generator) -> HeadParams:
    """The head to render: with a dense falx when the plan says so."""
    if not plan.dense_falx:
        return head
    hu = dataclasses.replace(head.hu, falx=float(rng.uniform(*DENSE_FALX_HU)), falx_mm=float(rng.uniform(1.5, 2.5)))
    return dataclasses.replace(head, hu=hu)


def _posterior_fossa_planes(grid: SampleGrid, anat: Anatomy, z_range: tuple[float, float]) -> list[int]:
    """Render-grid slices whose cranial cavity lies mostly at head height within `z_range` (mm)."""
    out = []
    _, _, z_mid = grid.coords((slice(0, grid.shape[0]), slice(grid.shape[1] // 2, grid.shape[1] // 2 + 1),
                               slice(grid.shape[2] // 2, grid.shape[2] // 2 + 1)))
    for k, zc in enumerate(z_mid[:, 0, 0]):
        if z_range[0] <= zc <= z_range[1] and (anat.cavity_mm[k] < 0).any():
            out.append(k)
    return out


def apply_mimics(hu: np.ndarray, grid: SampleGrid, head: HeadParams, anat: Anatomy, plan: MimicPlan,
                 rng: np.random.Generator, n_sub: int = 3) -> None:
    """Add calcifications, streaks and the posterior-fossa band to render-grid HU (in place)."""
    for centre, radius, value in plan.calcifications:
        box = grid.box(centre, radius + 1.0)
        if box is None:
            continue
        x, y, z = grid.coords(box, n_sub)
        inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2
        occ = inside.reshape(-1, n_sub, *inside.shape[1:]).mean(axis=1, dtype=np.float32)
        hu[box] += (np.float32(value) - hu[box]) * occ
        anat.tissue[box][occ >= 0.5] = Tissue.CALCIFICATION
    c_inf = head.half_axes[3]
    if plan.streaks > 0:
        for k in _posterior_fossa_planes(grid, anat, (-0.8 * c_inf, -0.3 * c_inf)):
            x, y, _ = grid.coords((slice(k, k + 1), slice(0, grid.shape[1]), slice(0, grid.shape[2])))
            y0 = 0.15 * head.half_axes[1] + rng.uniform(-5, 5)
            dist = np.abs(y[0] - y0 - rng.uniform(-0.15, 0.15) * x[0])
            gap = rng.uniform(4.0, 8.0)
            pattern = -1.2 * np.exp(-((dist / 3.0) ** 2)) + np.exp(-(((dist - gap) / 1.2) ** 2))
            inside = anat.cavity_mm[k] < 0
            hu[k][inside] += np.float32(plan.streaks) * pattern[inside]
    if plan.band > 0:
        for k in _posterior_fossa_planes(grid, anat, (-1.1 * c_inf, -0.25 * c_inf)):
            d = anat.cavity_mm[k]
            _, y, _ = grid.coords((slice(k, k + 1), slice(0, grid.shape[1]), slice(0, grid.shape[2])))
            band = (d < 0) & (y[0] > 0)
            hu[k][band] += np.float32(plan.band) * np.exp(-(((d[band] + 1.5) / 1.5) ** 2))

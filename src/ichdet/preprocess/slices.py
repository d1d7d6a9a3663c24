"""`SliceMap`: which slices of the input each prepared slice covers, and where those lie.

The 2x2x2 maximum filter merges source slices (2k, 2k+1) into prepared slice k (an odd last
slice stands alone); without it prepared slice k is source slice k. Slabs of the training slice
thickness (`ichdet.preprocess.slabs`, k source slices each) come first, so prepared slice j then
covers k (or, with the filter, 2k) consecutive source slices. `slice_map` in
`ichdet.preprocess.pipeline` makes the map with the same rule that `prepare_volume` follows, so
consumers (per-slice probabilities, top slices, heatmap names, the viewer) read it instead of
guessing from array shapes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np

from ichdet.io.volume import Volume

T = TypeVar("T")


def slice_groups(n_slices: int, block: int) -> tuple[tuple[int, ...], ...]:
    """The source slices of each prepared slice when each run of `block` consecutive slices of
    `n_slices` becomes one (1: none merged; 2: the 2x2x2 filter), the last run possibly shorter."""
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    return tuple(tuple(range(s, min(s + block, n_slices))) for s in range(0, n_slices, block))


def merge_groups(values: np.ndarray, groups: Sequence[Sequence[int]], how: str) -> np.ndarray:
    """Per source slice (Z, ...) -> per prepared slice (Z', ...): the maximum ("max") or logical
    or ("any") of each group's source values."""
    v = np.asarray(values)
    reduce = np.any if how == "any" else np.max
    return np.stack([reduce(v[list(g)], axis=0) for g in groups]) if len(groups) else v[:0]


@dataclass(frozen=True)
class SliceMap:
    """Prepared slices <-> source slices of one volume (index 0 = the most inferior slice).

    groups: for each prepared slice k, the source slice indices it covers, ascending.
    z_mm: for each source slice, the z coordinate (mm, patient frame) of its voxel (0, 0), from
        the volume's affine, rounded to 0.001 mm.
    files: for each source slice, the name of the file it was read from; None where the volume
        has no one file per slice (NIfTI, PNG/JPEG, an array).
    """

    groups: tuple[tuple[int, ...], ...]
    z_mm: tuple[float, ...]
    files: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        flat = [i for g in self.groups for i in g]
        if flat != list(range(len(self.z_mm))) or not all(self.groups):
            raise ValueError(f"SliceMap.groups must split source slices 0..{len(self.z_mm) - 1} in order, "
                             f"got {self.groups}")
        if self.files is not None and len(self.files) != len(self.z_mm):
            raise ValueError(f"SliceMap.files must name {len(self.z_mm)} source slices, got {len(self.files)}")

    @classmethod
    def of_volume(cls, volume: Volume, block: int = 1) -> SliceMap:
        """The map of `volume` when each run of `block` consecutive slices becomes one prepared
        slice (1: none merged; 2: the 2x2x2 filter), the last run possibly shorter."""
        n = volume.shape[0]
        groups = slice_groups(n, block)
        z_mm = tuple(round(float((volume.affine @ np.array([0.0, 0.0, i, 1.0]))[2]), 3) for i in range(n))
        one_file_per_slice = len(volume.source) == n and volume.info.get("units") != "display"
        files = tuple(Path(f).name for f in volume.source) if one_file_per_slice else None
        return cls(groups, z_mm, files)

    @property
    def n_source(self) -> int:
        return len(self.z_mm)

    @property
    def n_prepared(self) -> int:
        return len(self.groups)

    @property
    def merged(self) -> bool:
        """Whether some prepared slice covers more than one source slice."""
        return self.n_prepared != self.n_source

    def sources(self, k: int) -> tuple[int, ...]:
        """The source slice indices of prepared slice k."""
        return self.groups[k]

    def prepared_of(self, index: int) -> int:
        """The prepared slice that source slice `index` belongs to."""
        if not 0 <= index < self.n_source:
            raise IndexError(f"source slice {index} is outside the volume's {self.n_source} slices")
        return next(k for k, g in enumerate(self.groups) if g[0] <= index <= g[-1])

    def spread(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """Per prepared slice (Z',) -> per source slice (Z,): each source slice gets the value of
        the prepared slice it belongs to."""
        values = np.asarray(values)
        if values.shape[:1] != (self.n_prepared,):
            raise ValueError(f"expected {self.n_prepared} values, one per prepared slice, got shape {values.shape}")
        return values[[k for k, g in enumerate(self.groups) for _ in g]]

    def collect(self, values: Sequence[T]) -> list[T]:
        """Per source slice (Z,), as `spread` writes them -> per prepared slice (Z',): the value of
        each prepared slice's first source slice."""
        if len(values) != self.n_source:
            raise ValueError(f"expected {self.n_source} values, one per source slice, got {len(values)}")
        return [values[g[0]] for g in self.groups]

    def labels(self) -> list[str]:
        """Names of the prepared slices in source slice numbers: "slice k" or "slices a-b"."""
        return [f"slice {g[0]}" if len(g) == 1 else f"slices {g[0]}-{g[-1]}" for g in self.groups]

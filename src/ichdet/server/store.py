"""Open studies: what the viewer shows of each scan, and when it is closed.

An `OpenStudy` holds the prediction, the model's prepared input (for Grad-CAM), the display stacks of
the preset windows as uint8, the HU in display geometry (for custom windows), the Grad-CAM maps
computed so far and its temporary folder. `StudyStore` closes a study when asked, when it has
been idle past `ttl_s`, or when more than `max_studies` are open (the least recently used
first); closing removes its temporary folder.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ichdet.errors import InputError
from ichdet.inference.result import ScanPrediction

log = logging.getLogger("ichdet.server")


@dataclass
class OpenStudy:
    """One scan open in the viewer. Display slice k is prepared slice k of the model (see docs/serve-api.md)."""

    id: str
    name: str  # display name: shown to the client, never logged
    prediction: ScanPrediction
    image: np.ndarray  # the model's input (C, Z', S, S) float32
    displays: dict[str, np.ndarray]  # preset window -> uint8 (Z', S, S)
    hu: np.ndarray | None  # float32 HU (Z', S, S) in display geometry; None for PNG/JPEG (no HU)
    slice_probabilities: list[float]  # one per display slice
    slice_labels: list[str]
    top_slices: list[int]  # display slices, most suspicious first
    tmp_dir: Path | None = None
    labels: np.ndarray | None = None  # a segmentation bundle's label mask uint8 (Z', S, S) in display geometry
    cams: dict[int, np.ndarray] = field(default_factory=dict)  # display slice -> Grad-CAM (S, S) (P(bleed) when segmenting)
    cam_jobs: dict[int, Any] = field(default_factory=dict)  # block of slices -> its Grad-CAM job (app.py)
    last_access: float = 0.0

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[1])

    @property
    def size(self) -> int:
        return int(self.image.shape[-1])

    def to_json(self, windows: list[str], expires_in_s: float) -> dict[str, Any]:
        p = self.prediction
        return {"id": self.id, "name": self.name, "shape": list(p.shape), "n_slices": self.n_slices,
                "size": self.size, "slice_labels": self.slice_labels,
                "slice_probabilities": self.slice_probabilities, "probability": p.probability,
                "threshold": p.threshold, "decision": p.decision, "top_slices": self.top_slices,
                "subtypes": p.subtypes, "volumes": p.volumes, "segments": segment_legend() if self.labels is not None else None,
                "windows": windows, "warnings": p.warnings, "seconds": p.seconds,
                "expires_in_s": max(0, round(expires_in_s))}


def segment_legend() -> list[dict[str, Any]]:
    """The mask overlay's legend: [{"label": 1..5, "name": subtype, "colour": "#rrggbb"}]."""
    from ichdet.server.overlays import SUBTYPE_COLOURS

    return [{"label": i + 1, "name": name, "colour": "#%02x%02x%02x" % rgb}
            for i, (name, rgb) in enumerate(SUBTYPE_COLOURS.items())]


def remove_dir(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


class StudyStore:
    """Open studies by id, closed when deleted, idle past `ttl_s` or beyond `max_studies`."""

    def __init__(self, max_studies: int = 8, ttl_s: float = 1800.0, clock: Callable[[], float] = time.monotonic):
        if not isinstance(max_studies, int) or isinstance(max_studies, bool) or max_studies < 1:
            raise InputError(f"max_studies must be at least 1, got {max_studies!r}")
        if not ttl_s > 0:
            raise InputError(f"the study time-to-live must be positive, got {ttl_s!r} s")
        self.max_studies, self.ttl_s, self.clock = max_studies, float(ttl_s), clock
        self._studies: OrderedDict[str, OpenStudy] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._studies)

    def add(self, study: OpenStudy) -> None:
        with self._lock:
            study.last_access = self.clock()
            self._studies[study.id] = study
            while len(self._studies) > self.max_studies:
                oldest = next(iter(self._studies))
                self._close(oldest, "evicted: more than %d studies open" % self.max_studies)

    def get(self, study_id: str) -> OpenStudy | None:
        """The study (its idle clock restarted), or None when unknown, closed or expired."""
        with self._lock:
            self.sweep()
            study = self._studies.get(study_id)
            if study is not None:
                study.last_access = self.clock()
                self._studies.move_to_end(study_id)
            return study

    def expires_in(self, study: OpenStudy) -> float:
        return self.ttl_s - (self.clock() - study.last_access)

    def close(self, study_id: str) -> bool:
        with self._lock:
            return self._close(study_id, "closed")

    def sweep(self) -> int:
        """Close the studies idle past the time-to-live; returns how many."""
        with self._lock:
            now = self.clock()
            expired = [sid for sid, s in self._studies.items() if now - s.last_access > self.ttl_s]
            for sid in expired:
                self._close(sid, "expired")
            return len(expired)

    def close_all(self) -> None:
        with self._lock:
            for sid in list(self._studies):
                self._close(sid, "closed at shutdown")

    def _close(self, study_id: str, why: str) -> bool:
        study = self._studies.pop(study_id, None)
        if study is None:
            return False
        remove_dir(study.tmp_dir)
        log.info("study %s %s", study_id, why)
        return True

"""The `--studies` folder: the studies in it as `ichdet.inference.find_studies` sees them, each
named by its path relative to the folder. Studies are opened by name from this list only, never
by a path the client gives, so nothing outside the folder can be reached."""
from __future__ import annotations

import threading
import zipfile
from pathlib import Path

from ichdet.errors import InputError
from ichdet.inference.studies import FoundStudy, find_studies
from ichdet.io.images import is_image
from ichdet.io.nifti import is_nifti


def study_type(source: Path | list[Path]) -> str:
    """"dicom", "nifti", "image" or "zip"."""
    if isinstance(source, list) or source.is_dir():
        return "dicom"
    if is_nifti(source):
        return "nifti"
    if is_image(source):
        return "image"
    if source.suffix.lower() == ".zip" or zipfile.is_zipfile(source):
        return "zip"
    return "dicom"


class StudyCatalog:
    """The studies under `root` (a folder; InputError when it is not one)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        if not self.root.exists():
            raise InputError("no such folder (--studies)", root)
        if not self.root.is_dir():
            raise InputError("--studies must be a folder", root)
        self._lock = threading.Lock()
        self._sources: dict[str, Path | list[Path]] = {}
        self.refresh()

    def name(self, label: str) -> str:
        prefix = str(self.root)
        rel = label[len(prefix):].lstrip("/\\") if label.startswith(prefix) else label
        return rel or "."

    def refresh(self) -> list[dict[str, str]]:
        """Look at the folder again -> [{"name", "type"}] in name order."""
        try:
            found: list[FoundStudy] = find_studies(self.root)
        except InputError:
            found = []  # an empty folder (or one without scans): nothing to offer yet
        sources = {self.name(s.label): s.source for s in found}
        with self._lock:
            self._sources = sources
        return self.entries()

    def entries(self) -> list[dict[str, str]]:
        with self._lock:
            return [{"name": n, "type": study_type(s)} for n, s in sorted(self._sources.items())]

    def source(self, name: str) -> Path | list[Path] | None:
        """What `Predictor.prepare` reads for `name`, or None when the last listing has no such name."""
        with self._lock:
            return self._sources.get(name)

    def hide(self) -> dict[str, str]:
        """Server paths to drop from messages: the folder's own path (names stay relative)."""
        return {str(self.root) + "/": "", str(self.root): "."}

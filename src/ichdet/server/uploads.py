"""Uploads: the raw request body streamed to a file under a size limit, its type sniffed from the
first bytes (never from a name), and the display name the client gave in `X-Filename`."""
from __future__ import annotations

import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import AsyncIterator

NOT_A_SCAN = "not a scan: expected a zip of a DICOM series, a NIfTI file, a PNG/JPEG or a DICOM file"
SNIFF_BYTES = 348  # enough for the NIfTI-1 magic at offset 344
MAX_NAME = 200  # characters of a display name


class UploadError(Exception):
    """An upload refused with an HTTP status and a one-line reason."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def too_large(limit_mb: float) -> UploadError:
    return UploadError(413, f"upload is larger than the limit of {limit_mb:g} MB")


def sniff(head: bytes) -> str | None:
    """The file suffix the first bytes say (".zip", ".nii.gz", ".nii", ".png", ".jpg", ".dcm"), else None."""
    if head.startswith(b"PK\x03\x04"):
        return ".zip"
    if head.startswith(b"\x1f\x8b"):
        return ".nii.gz"
    if head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return ".nii"
    if head.startswith(b"\x89PNG"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head[128:132] == b"DICM":
        return ".dcm"
    return None


def display_name(header: str | None, suffix: str) -> str:
    """A printable base name from the client's `X-Filename` (percent-encoding decoded, folders
    dropped, at most MAX_NAME characters), else "upload<suffix>". Shown to the client only."""
    name = urllib.parse.unquote(header or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:MAX_NAME]
    return name or f"upload{suffix}"


def check_declared_size(content_length: str | None, limit_bytes: int, limit_mb: float) -> None:
    """413 before reading when the declared Content-Length is over the limit."""
    if content_length is None:
        return
    try:
        declared = int(content_length)
    except ValueError:
        raise UploadError(400, f"bad Content-Length header {content_length[:40]!r}") from None
    if declared > limit_bytes:
        raise too_large(limit_mb)


async def save_body(chunks: AsyncIterator[bytes], folder: Path, limit_bytes: int, limit_mb: float) -> Path:
    """Stream `chunks` into FOLDER/upload<suffix>, stopping at `limit_bytes` (413); an empty body or
    an unknown type -> 400. The caller removes `folder` when this raises."""
    part = folder / "upload.part"
    size, head = 0, b""
    with open(part, "wb") as fh:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit_bytes:
                raise too_large(limit_mb)
            if len(head) < SNIFF_BYTES:
                head += chunk[:SNIFF_BYTES - len(head)]
            fh.write(chunk)
    if size == 0:
        raise UploadError(400, "empty upload: send the scan file as the request body")
    suffix = sniff(head)
    if suffix is None:
        raise UploadError(400, NOT_A_SCAN)
    return part.rename(folder / f"upload{suffix}")


class TempSpace:
    """The server's temporary folder (created on first use under `parent`, default the system's):
    one subfolder per upload, removed with its study; the whole folder removed at shutdown."""

    def __init__(self, parent: str | Path | None = None):
        self.parent = Path(parent) if parent is not None else None
        self.root: Path | None = None

    def new_dir(self) -> Path:
        if self.root is None or not self.root.is_dir():
            if self.parent is not None:
                self.parent.mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix="ichdet-serve-", dir=self.parent))
        return Path(tempfile.mkdtemp(prefix="study-", dir=self.root))

    def remove(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

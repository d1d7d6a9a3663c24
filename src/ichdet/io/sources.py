"""Turn what a user points at (a folder, a list of files, a zip) into a list of files, safely."""
from __future__ import annotations

import contextlib
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

from ichdet.errors import InputError

MAX_ZIP_BYTES = 8 * 1024**3  # uncompressed total a zip may unpack to
MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_RATIO = 200  # uncompressed / compressed, past which a member looks like a zip bomb
SKIP_NAMES = {"DICOMDIR", ".DS_Store", "Thumbs.db"}


def list_files(folder: Path) -> list[Path]:
    """All regular files below `folder` (recursive), hidden files and known non-images skipped;
    InputError naming the folder that cannot be listed."""
    out: list[Path] = []
    try:
        for p in sorted(folder.rglob("*")):
            if p.name.startswith(".") or p.name in SKIP_NAMES:
                continue
            if p.is_file():
                out.append(p)
    except OSError as e:
        raise InputError(f"cannot list folder ({e.strerror or e})", e.filename or folder) from None
    return out


def _check_member(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath | None:
    """Validate one zip entry; returns its relative path, None for folders. Rejects escapes and links."""
    name = info.filename.replace("\\", "/")
    rel = PurePosixPath(name)
    if name.startswith("/") or rel.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise InputError(f"zip entry {info.filename!r} has an absolute path; refusing to unpack", archive)
    if ".." in rel.parts:
        raise InputError(f"zip entry {info.filename!r} would land outside its folder ('..'); refusing to unpack", archive)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InputError(f"zip entry {info.filename!r} is a symbolic link; refusing to unpack", archive)
    if info.is_dir():
        return None
    return rel


@contextlib.contextmanager
def unpacked_zip(archive: Path) -> Iterator[Path]:
    """Unpack a zip into a temporary folder (removed afterwards), refusing zip-slip, links and bombs."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"not a readable zip file ({e})", archive) from None
    with zf, tempfile.TemporaryDirectory(prefix="ichdet-zip-") as tmp:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise InputError(f"zip holds {len(infos)} entries, more than the limit {MAX_ZIP_MEMBERS}", archive)
        members = [(i, _check_member(i, archive)) for i in infos]
        total = sum(i.file_size for i, _ in members)
        if total > MAX_ZIP_BYTES:
            raise InputError(f"zip unpacks to {total} bytes, more than the limit {MAX_ZIP_BYTES}", archive)
        root = Path(tmp)
        for info, rel in members:
            if rel is None:
                continue
            if info.file_size > 1_000_000 and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
                raise InputError(f"zip entry {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}x; refusing a likely zip bomb", archive)
            dest = root.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(dest, "wb") as dst:
                    remaining = info.file_size + 1
                    while chunk := src.read(1 << 20):
                        remaining -= len(chunk)
                        if remaining < 0:
                            raise InputError(f"zip entry {info.filename!r} is larger than its header says", archive)
                        dst.write(chunk)
            except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as e:
                raise InputError(f"zip entry {info.filename!r} cannot be read ({e})", archive) from None
        yield root


@contextlib.contextmanager
def resolve_inputs(path: str | Path | Sequence[str | Path]) -> Iterator[tuple[list[Path], str]]:
    """Yield (files, label) for a folder, a zip, a single file or a list of files.

    `label` names the input in messages. Missing paths and empty folders raise InputError.
    """
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        if not files:
            raise InputError("no files given")
        for f in files:
            if not f.is_file():
                raise InputError("no such file", f)
        yield files, str(files[0]) if len(files) == 1 else f"{len(files)} files"
        return
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", p)
    if not (p.is_dir() or p.is_file()):
        raise InputError("not a regular file or folder (a pipe, socket or device?)", p)
    if p.is_dir():
        files = list_files(p)
        if not files:
            anything = next(p.iterdir(), None) is not None
            raise InputError("folder holds no readable files (only hidden files or DICOMDIR)" if anything else "folder is empty", p)
        yield files, str(p)
    elif zipfile.is_zipfile(p) or p.suffix.lower() == ".zip":
        with unpacked_zip(p) as root:
            files = list_files(root)
            if not files:
                raise InputError("zip holds no files", p)
            yield files, str(p)
    else:
        yield [p], str(p)

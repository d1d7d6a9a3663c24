"""What every benchmark script shares: machine facts, the atomic JSON write, ratios and table cells."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path


def version(dist: str) -> str | None:
    """Installed version of distribution `dist`, or None."""
    try:
        from importlib.metadata import version as _v
        return _v(dist)
    except Exception:  # noqa: BLE001 - not installed, or broken metadata: report None
        return None


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU model name and its /proc/cpuinfo flags (empty where there is no /proc)."""
    cpu, flags = platform.processor() or "", []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    return cpu, flags


def base_machine_info() -> dict:
    """CPU model, cores (logical, usable, physical), RAM, platform and Python version."""
    cpu, _ = cpu_model_and_flags()
    info = {"cpu_model": cpu, "logical_cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        import psutil
        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["ram_gb"] = round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:
        pass
    return info


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)

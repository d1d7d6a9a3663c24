"""What every benchmark script shares: machine facts, the atomic JSON write, ratios, table cells,
the measured matrix-multiply peak and which bf16 variants run on this CPU (`--precision`)."""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
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


MATMUL_WARMUP_S = 0.3  # matmul peak: warm-up seconds per size (thread pool, kernel choice, caches)
MATMUL_MIN_TIMED_S = 0.5  # ... and at least this long timed per size


def matmul_peak(dtype, sizes: tuple[int, ...], repeats: int, warmup_s: float = MATMUL_WARMUP_S,
                min_timed_s: float = MATMUL_MIN_TIMED_S) -> dict:
    """Best achieved GFLOP/s of ``torch.mm`` on square `dtype` matrices of each size in `sizes`
    (best of >= `repeats` calls and >= `min_timed_s` seconds after `warmup_s` of warm-up);
    GFLOP/s = 2 n^3 / t. -> {"gflops": best over sizes, "n": its size, "per_size_gflops": {...}}."""
    import torch

    per_size = {}
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        t_end = time.perf_counter() + warmup_s  # warm-up: thread pool, kernel choice, caches
        torch.mm(a, b)
        while time.perf_counter() < t_end:
            torch.mm(a, b)
        best, k, t_end = float("inf"), 0, time.perf_counter() + min_timed_s
        while k < repeats or time.perf_counter() < t_end:  # best of >= `repeats` calls and >= min_timed_s
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
            k += 1
        per_size[str(n)] = 2.0 * n**3 / best / 1e9
        del a, b
    best_n = max(per_size, key=per_size.get)
    return {"gflops": per_size[best_n], "n": int(best_n), "per_size_gflops": per_size}


def torch_machine_info(dists: tuple[str, ...]) -> dict:
    """`base_machine_info` plus torch's threads, the CPU's matrix flags, the load average now,
    oneDNN, and the versions of `dists`."""
    import torch

    _, flags = cpu_model_and_flags()
    info = {**base_machine_info(), "torch_threads": torch.get_num_threads(),
            "cpu_matrix_flags": sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2", "fma")))}
    try:
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    info["mkldnn"] = bool(torch.backends.mkldnn.is_available())
    info["cpu_features"] = cpu_features_dict()
    for dist in dists:
        info[dist] = version(dist)
    return info


def cpu_features_dict() -> dict | None:
    """`ichdet.engine.precision.cpu_features().to_dict()`: CPU model, the ISA torch and oneDNN use,
    the overrides in the environment and whether bf16 is native (None where ichdet is missing)."""
    try:
        from ichdet.engine.precision import cpu_features
    except ImportError:
        return None
    return cpu_features().to_dict()


# ----------------------------------------------------------------------------------------------
# --precision: which bf16 variants run
# ----------------------------------------------------------------------------------------------
PRECISION_CHOICES = ("auto", "fp32", "bf16")
PRECISION_HELP = ("auto (default): the bf16 variants run only where bf16 is native (AVX512-BF16 / AMX in use), "
                  "else they are listed in 'skipped'; fp32: never run them; bf16: run them even where bf16 is "
                  "emulated (about ten times slower than fp32)")
EMULATED_BF16_MAX_N = 512  # bf16 matmul peak sizes are capped here where bf16 is emulated (~1-3 GFLOP/s)


@dataclass
class PrecisionPlan:
    """What `--precision` means on this CPU: whether the bf16 variants run (`run_bf16`), whether
    bf16 is emulated there (`emulated`), and a `skipped` entry with a one-line reason for each bf16
    variant that does not run."""

    requested: str
    cpu: str  # CpuFeatures.describe(): CPU model, ISA in use, overrides
    native_bf16: bool
    run_bf16: bool
    emulated: bool
    skipped: list[dict] = field(default_factory=list)

    @property
    def note(self) -> str:
        if self.run_bf16:
            return (f"bf16 variants run, {'emulated (--precision bf16)' if self.emulated else 'native'} on "
                    f"{self.cpu}")
        if self.requested == "fp32":
            return f"bf16 variants not run: --precision fp32 (CPU: {self.cpu})"
        return f"bf16 variants not run: bf16 is not native on {self.cpu}"

    def bf16_sizes(self, sizes: tuple[int, ...]) -> tuple[int, ...]:
        """The bf16 matmul peak's sizes: `sizes`, capped at EMULATED_BF16_MAX_N where bf16 is emulated
        (n = 4096 would take about a minute a call there)."""
        if not self.emulated:
            return tuple(sizes)
        return tuple(dict.fromkeys(min(n, EMULATED_BF16_MAX_N) for n in sizes))

    def to_dict(self) -> dict:
        return {"requested": self.requested, "cpu": self.cpu, "native_bf16": self.native_bf16,
                "bf16_variants_run": self.run_bf16, "bf16_emulated": self.emulated, "note": self.note}


def plan_precision(requested: str, bf16_variants: list[str], log=None) -> PrecisionPlan:
    """`--precision` auto | fp32 | bf16 on this CPU, for the selected `bf16_variants`: auto runs them
    where bf16 is native (`cpu_features().native_bf16`), fp32 never, bf16 always (logging that
    it is emulated where it is). The variants that do not run get a `skipped` entry each."""
    from ichdet.engine.precision import cpu_features

    if requested not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {requested!r}")
    f = cpu_features()
    cpu, native = f.describe(), f.native_bf16
    run = bool(bf16_variants) and (requested == "bf16" or (requested == "auto" and native))
    plan = PrecisionPlan(requested, cpu, native, run, emulated=run and not native)
    if not run:
        if requested == "fp32":
            reason = f"not asked: --precision fp32 runs fp32 variants only (CPU: {cpu})"
        else:
            reason = (f"bf16 is not native on this CPU ({cpu}): it would run emulated, about ten times slower than "
                      "fp32; --precision bf16 runs it anyway")
        plan.skipped = [{"case": f"variant {v}", "reason": reason} for v in bf16_variants]
    if log is not None:
        if plan.emulated:
            log(f"bf16 is emulated on {cpu}: the bf16 variants run because --precision bf16 asks for them "
                "(expect them about ten times slower than fp32)")
        elif bf16_variants and not run:
            log(f"skipping {', '.join(bf16_variants)}: {plan.skipped[0]['reason']}")
    return plan


GOAL_CELL = {True: "met", False: "MISSED", None: "-"}


def print_aligned(table: list[tuple]) -> None:
    """Print rows (the first is the header) as left-aligned columns with a rule under the header."""
    widths = [max(len(str(t[i])) for t in table) for i in range(len(table[0]))]
    for k, t in enumerate(table):
        print("  ".join(str(c).ljust(w) for c, w in zip(t, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))

"""What arithmetic a device does natively, decided in one place for training, predict and the
benchmarks.

CPU: bf16 is native where the CPU has AVX512-BF16 or AMX-BF16 units *and* both PyTorch's ATen
kernels (``ATEN_CPU_CAPABILITY``, read through `torch.backends.cpu.get_cpu_capability`) and oneDNN
(``ONEDNN_MAX_CPU_ISA``, and PyTorch's own `torch.ops.mkldnn._is_mkldnn_bf16_supported`) may use
them. Elsewhere (AVX2 laptops, older servers) bf16 is emulated: about 10x slower than fp32 for a
convolution, and oneDNN has no bf16 LSTM at all. So ``auto`` is bf16 where native and fp32
elsewhere, and asking for bf16 where it would be emulated warns once and runs fp32.

CUDA: bf16 autocast where the GPU has it (`torch.cuda.is_bf16_supported`), else fp16 autocast,
which training pairs with a gradient scaler.

Only the slice encoder runs in reduced precision: the LSTM (`ScanLSTM`, `SequenceGraph`) turns
autocast off and reads fp32 features (`ichdet.models.scan_lstm.fp32_sequence`).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import torch

from ichdet.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype (None: autocast off)
# oneDNN's CPU ISA levels in order (ONEDNN_MAX_CPU_ISA values); bf16 dot products from AVX512_CORE_BF16 on
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
               "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")
ONEDNN_BF16_ISA = "AVX512_CORE_BF16"
ONEDNN_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def default_device() -> torch.device:
    """Where ichdet computes when nobody says: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class PrecisionWarning(UserWarning):
    """A requested precision is not native here; a faster one runs instead."""


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU offers and what PyTorch / oneDNN are allowed to use of it."""

    name: str  # CPU model, e.g. "AMD EPYC 7B13"
    hardware_bf16: bool  # AVX512-BF16 or AMX-BF16 units in the silicon
    amx: bool  # AMX tiles
    aten_capability: str  # "AVX512", "AVX2", "DEFAULT", ... (after ATEN_CPU_CAPABILITY)
    onednn_max_isa: str  # ONEDNN_MAX_CPU_ISA as set, "" when not set
    onednn_bf16: bool  # torch.ops.mkldnn._is_mkldnn_bf16_supported() (after ONEDNN_MAX_CPU_ISA)

    @property
    def onednn_allows_bf16(self) -> bool:
        isa = self.onednn_max_isa.upper()
        if not isa or isa in ("ALL", "DEFAULT"):
            return True
        if isa not in ONEDNN_ISAS:
            return False  # an ISA name we do not know: do not bet on bf16
        return ONEDNN_ISAS.index(isa) >= ONEDNN_ISAS.index(ONEDNN_BF16_ISA)

    @property
    def native_bf16(self) -> bool:
        """bf16 convolutions and matmuls run on bf16 units (faster than fp32), not emulated."""
        return (self.hardware_bf16 and self.aten_capability == "AVX512" and self.onednn_bf16
                and self.onednn_allows_bf16)

    def describe(self) -> str:
        """One line: CPU model, the ISA in use and the overrides, e.g.
        "AMD EPYC (AVX2; bf16 emulated; ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2)"."""
        units = "AMX" if self.amx else "AVX512-BF16"
        isa = self.aten_capability + (f" + {units}" if self.native_bf16 else "")
        bf16 = "bf16 native" if self.native_bf16 else ("bf16 emulated" if self.hardware_bf16 else "no bf16 units")
        overrides = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", *ONEDNN_ISA_ENV) if os.environ.get(k)]
        return f"{self.name or 'unknown CPU'} ({isa}; {bf16}" + (f"; {', '.join(overrides)}" if overrides else "") + ")"

    def to_dict(self) -> dict[str, object]:
        return {"cpu": self.name, "hardware_bf16": self.hardware_bf16, "amx": self.amx,
                "aten_capability": self.aten_capability, "onednn_max_isa": self.onednn_max_isa or None,
                "onednn_bf16": self.onednn_bf16, "native_bf16": self.native_bf16, "describe": self.describe()}


def _capabilities() -> dict[str, object]:
    """PyTorch's cpuinfo reading: {"avx512_bf16": bool, "amx_bf16": bool, "cpu_name": str, ...}."""
    try:
        return dict(torch._C._cpu._get_cpu_capability())
    except (AttributeError, RuntimeError):
        return {}


def _cpu_name(caps: dict[str, object]) -> str:
    name = str(caps.get("cpu_name") or "")
    if not name:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
        except OSError:
            name = ""
    return name


def cpu_features() -> CpuFeatures:
    """This CPU, as PyTorch sees it now (the ISA overrides in the environment included)."""
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = False
    caps = _capabilities()
    isa = next((os.environ[k] for k in ONEDNN_ISA_ENV if os.environ.get(k)), "")
    return CpuFeatures(name=_cpu_name(caps), hardware_bf16=bool(caps.get("avx512_bf16") or caps.get("amx_bf16")),
                       amx=bool(caps.get("amx_tile")), aten_capability=str(torch.backends.cpu.get_cpu_capability()),
                       onednn_max_isa=isa, onednn_bf16=onednn_bf16)


@dataclass(frozen=True)
class Precision:
    """The arithmetic one run uses: `dtype` "fp32" (autocast off), "bf16" or "fp16" (autocast of
    the slice encoder) on `device` ("cpu" or "cuda"); `note` says why, in a few words
    ("bf16 is not native on AMD EPYC (AVX2; ...)")."""

    device: str
    dtype: str
    requested: str
    note: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return DTYPES[self.dtype]

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
        return self.dtype == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """`torch.autocast` on this device in this dtype (a no-op context for fp32)."""
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16 (elsewhere it passes everything through)."""
        return torch.amp.GradScaler(self.device, enabled=self.needs_grad_scaler)


def _check_requested(requested: str) -> str:
    value = {True: "bf16", False: "fp32"}.get(requested, requested) if isinstance(requested, bool) else requested
    if value not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    return value


def resolve_precision(requested: str | bool = "auto", device: str | torch.device = "cpu",
                      cpu: CpuFeatures | None = None, cuda_bf16: bool | None = None, warn: bool = True) -> Precision:
    """"auto" | "fp32" | "bf16" | "fp16" (True/False: the old autocast_bf16 switch) on `device` ->
    the Precision to run. `cpu` / `cuda_bf16` describe the hardware (default: this machine's);
    a request that would run emulated gives one `PrecisionWarning` and the native choice instead."""
    want = _check_requested(requested)
    dev = torch.device(device).type
    if dev == "cuda":
        bf16 = torch.cuda.is_bf16_supported() if cuda_bf16 is None else bool(cuda_bf16)
        if want == "fp32":
            return Precision("cuda", "fp32", want, "as asked")
        if want == "fp16":
            return Precision("cuda", "fp16", want, "autocast as asked, with a gradient scaler in training")
        if bf16:
            return Precision("cuda", "bf16", want, "autocast: this GPU has bf16")
        if want == "bf16" and warn:
            warnings.warn("this GPU has no bf16 arithmetic; running fp16 autocast (with a gradient scaler in "
                          "training) instead", PrecisionWarning, stacklevel=2)
        return Precision("cuda", "fp16", want, "autocast with a gradient scaler: this GPU has no bf16")
    if dev != "cpu":
        raise InputError(f"ichdet runs on cpu or cuda, got device {dev!r}")
    if want == "fp32":
        return Precision("cpu", "fp32", want, "as asked")
    features = cpu if cpu is not None else cpu_features()
    if want == "fp16":
        raise InputError("precision fp16 is for GPUs; on the CPU use auto, fp32 or bf16")
    if features.native_bf16:
        return Precision("cpu", "bf16", want, f"autocast: bf16 is native on {features.describe()}")
    if want == "bf16" and warn:
        warnings.warn(f"bf16 is not native on this CPU ({features.describe()}): it would run emulated, about ten "
                      "times slower than fp32, so fp32 runs instead", PrecisionWarning, stacklevel=2)
    return Precision("cpu", "fp32", want, f"bf16 is not native on {features.describe()}")

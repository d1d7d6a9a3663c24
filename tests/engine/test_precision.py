"""engine.precision: which arithmetic runs where, decided from the CPU's units and the ISA overrides
(no GPU needed: the CUDA rules take the GPU's bf16 support as an argument)."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from ichdet.engine.precision import CpuFeatures, PrecisionWarning, cpu_features, resolve_precision
from ichdet.errors import InputError
from ichdet.models import create_model

AMX = CpuFeatures(name="Intel Xeon 8480", hardware_bf16=True, amx=True, aten_capability="AVX512",
                  onednn_max_isa="", onednn_bf16=True)
ZEN3 = CpuFeatures(name="AMD EPYC 7B13", hardware_bf16=False, amx=False, aten_capability="AVX2",
                   onednn_max_isa="", onednn_bf16=False)
AVX2_OVERRIDE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _features_in_subprocess(env: dict[str, str]) -> dict:
    code = "import json; from ichdet.engine.precision import cpu_features; print(json.dumps(cpu_features().to_dict()))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=120, check=True)
    import json
    return json.loads(out.stdout)


def test_native_bf16_needs_the_units_and_both_libraries_allowed_to_use_them():
    assert AMX.native_bf16 and not ZEN3.native_bf16
    assert not CpuFeatures("x", True, False, "AVX2", "", True).native_bf16  # ATEN_CPU_CAPABILITY=avx2
    assert not CpuFeatures("x", True, False, "AVX512", "AVX2", False).native_bf16  # ONEDNN_MAX_CPU_ISA=AVX2
    assert not CpuFeatures("x", True, False, "AVX512", "AVX512_CORE", True).native_bf16  # bf16 emulated by AVX-512
    assert CpuFeatures("x", True, False, "AVX512", "avx512_core_bf16", True).native_bf16
    assert CpuFeatures("x", True, True, "AVX512", "ALL", True).native_bf16
    assert not CpuFeatures("x", True, True, "AVX512", "SOMETHING_NEW", True).native_bf16  # unknown: no bet


def test_describe_names_the_cpu_the_isa_and_the_overrides(monkeypatch):
    for k, v in AVX2_OVERRIDE.items():
        monkeypatch.setenv(k, v)
    text = CpuFeatures("AMD EPYC", True, False, "AVX2", "AVX2", False).describe()
    assert text == "AMD EPYC (AVX2; bf16 emulated; ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2)"
    for k in AVX2_OVERRIDE:
        monkeypatch.delenv(k)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert AMX.describe() == "Intel Xeon 8480 (AVX512 + AMX; bf16 native)"
    assert ZEN3.describe() == "AMD EPYC 7B13 (AVX2; no bf16 units)"


def test_cpu_auto_is_bf16_only_where_native():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        assert resolve_precision("auto", "cpu", cpu=AMX).dtype == "bf16"
        assert resolve_precision("auto", "cpu", cpu=ZEN3).dtype == "fp32"
        assert resolve_precision("fp32", "cpu", cpu=AMX).dtype == "fp32"
        assert resolve_precision("bf16", "cpu", cpu=AMX).dtype == "bf16"


def test_bf16_where_emulated_warns_once_and_runs_fp32(monkeypatch):
    for k in (*AVX2_OVERRIDE, "DNNL_MAX_CPU_ISA"):  # the message names overrides in the environment; none here
        monkeypatch.delenv(k, raising=False)
    with pytest.warns(PrecisionWarning) as record:
        p = resolve_precision("bf16", "cpu", cpu=ZEN3)
    assert len(record) == 1
    assert str(record[0].message) == ("bf16 is not native on this CPU (AMD EPYC 7B13 (AVX2; no bf16 units)): it would "
                                      "run emulated, about ten times slower than fp32, so fp32 runs instead")
    assert (p.dtype, p.requested, p.autocast_dtype, p.needs_grad_scaler) == ("fp32", "bf16", None, False)
    assert not p.grad_scaler().is_enabled()


def test_the_old_autocast_switch_maps_to_a_request():
    assert resolve_precision(True, "cpu", cpu=AMX).dtype == "bf16"
    assert resolve_precision(False, "cpu", cpu=AMX).dtype == "fp32"


def test_bad_requests_are_one_line_errors():
    with pytest.raises(InputError, match=r"^precision must be one of auto, fp32, bf16, fp16, got 'fp8'$"):
        resolve_precision("fp8")
    with pytest.raises(InputError, match=r"^precision fp16 is for GPUs; on the CPU use auto, fp32 or bf16$"):
        resolve_precision("fp16", "cpu", cpu=AMX)
    with pytest.raises(InputError, match=r"^ichdet runs on cpu or cuda, got device 'meta'$"):
        resolve_precision("auto", "meta")


def test_cuda_uses_bf16_where_the_gpu_has_it_else_fp16_with_a_scaler():
    p = resolve_precision("auto", "cuda", cuda_bf16=True)
    assert (p.device, p.dtype, p.autocast_dtype, p.needs_grad_scaler) == ("cuda", "bf16", torch.bfloat16, False)
    p = resolve_precision("auto", "cuda:1", cuda_bf16=False)
    assert (p.device, p.dtype, p.autocast_dtype, p.needs_grad_scaler) == ("cuda", "fp16", torch.float16, True)
    assert resolve_precision("fp32", "cuda", cuda_bf16=True).dtype == "fp32"
    assert resolve_precision("fp16", "cuda", cuda_bf16=True).dtype == "fp16"
    with pytest.warns(PrecisionWarning, match="this GPU has no bf16 arithmetic; running fp16 autocast"):
        assert resolve_precision("bf16", "cuda", cuda_bf16=False).dtype == "fp16"


def test_autocast_context_is_the_devices_own():
    p = resolve_precision("auto", "cpu", cpu=AMX)
    with p.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with resolve_precision("fp32", "cpu").autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_this_machine_as_pytorch_sees_it_and_under_the_avx2_overrides():
    """The real reading: under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 no CPU has native bf16."""
    here = cpu_features()
    assert here.aten_capability == torch.backends.cpu.get_cpu_capability()
    assert here.name
    forced = _features_in_subprocess(AVX2_OVERRIDE)
    assert forced["aten_capability"] == "AVX2" and forced["onednn_max_isa"] == "AVX2"
    assert forced["native_bf16"] is False and forced["onednn_bf16"] is False
    assert "ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2" in forced["describe"]


def test_the_lstm_runs_in_fp32_under_autocast():
    """Under bf16 autocast the encoder gives bf16 features but the LSTM reads them in fp32: its
    output equals the LSTM run in fp32 on the same (bf16-rounded) features, and no bf16 LSTM
    primitive is ever asked for (which oneDNN lacks on CPUs without bf16 units)."""
    torch.manual_seed(0)
    model = create_model("scan_lstm", encoder_kw={"in_channels": 1, "base_width": 4, "feature_dim": 16},
                         lstm_layers=2, hidden=8).eval()
    x = torch.rand(2, 5, 1, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.slice_features(x, [5, 3])
        scan = model.forward_features(x, [5, 3])
    assert feats.dtype == torch.bfloat16 and scan.dtype == torch.float32
    with torch.no_grad():
        from torch.nn.utils.rnn import pack_padded_sequence
        _, (h, _) = model.lstm(pack_padded_sequence(feats.float(), torch.tensor([5, 3]), batch_first=True,
                                                    enforce_sorted=False))
    torch.testing.assert_close(scan, torch.cat([h[-2], h[-1]], dim=1), rtol=0, atol=1e-6)

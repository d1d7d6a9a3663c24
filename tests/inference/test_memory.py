"""Peak memory of `ichdet predict` on the real 238-slice CQ500 series with the paper-size model:
under 2 GB resident (the process's own high-water mark, measured in a fresh interpreter)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ichdet.engine.bundle import save_bundle
from ichdet.models import create_model
from ichdet.preprocess import PrepSpec

LIMIT_BYTES = 2 * 1024**3

# VmHWM is this process's own high-water mark; ru_maxrss would also count the pytest worker's
# peak, which Linux carries across fork + exec.
SCRIPT = """
import sys
from ichdet.cli import run
code = run(sys.argv[1:])
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("MAXRSS_KB", hwm.split()[1])
sys.exit(code)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc/self/status (VmHWM)")
def test_predict_on_cq500_stays_under_2_gb(cq500_dir, tmp_path):
    torch.manual_seed(0)
    model = create_model("scan_lstm", encoder_kw={"in_channels": 1, "base_width": 16, "feature_dim": 512},
                         lstm_layers=2, hidden=512).eval()
    bundle = save_bundle(tmp_path / "bundle", model=model, model_name="scan_lstm", model_kwargs=model.config(),
                         kind="scan", prep=PrepSpec(windows=("brain",), size=256, max_filter=2, z_max_filter=True),
                         context=0, operating_point={"method": "fixed", "threshold": 0.5}, metrics={},
                         config_yaml="", data_hash="test")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "predict", str(cq500_dir), "--model", str(bundle),
                           "--out", str(out), "--heatmaps", "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout.rsplit("MAXRSS_KB", 1)[1].split()[0]) * 1024
    assert peak < LIMIT_BYTES, f"peak RSS {peak / 1e9:.2f} GB"
    (scan,) = json.loads((out / "predictions.json").read_text())["scans"]
    assert scan["shape"] == [238, 512, 512] and len(scan["slice_probabilities"]) == 238
    assert (out / "heatmaps").is_dir() and len(scan["heatmaps"]["slices"]) == 3

"""Two CPU processes under torchrun (gloo) end with the weights of one process on the same
global batch: each rank trains on its half of every global batch and DDP averages gradients."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from ichdet.models import create_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _cmd(launcher: list[str], tiny: list[str], out: Path) -> list[str]:
    sets = tiny + ["model.kwargs={base_width: 2, feature_dim: 16, dropout: 0.0}", "optim.epochs=2",
                   "optim.steps_per_epoch=3", "optim.batch_size=4"]
    return [*launcher, "-m", "ichdet.cli", "train", str(CONFIGS / "3d_slice_cnn.yaml"), "--out", str(out), "--quiet",
            *sum((["--set", s] for s in sets), [])]


def test_two_process_ddp_matches_one_process(tiny, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(_cmd([sys.executable], tiny, tmp_path / "one"), env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run(_cmd(torchrun, tiny, tmp_path / "two"), env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "latest.pt", weights_only=True)
    assert [h["samples"] for h in a["state"]["history"]] == [h["samples"] for h in b["state"]["history"]] == [12, 12]
    for k, v in a["model"].items():
        assert torch.allclose(v, b["model"][k], atol=2e-5, rtol=1e-4), (k, (v - b["model"][k]).abs().max())
    torch.manual_seed(0)  # the run's initial weights (build_model seeds with cfg.seed = 0): training moved them
    init = create_model("slice_cnn", in_channels=1, base_width=2, feature_dim=16, dropout=0.0).state_dict()
    assert sum(not torch.allclose(v, init[k], atol=1e-6) for k, v in a["model"].items()) >= len(init) // 2
    # only rank 0 wrote: one metrics row per epoch, one bundle
    assert (tmp_path / "two" / "metrics.csv").read_text().count("\n") == 3
    assert (tmp_path / "two" / "bundle" / "bundle.json").is_file()

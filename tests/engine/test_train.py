"""Training end to end on a tiny synthetic cohort: every stage ends with a loadable bundle, the
stages chain, a killed run resumes to the very weights of an uninterrupted one."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ichdet.engine.bundle import load_bundle
from ichdet.cli import run as cli
from ichdet.datasets.prepared import PreparedCohort
from ichdet.datasets.splits import read_splits
from ichdet.engine import load_config, train
from ichdet.engine.loop import lr_factor, to_device
from ichdet.engine.precision import PrecisionWarning, cpu_features
from ichdet.engine.scoring import model_outputs
from ichdet.errors import InputError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_slice_stage_writes_run_folder_and_bundle(tiny, tmp_path):
    out = tmp_path / "runs" / "slice"
    bundle_dir = train(load_config(CONFIGS / "3d_slice_cnn.yaml", tiny), out, show_progress=False)
    assert bundle_dir == out / "bundle"
    for name in ("config.yaml", "splits.csv", "metrics.csv", "latest.pt", "best.pt"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(int(r["samples"]) == 12 and 0 <= float(r["data_wait_fraction"]) <= 1 for r in rows)
    # split by patient: no patient in two splits, test scans never used
    splits = read_splits(out / "splits.csv")
    by_patient: dict[str, set[str]] = {}
    for r in csv.DictReader(Path(load_config(None, tiny).data.manifest).open()):
        by_patient.setdefault(r["patient_id"], set()).add(splits[r["scan_id"]])
    assert all(len(s) == 1 for s in by_patient.values()) and "test" in splits.values()

    b = load_bundle(bundle_dir)
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    assert b.kind == "slice" and meta["model"]["name"] == "slice_cnn" and meta["prep"]["size"] == 64
    op = meta["operating_point"]
    assert op["chosen_on"] == "validation" and op["validation"]["sensitivity"] >= 0.98
    assert meta["slice_operating_point"]["level"] == "slice" and len(meta["data_hash"]) == 64
    assert meta["slice_thickness_mm"] == 5.0 == b.slice_thickness_mm  # the training scans' slice spacing
    # the bundle holds the best-by-validation weights, and they score scans as the run did
    best = torch.load(out / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(best[k], v) for k, v in b.model.state_dict().items())
    cohort = PreparedCohort(load_config(None, tiny).data.manifest, b.prep)
    p = model_outputs(b.model, "slice", cohort[cohort.scan_ids()[0]].image).slice_probability
    assert p.shape == (12,) and ((p >= 0) & (p <= 1)).all()


def test_stages_chain_into_baselines_and_lstm(tiny, tmp_path):
    runs = tmp_path / "runs"
    train(load_config(CONFIGS / "3d_slice_cnn.yaml", tiny), runs / "3d_slice_cnn", show_progress=False)
    slice_w = _weights(runs / "3d_slice_cnn" / "bundle" / "weights.pt")
    for name in ("3d_slice_max", "3d_slice_p95", "3d_feature_svm"):
        b = load_bundle(train(load_config(CONFIGS / f"{name}.yaml", tiny), runs / name, show_progress=False))
        assert b.kind in ("aggregate", "feature_svm")
        assert all(torch.equal(slice_w[k], v) for k, v in b.model.state_dict().items())
    assert load_bundle(runs / "3d_slice_p95" / "bundle").aggregate == "p95"
    assert load_bundle(runs / "3d_slice_p95" / "bundle").slice_thickness_mm == 5.0
    assert load_bundle(runs / "3d_feature_svm" / "bundle").svm.length_ == 12

    lstm = ["model.kwargs={lstm_layers: 1, hidden: 8}", "optim.batch_size=2"]
    b = load_bundle(train(load_config(CONFIGS / "3d_lstm1_frozen.yaml", tiny + lstm), runs / "3d_lstm1_frozen",
                          show_progress=False))
    assert b.kind == "scan" and b.prep.z_max_filter
    enc = {k.removeprefix("encoder."): v for k, v in b.model.state_dict().items() if k.startswith("encoder.")}
    assert all(torch.equal(slice_w[k], enc[k]) for k in slice_w), "a frozen encoder must not change"
    b2 = load_bundle(train(load_config(CONFIGS / "3d_lstm1_e2e.yaml", tiny + lstm), runs / "3d_lstm1_e2e",
                           show_progress=False))
    enc2 = {k.removeprefix("encoder."): v for k, v in b2.model.state_dict().items() if k.startswith("encoder.")}
    assert any(not torch.equal(slice_w[k], enc2[k]) for k in slice_w), "end-to-end must train the encoder"


def test_scan_model_trains_in_bf16_where_native_and_fp32_elsewhere(tiny, tmp_path, capsys):
    """Asking for bf16 on the CNN + BiLSTM: where the CPU has bf16 units the encoder trains under
    bf16 autocast with the LSTM in fp32; elsewhere one warning and an fp32 run (oneDNN has no bf16
    LSTM there, and emulated bf16 is ten times slower). Either way the run finishes."""
    lstm = ["model.kwargs={lstm_layers: 1, hidden: 8, encoder_kw: {base_width: 2, feature_dim: 16}}",
            "optim.batch_size=2", "optim.epochs=1", "precision=bf16"]
    native = cpu_features().native_bf16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = load_bundle(train(load_config(CONFIGS / "3d_e2e_nostage.yaml", tiny + lstm), tmp_path / "run",
                              show_progress=False))
    assert b.kind == "scan" and all(torch.isfinite(v).all() for v in b.model.state_dict().values())
    err = capsys.readouterr().err
    bf16_warnings = [w for w in caught if issubclass(w.category, PrecisionWarning)]
    if native:
        assert "training on cpu in bf16 (autocast: bf16 is native on" in err and not bf16_warnings
    else:
        assert "training on cpu in fp32 (bf16 is not native on" in err and len(bf16_warnings) == 1


def test_lr_factor_warms_up_then_follows_the_schedule():
    assert [lr_factor(s, 10, 0, "constant") for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [lr_factor(s, 10, 4, "constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = [lr_factor(s, 10, 2, "cosine") for s in range(10)]
    assert cos[:3] == [0.5, 1.0, 1.0] and cos[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(cos[2:], cos[3:]))  # decays monotonically after the warm-up
    assert cos[2 + 7 // 2] == pytest.approx(0.5 * (1 + np.cos(np.pi * 3 / 7)))


def test_the_schedule_sets_every_groups_learning_rate(tiny, tmp_path):
    """A cosine run with warm-up: each epoch's logged lr is the schedule's value at its last step."""
    sched = ["optim.schedule=cosine", "optim.warmup_epochs=1", "optim.epochs=3", "optim.lr=1e-3"]
    out = tmp_path / "run"
    train(load_config(CONFIGS / "3d_slice_cnn.yaml", tiny + sched), out, show_progress=False)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    steps = load_config(None, tiny).optim.steps_per_epoch
    for r in rows:  # lr logged after the epoch's last step
        last = int(r["epoch"]) * steps - 1
        assert float(r["lr"]) == pytest.approx(1e-3 * lr_factor(last, 3 * steps, steps, "cosine"), rel=1e-5)
    with pytest.raises(InputError, match=r"config optim.schedule must be one of constant, cosine, got 'step'"):
        load_config(None, ["optim.schedule=step"])
    with pytest.raises(InputError, match=r"config optim.warmup_epochs must be in \[0, optim.epochs\], got 5.0"):
        load_config(None, ["optim.epochs=2", "optim.warmup_epochs=5"])


def test_to_device_moves_every_tensor_of_a_batch():
    x, lengths, y = torch.zeros(2, 3), torch.tensor([3, 2]), torch.tensor([0, 1])
    batch = (x, lengths, y, ["a", "b"])
    moved = to_device(batch, torch.device("cpu"))
    assert moved[0] is x and moved[3] == ["a", "b"]  # a no-op on the CPU: same tensors, no copies
    meta = to_device([x, (y, 3)], torch.device("meta"))
    assert meta[0].device.type == "meta" and meta[1][0].device.type == "meta" and meta[1][1] == 3


def test_alexnet_and_alexnet_svm_stages(tiny, tmp_path):
    runs = tmp_path / "runs"
    small = tiny + ["model.weights=", "model.kwargs={num_classes: 2}", "optim.steps_per_epoch=1",
                    "optim.epochs=1", "data.size=64"]
    b = load_bundle(train(load_config(CONFIGS / "2d_alexnet.yaml", small), runs / "2d_alexnet", show_progress=False))
    assert b.model.model_name == "alexnet" and b.prep.windows == ("brain", "subdural", "bone")
    svm = load_bundle(train(load_config(CONFIGS / "2d_alexnet_svm.yaml", tiny + ["svm.max_train_samples=60"]),
                            runs / "2d_alexnet_svm", show_progress=False))
    assert svm.kind == "alexnet_svm" and svm.svm.C_ in (0.001, 0.01, 0.1, 1.0)


def test_existing_run_needs_resume_and_same_config(tiny, tmp_path):
    out = tmp_path / "run"
    train(load_config(CONFIGS / "3d_slice_cnn.yaml", tiny), out, show_progress=False)
    with pytest.raises(InputError, match="already holds a checkpoint; pass --resume"):
        train(load_config(CONFIGS / "3d_slice_cnn.yaml", tiny), out, show_progress=False)
    with pytest.raises(InputError, match="changed: optim.lr"):
        train(load_config(CONFIGS / "3d_slice_cnn.yaml", tiny + ["optim.lr=0.5"]), out, resume=True, show_progress=False)
    # a finished run resumed again changes nothing
    before = _weights(out / "bundle" / "weights.pt")
    train(load_config(CONFIGS / "3d_slice_cnn.yaml", tiny), out, resume=True, show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in _weights(out / "bundle" / "weights.pt").items())


def test_cli_train_errors_are_one_line(tiny, tmp_path, capsys):
    assert cli(["train", str(CONFIGS / "3d_slice_max.yaml"), "--out", str(tmp_path / "r"),
                *sum((["--set", s] for s in tiny), [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ichdet: error: ") and "model.init_from names no finished run" in err
    assert len(err.splitlines()) == 1
    assert cli(["train", str(CONFIGS / "3d_slice_cnn.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "no data: set data.manifest" in capsys.readouterr().err


def _train_cmd(tiny: list[str], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ichdet.cli", "train", str(CONFIGS / "3d_slice_cnn.yaml"), "--out", str(out),
            "--quiet", *sum((["--set", s] for s in tiny), []), *extra]


def test_checkpoints_at_most_every_checkpoint_seconds(tiny, tmp_path, monkeypatch):
    """With checkpoint_seconds longer than the run, latest.pt and best.pt are written once, after
    the last epoch, and the bundle holds the same best weights as a run that saved every epoch."""
    import ichdet.engine.loop as loop

    saves = []
    real = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda out, *a, **k: saves.append(a[2].epoch) or real(out, *a, **k))
    cfg = tiny + ["optim.epochs=3", "optim.steps_per_epoch=2", "model.kwargs={base_width: 4, feature_dim: 32}"]
    every = train(load_config(CONFIGS / "3d_slice_cnn.yaml", cfg + ["checkpoint_seconds=0"]), tmp_path / "every",
                  show_progress=False)
    assert saves == [1, 2, 3]
    saves.clear()
    once = train(load_config(CONFIGS / "3d_slice_cnn.yaml", cfg + ["checkpoint_seconds=3600"]), tmp_path / "once",
                 show_progress=False)
    assert saves == [3]
    a, b = (torch.load(d / "best.pt", weights_only=True) for d in (tmp_path / "every", tmp_path / "once"))
    assert a["epoch"] == b["epoch"] and all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    wa, wb = _weights(every / "weights.pt"), _weights(once / "weights.pt")
    assert all(torch.equal(v, wb[k]) for k, v in wa.items())


def test_killed_run_resumes_to_identical_weights(tiny, tmp_path):
    """Kill a real training process after its first epoch checkpoint, resume it, and compare
    with an uninterrupted run of the same config and seed (a warmed-up cosine schedule: the
    learning rate follows from the step, not from state carried over)."""
    cfg = tiny + ["optim.epochs=4", "optim.steps_per_epoch=6", "model.kwargs={base_width: 4, feature_dim: 32}",
                  "optim.schedule=cosine", "optim.warmup_epochs=1", "checkpoint_seconds=0"]  # a checkpoint every epoch
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    subprocess.run(_train_cmd(cfg, full), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(cfg, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "latest.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    saved_epoch = torch.load(killed / "latest.pt", weights_only=True)["state"]["epoch"]
    assert 1 <= saved_epoch < 4
    resumed = subprocess.run(_train_cmd(cfg, killed, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {saved_epoch}" in resumed.stderr

    a = torch.load(full / "latest.pt", weights_only=True)
    b = torch.load(killed / "latest.pt", weights_only=True)
    assert a["state"]["epoch"] == b["state"]["epoch"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["state"]["history"][-1]["train_loss"] == b["state"]["history"][-1]["train_loss"]
    wa, wb = _weights(full / "bundle" / "weights.pt"), _weights(killed / "bundle" / "weights.pt")
    assert all(torch.equal(v, wb[k]) for k, v in wa.items())
    assert np.array_equal(*(np.loadtxt(d / "metrics.csv", delimiter=",", skiprows=1, usecols=(2, 3))
                            for d in (full, killed)))


def test_multi_window_and_neighbour_context(tiny, tmp_path):
    """Three windows x (2 * 1 + 1) neighbouring slices = 9 input channels, recorded in the bundle."""
    cfg = load_config(CONFIGS / "3d_slice_cnn.yaml",
                      tiny + ["data.windows=[brain, subdural, bone]", "data.context=1", "optim.epochs=1"])
    b = load_bundle(train(cfg, tmp_path / "ctx", show_progress=False))
    assert b.model.in_channels == 9 and b.context == 1 and b.prep.windows == ("brain", "subdural", "bone")
    cohort = PreparedCohort(cfg.data.manifest, b.prep)
    assert model_outputs(b.model, "slice", cohort[cohort.scan_ids()[0]].image, context=1).slice_probability.shape == (12,)
    # a scan model started from it must see the same windows and context
    bad = load_config(CONFIGS / "3d_lstm1_frozen.yaml", tiny + ["model.init_from=ctx"])
    with pytest.raises(InputError, match="data config differs from the init_from model's"):
        train(bad, tmp_path / "lstm", show_progress=False)

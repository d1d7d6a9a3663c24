"""The scan stage's auxiliary slice loss (optim.slice_loss_weight): scan loss + w x the encoder's
own slice-head loss on the batch's labelled real slices, only while the encoder trains; weight 0
is the loss (and the training) without it."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ichdet.engine import load_config, train
from ichdet.engine.bundle import load_bundle
from ichdet.engine.distributed import DistInfo
from ichdet.engine.losses import rsna_weighted_bce, slice_head_loss
from ichdet.engine.run import open_run
from ichdet.engine.stages import build_model
from ichdet.engine.tasks import ScanTask, SliceTerm, loss_and_hits, training_loss
from ichdet.errors import InputError
from ichdet.metrics import RSNA_WEIGHTS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# the CNN + 1 BiLSTM end-to-end from random weights: a scan stage whose encoder trains, no chain needed
NOSTAGE = ["model.kwargs={lstm_layers: 1, hidden: 8, encoder_kw: {base_width: 2, feature_dim: 16}}",
           "optim.batch_size=2"]


def _task(tiny, out: Path, extra: list[str]) -> tuple[ScanTask, torch.nn.Module]:
    run = open_run(load_config(CONFIGS / "3d_e2e_nostage.yaml", tiny + NOSTAGE + extra), out, False, DistInfo(),
                   show_progress=False)
    task = ScanTask(run)
    return task, build_model(run, task.label_prevalence())


def _padded_batch(task: ScanTask) -> tuple:
    """A positive and a negative training scan (6 slices each after the 2x2x2 filter); the positive
    cut to its first 4 slices (one bleeding) with labels written on the padding, two of the
    negative's slices made unlabelled."""
    labels = task.dataset.labels()
    pos = next(i for i in np.flatnonzero(labels == 1)
               if (task.cohort[task.dataset.scan_ids[i]].slice_labels[:4] == 1).any())
    neg = int(np.flatnonzero(labels == 0)[0])
    x, lengths, y, ids, rows = task.collate([task.dataset[int(pos)], task.dataset[neg]])
    assert x.shape[1] == 6 and rows.shape == (2, 6, 6) and lengths.tolist() == [6, 6]
    lengths[0] = 4
    x[0, 4:] = 0
    rows[0, 4:] = 1.0  # on padding: must not count
    rows[1, 2:4] = -1.0  # unlabelled real slices: must not count
    return x, lengths, y, ids, rows


def test_loss_is_scan_cross_entropy_plus_weighted_slice_cross_entropy_by_hand(tiny, tmp_path):
    task, model = _task(tiny, tmp_path / "r", ["optim.slice_loss_weight=0.5", "data.augment=false"])
    assert task.slice_weight == 0.5 and task.dataset.slice_targets
    x, lengths, y, ids, rows = batch = _padded_batch(task)
    model.eval()  # no dropout: the forward passes below are comparable
    logits, y_out, term = task.forward(model, batch)
    assert isinstance(term, SliceTerm) and not term.multilabel and term.weight == 0.5
    assert term.logits.shape == (4 + 6, 2) and term.targets.shape == (10, 6)
    loss, hits, part = training_loss(logits, y_out, task.loss, term)

    # by hand: the scan loss, and the slice head's cross-entropy on real slices with a label only
    with torch.no_grad():
        scan = model(x, lengths)
        per_slice = model.slice_logits(x, lengths)  # (2, 6, 2), the head predict reads
    keep = [(b, z) for b in range(2) for z in range(int(lengths[b])) if rows[b, z, 5] >= 0]
    assert len(keep) == 4 + 4
    sl = torch.stack([per_slice[b, z] for b, z in keep])
    target = torch.tensor([int(rows[b, z, 5]) for b, z in keep])
    assert set(target.tolist()) == {0, 1}
    want_slice = F.cross_entropy(sl, target)
    want = F.cross_entropy(scan, y) + 0.5 * want_slice
    assert part.item() == pytest.approx(float(want_slice), rel=1e-5)
    assert loss.item() == pytest.approx(float(want), rel=1e-5)
    assert part.item() > 0.1 and loss.item() > float(F.cross_entropy(scan, y)) + 0.05
    assert hits == loss_and_hits(logits, y_out, task.loss)[1]

    # padded slices do not count whatever their rows say; an unlabelled slice would (it is excluded)
    relabelled = rows.clone()
    relabelled[0, 4:, 5] = 0.0
    _, _, term2 = task.forward(model, (x, lengths, y, ids, relabelled))
    assert term2.value().item() == pytest.approx(part.item(), rel=1e-6)
    labelled = rows.clone()
    labelled[1, 2:4, 5] = 1.0
    _, _, term3 = task.forward(model, (x, lengths, y, ids, labelled))
    assert term3.value().item() != pytest.approx(part.item(), rel=1e-3)


def test_gradients_of_the_slice_loss_reach_the_slice_head_through_one_encoder_pass(tiny, tmp_path):
    task, model = _task(tiny, tmp_path / "r", ["optim.slice_loss_weight=0.5", "data.augment=false"])
    model.train()
    logits, y, term = task.forward(model, _padded_batch(task))
    training_loss(logits, y, task.loss, term)[0].backward()
    head = model.encoder.head.linear.weight.grad
    assert head is not None and float(head.abs().sum()) > 0
    # without the slice term the scan loss never reaches the encoder's head
    model.zero_grad(set_to_none=True)
    loss_and_hits(*task.forward(model, _padded_batch(task))[:2], task.loss)[0].backward()
    assert model.encoder.head.linear.weight.grad is None


def test_subtype_slice_head_takes_the_slice_stages_multilabel_loss(tiny, tmp_path):
    six = ["model.kwargs={lstm_layers: 1, hidden: 8, encoder_kw: {base_width: 2, feature_dim: 16, num_classes: 6, "
           "multilabel: true}}", "model.labels=subtypes", "optim.slice_loss_weight=0.5", "data.augment=false"]
    task, model = _task(tiny, tmp_path / "r", six)
    assert task.loss == "rsna" and task.slice_loss == "rsna"
    x, lengths, *_ = batch = _padded_batch(task)
    model.eval()
    _, _, term = task.forward(model, batch)
    assert term.multilabel and term.logits.shape == (10, 6)
    with torch.no_grad():
        per_slice = model.slice_logits(x, lengths)
    rows = batch[4]
    real = [(b, z) for b in range(2) for z in range(int(lengths[b]))]
    want = rsna_weighted_bce(torch.stack([per_slice[b, z] for b, z in real]),
                             torch.stack([rows[b, z] for b, z in real]), RSNA_WEIGHTS)
    assert term.value().item() == pytest.approx(float(want), rel=1e-5) and float(want) > 0
    # the targets are the slices' subtypes then their label, as the slice stage trains on
    scan = task.cohort[batch[3][0]]
    np.testing.assert_array_equal(rows[0, :4, :5].numpy(), scan.slice_subtypes[:4])
    np.testing.assert_array_equal(rows[0, :4, 5].numpy(), scan.slice_labels[:4])
    assert (rows[0, :4, :5] == 1).any()


def test_slice_head_loss_skips_unknown_targets():
    logits = torch.tensor([[0.5, -0.5], [2.0, 1.0], [0.0, 3.0]], requires_grad=True)
    targets = torch.tensor([[0.0] * 5 + [1.0], [0.0] * 5 + [-1.0], [0.0] * 5 + [0.0]])
    want = F.cross_entropy(logits[[0, 2]], torch.tensor([1, 0]))
    assert slice_head_loss(logits, targets).item() == pytest.approx(want.item(), rel=1e-6)
    none = slice_head_loss(logits, torch.full((3, 6), -1.0))
    none.backward()
    assert none.item() == 0.0 and float(logits.grad.abs().sum()) == 0.0
    with pytest.raises(InputError, match=r"^slice_head_loss needs logits \(N, K\) and targets \(N, 6\)"):
        slice_head_loss(logits, targets[:2])


def test_frozen_encoder_or_no_slice_labels_get_no_slice_loss(tiny, tmp_path, capsys):
    task, model = _task(tiny, tmp_path / "f", ["optim.slice_loss_weight=0.5", "model.freeze_encoder=true"])
    assert task.slice_weight == 0 and not task.dataset.slice_targets and len(task.dataset[0]) == 3
    out = task.forward(model, task.collate([task.dataset[0], task.dataset[1]]))
    assert len(out) == 2  # (logits, y): no slice term
    assert "optim.slice_loss_weight 0.5 not used: the encoder is frozen" in capsys.readouterr().err
    task, _ = _task(tiny, tmp_path / "n", ["optim.slice_loss_weight=0.5", "data.slice_labels="])
    assert task.slice_weight == 0 and not task.dataset.slice_targets
    assert "optim.slice_loss_weight 0.5 not used: no positive training scan has slice labels" in capsys.readouterr().err
    # the shipped stage-2 configs leave it at 0, the stage-3 (end-to-end) ones set it
    for name in ("3d_lstm1_frozen", "3d_lstm2_frozen_subtypes", "quick/3d_lstm2_frozen", "demo/quick/3d_lstm1_frozen"):
        assert load_config(name).optim.slice_loss_weight == 0.0
    for name in ("3d_lstm1_e2e", "3d_lstm2_e2e", "3d_lstm2_e2e_subtypes", "3d_e2e_nostage", "quick/3d_lstm2_e2e",
                 "quick/3d_e2e_nostage", "demo/3d_lstm2_e2e_subtypes", "demo/quick/3d_lstm1_e2e"):
        cfg = load_config(name)
        assert cfg.optim.slice_loss_weight == 0.5 and not cfg.model.freeze_encoder
    with pytest.raises(InputError, match="^config optim.slice_loss_weight must be a finite number >= 0, got -0.1$"):
        load_config("3d_lstm2_e2e", ["optim.slice_loss_weight=-0.1"])


def test_weight_zero_is_exactly_the_loss_and_training_without_it(tiny, tmp_path, monkeypatch):
    task, model = _task(tiny, tmp_path / "r", ["optim.slice_loss_weight=0"])
    assert task.slice_weight == 0 and not task.dataset.slice_targets
    batch = task.collate([task.dataset[0], task.dataset[1]])
    assert len(batch) == 4
    model.eval()
    out = task.forward(model, batch)
    assert len(out) == 2
    loss, hits, part = training_loss(*out, task.loss)
    want, want_hits = loss_and_hits(*out, task.loss)
    assert part is None and torch.equal(loss, want) and hits == want_hits

    # a run at weight 0 trains to the very weights of the code before the slice loss: the scan
    # forward and loss_and_hits alone
    cfg = tiny + NOSTAGE + ["optim.slice_loss_weight=0", "optim.epochs=1"]
    new = load_bundle(train(load_config(CONFIGS / "3d_e2e_nostage.yaml", cfg), tmp_path / "new", show_progress=False))

    def old_forward(self, model, batch):
        x, lengths, y, _ = batch
        return model(x, lengths), y

    import ichdet.engine.loop as loop
    monkeypatch.setattr(ScanTask, "forward", old_forward)
    monkeypatch.setattr(loop, "training_loss", lambda logits, y, loss: (*loss_and_hits(logits, y, loss), None))
    old = load_bundle(train(load_config(CONFIGS / "3d_e2e_nostage.yaml", cfg), tmp_path / "old", show_progress=False))
    assert all(torch.equal(v, old.model.state_dict()[k]) for k, v in new.model.state_dict().items())
    rows = list(csv.DictReader((tmp_path / "new" / "metrics.csv").open()))
    assert rows[0]["train_slice_loss"] == "" and 0 <= float(rows[0]["val_slice_auc"]) <= 1


def test_end_to_end_with_the_slice_loss_keeps_the_slice_head_trained(tiny, tmp_path):
    """A short stage 3 from random weights: with the slice loss the encoder's head trains (its
    weights move, the slice loss is logged and falls, its validation slice AUC is no worse than
    without); without it the head keeps its initial weights."""
    cfg = tiny + NOSTAGE + ["optim.epochs=3", "optim.steps_per_epoch=6", "data.augment=false"]
    runs = {}
    for w in (0.0, 1.0):
        out = tmp_path / f"w{w:g}"
        b = load_bundle(train(load_config(CONFIGS / "3d_e2e_nostage.yaml", cfg + [f"optim.slice_loss_weight={w}"]),
                              out, show_progress=False))
        runs[w] = (b.model.encoder.head.linear.weight.detach().clone(),
                   list(csv.DictReader((out / "metrics.csv").open())))
    initial = _task(tiny, tmp_path / "start", [])[1].encoder.head.linear.weight  # build_model seeds itself
    assert torch.equal(runs[0.0][0], initial), "the scan loss alone never trains the slice head"
    assert not torch.equal(runs[1.0][0], initial)
    with_rows, without_rows = runs[1.0][1], runs[0.0][1]
    losses = [float(r["train_slice_loss"]) for r in with_rows]
    assert all(math.isfinite(v) and v > 0 for v in losses) and losses[-1] < losses[0]
    assert all(r["train_slice_loss"] == "" for r in without_rows)
    auc_with, auc_without = float(with_rows[-1]["val_slice_auc"]), float(without_rows[-1]["val_slice_auc"])
    assert auc_with >= auc_without, (auc_with, auc_without)


def test_two_process_ddp_trains_the_slice_head_as_one_process(tiny, tmp_path):
    """DistributedDataParallel wraps forward: forward(..., with_slices=True) gets the slice head's
    gradients averaged too (every scan has 6 labelled slices here, so the two ranks' mean slice
    losses average to the one process's)."""
    import os
    import subprocess
    import sys

    sets = tiny + ["model.kwargs={lstm_layers: 1, hidden: 8, encoder_kw: {base_width: 2, feature_dim: 16, "
                   "dropout: 0.0}}", "optim.batch_size=2", "data.augment=false", "optim.slice_loss_weight=0.5"]

    def cmd(launcher: list[str], out: Path) -> list[str]:
        return [*launcher, "-m", "ichdet.cli", "train", str(CONFIGS / "3d_e2e_nostage.yaml"), "--out", str(out),
                "--quiet", *sum((["--set", s] for s in sets), [])]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(cmd([sys.executable], tmp_path / "one"), env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run(cmd(torchrun, tmp_path / "two"), env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "latest.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "latest.pt", weights_only=True)["model"]
    for k, v in a.items():
        assert torch.allclose(v, b[k], atol=2e-5, rtol=1e-4), (k, (v - b[k]).abs().max())
    initial = _task(tiny, tmp_path / "start", [])[1].encoder.head.linear.weight
    assert not torch.allclose(b["encoder.head.linear.weight"], initial, atol=1e-6)
    rows = list(csv.DictReader((tmp_path / "two" / "metrics.csv").open()))
    assert len(rows) == 2 and all(float(r["train_slice_loss"]) > 0 for r in rows)

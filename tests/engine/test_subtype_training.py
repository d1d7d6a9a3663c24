"""Subtype (multi-label) training: targets, the loss, the config switch, and the subtype stages
chaining on a tiny synthetic cohort into bundles that score the five subtypes and "any"."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from ichdet.engine.bundle import load_bundle
from ichdet.datasets.manifest import SUBTYPES
from ichdet.datasets.prepared import PreparedCohort
from ichdet.datasets.scans import ScanDataset, collate_scans
from ichdet.datasets.slices import SliceDataset, SliceIndex
from ichdet.engine import load_config, train
from ichdet.engine.scoring import model_outputs, score_scans
from ichdet.models.heads import BINARY, MULTILABEL, head_of
from ichdet.models.kinds import get_kind
from ichdet.engine.tasks import loss_and_hits
from ichdet.errors import InputError
from ichdet.metrics import SUBTYPE_LABELS
from ichdet.models import create_model, pretrained_available

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_multilabel_models_round_trip_and_read_any_by_sigmoid():
    for name, kw in (("slice_cnn", {"base_width": 2, "feature_dim": 8}), ("alexnet", {"in_channels": 1}),
                     ("scan_lstm", {"encoder_kw": {"base_width": 2, "feature_dim": 8}, "hidden": 4})):
        m = create_model(name, num_classes=6, multilabel=True, **kw)
        again = create_model(m.model_name, **m.config())
        assert again.multilabel and again.num_classes == 6 and get_kind("slice").labels(again) == SUBTYPE_LABELS
        assert head_of(again) is MULTILABEL and head_of(create_model(name, **kw)) is BINARY
        assert not create_model(name, **kw).multilabel  # binary stays the default
    logits = torch.tensor([[0.0, 1.0, -2.0, 0.5, 3.0, 1.5]])
    assert float(MULTILABEL.probability(logits)[0]) == pytest.approx(1 / (1 + np.exp(-1.5)))
    assert float(BINARY.probability(logits[:, :2])[0]) == pytest.approx(float(torch.softmax(logits[0, :2], 0)[1]))
    np.testing.assert_allclose(MULTILABEL.probabilities(logits)[0].numpy(), 1 / (1 + np.exp(-logits[0].numpy())), rtol=1e-6)
    assert BINARY.probabilities(logits[:, :2]).shape == (1, 1)  # "any" only, as the last (only) column
    m = create_model("slice_cnn", base_width=2, num_classes=6, multilabel=True)
    assert get_kind("alexnet_svm").labels(m) == ("any",)  # SVM heads are binary


def test_loss_and_hits_weights_any_twice_and_skips_unknowns():
    logits = torch.tensor([[2.0, -1.0, 0.0, 1.0, -3.0, 1.0], [0.5, 0.5, -0.5, -1.0, 2.0, -2.0]])
    y = torch.tensor([[1.0, 0.0, -1.0, 1.0, 0.0, 1.0], [-1.0, -1.0, -1.0, -1.0, -1.0, 1.0]])
    bce = F.binary_cross_entropy_with_logits(logits, y.clamp(min=0), reduction="none")
    w = torch.tensor([1.0, 1, 1, 1, 1, 2])
    known = (y >= 0).float()
    want = ((bce * known * w).sum(1) / (known * w).sum(1)).mean()
    loss, hits = loss_and_hits(logits, y, "rsna")
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    assert hits == 1  # case 0: any logit 1 > 0 and label 1; case 1: -2 < 0 but label 1
    flat, _ = loss_and_hits(logits, y, "bce")
    assert float(flat) == pytest.approx(float(((bce * known).sum(1) / known.sum(1)).mean()), rel=1e-6)
    ce, ce_hits = loss_and_hits(torch.tensor([[0.0, 2.0], [1.0, 0.0]]), torch.tensor([1, 1]))
    assert ce_hits == 1 and float(ce) == pytest.approx(float(F.cross_entropy(torch.tensor([[0.0, 2.0], [1.0, 0.0]]),
                                                                             torch.tensor([1, 1]))))


def test_config_switch_is_validated(tiny):
    cfg = load_config(CONFIGS / "3d_slice_cnn_subtypes.yaml", tiny)
    assert cfg.model.labels == "subtypes" and cfg.optim.resolved_loss(cfg.model.labels) == "rsna"
    assert load_config(CONFIGS / "3d_slice_cnn.yaml", tiny).optim.resolved_loss("binary") == "cross_entropy"
    with pytest.raises(InputError, match=r"^config model.labels must be one of binary, subtypes, got 'types'$"):
        load_config(CONFIGS / "3d_slice_cnn.yaml", tiny + ["model.labels=types"])
    with pytest.raises(InputError, match=r"^config optim.loss rsna does not fit model.labels binary"):
        load_config(CONFIGS / "3d_slice_cnn.yaml", tiny + ["optim.loss=rsna"])
    with pytest.raises(InputError, match=r"^config optim.loss cross_entropy does not fit model.labels subtypes"):
        load_config(CONFIGS / "3d_slice_cnn_subtypes.yaml", tiny + ["optim.loss=cross_entropy"])
    with pytest.raises(InputError, match="^config stage svm fits binary SVM heads"):
        load_config(CONFIGS / "3d_feature_svm.yaml", tiny + ["model.labels=subtypes"])


def test_datasets_yield_subtype_targets(train_manifest):
    cohort = PreparedCohort(train_manifest, load_config(None, ["data.size=64"]).data.prep_spec())
    index = SliceIndex.build(cohort)
    ds = SliceDataset(cohort, index, targets="subtypes")
    for i in (0, index.n_pos - 1, index.n_pos, len(index) - 1):
        x, y = ds[i]
        sid, z, label = index.entries[i]
        assert y.dtype == torch.float32 and y.shape == (6,)
        np.testing.assert_array_equal(y[:5].numpy(), cohort[sid].slice_subtypes[z])
        assert int(y[5]) == label and int(y[:5].max()) == label  # a slice bleeds exactly when a subtype does
        assert torch.equal(x, SliceDataset(cohort, index)[i][0])
    ids = cohort.scan_ids()
    targets = cohort.label_targets(ids)
    rows = {r["scan_id"]: r for r in csv.DictReader(open(train_manifest))}
    for i, sid in enumerate(ids):
        assert targets[i, 5] == int(rows[sid]["label"])
        assert targets[i, :5].tolist() == [int(rows[sid][s]) for s in SUBTYPES]
    scans = ScanDataset(cohort, ids[:3], targets="subtypes")
    x, lengths, y, _ = collate_scans([scans[i] for i in range(3)])
    assert y.shape == (3, 6) and torch.equal(y, torch.tensor(targets[:3], dtype=torch.float32))
    with pytest.raises(InputError, match="^targets must be one of binary, subtypes, got 'multi'$"):
        SliceDataset(cohort, index, targets="multi")


def test_label_targets_unknown_subtypes_of_positive_scans(tmp_path):
    (tmp_path / "m.csv").write_text("scan_id,patient_id,path,label,subdural\n"
                                    "a,p1,a.png,1,1\nb,p2,b.png,1,\nc,p3,c.png,0,\n")
    cohort = PreparedCohort(tmp_path / "m.csv", load_config(None, []).data.prep_spec(), slice_labels_path=None)
    t = cohort.label_targets(["a", "b", "c"])
    assert t.tolist() == [[-1, -1, -1, -1, 1, 1], [-1, -1, -1, -1, -1, 1], [0, 0, 0, 0, 0, 0]]


def test_subtype_stages_chain_into_bundles_with_labels(tiny, tmp_path):
    runs = tmp_path / "runs"
    b = load_bundle(train(load_config(CONFIGS / "3d_slice_cnn_subtypes.yaml", tiny), runs / "3d_slice_cnn_subtypes",
                          show_progress=False))
    assert b.labels == SUBTYPE_LABELS and b.has_subtypes and b.model.multilabel and b.model.num_classes == 6
    rows = list(csv.DictReader((runs / "3d_slice_cnn_subtypes" / "metrics.csv").open()))
    assert all(0 <= float(r["val_subtype_auc"]) <= 1 and float(r["val_loss"]) > 0 for r in rows)
    meta = json.loads((b.path / "bundle.json").read_text())
    assert meta["labels"] == list(SUBTYPE_LABELS)
    val = meta["metrics"]["validation_subtypes"]
    assert val["any"]["auc"] == pytest.approx(meta["operating_point"]["validation"]["auc"], abs=1e-12)

    agg = load_bundle(train(load_config(CONFIGS / "3d_slice_max_subtypes.yaml", tiny), runs / "3d_slice_max_subtypes",
                            show_progress=False))
    assert agg.kind == "aggregate" and agg.labels == SUBTYPE_LABELS
    cohort = PreparedCohort(load_config(None, tiny).data.manifest, agg.prep)
    ids = cohort.scan_ids()[:6]
    scores, labels = score_scans(agg.kind, agg.model, cohort, ids)
    np.testing.assert_array_equal(labels[:, -1], scores)  # "any" is the scan score
    out = model_outputs(agg.model, agg.kind, cohort[ids[0]].image)
    per_slice = out.slice_labels
    np.testing.assert_allclose(labels[0], per_slice.max(axis=0))
    np.testing.assert_allclose(get_kind("aggregate").score(out, aggregate="p95").label_probs,
                               np.percentile(per_slice, 95, axis=0))
    # the validation AUCs of the bundle are scikit-learn's on the validation scans
    splits = agg.training_splits()
    val_ids = [s for s in cohort.scan_ids() if splits[s] == "val"]
    _, val_labels = score_scans(agg.kind, agg.model, cohort, val_ids)
    targets = cohort.label_targets(val_ids)
    for j, name in enumerate(SUBTYPE_LABELS):
        got = agg.meta["metrics"]["validation_subtypes"][name]
        known = targets[:, j] >= 0
        if got is not None:
            assert got["auc"] == pytest.approx(roc_auc_score(targets[known, j], val_labels[known, j]), abs=1e-12)

    lstm = ["model.kwargs={lstm_layers: 1, hidden: 8}", "optim.batch_size=2"]
    scan = load_bundle(train(load_config(CONFIGS / "3d_lstm2_frozen_subtypes.yaml", tiny + lstm),
                             runs / "3d_lstm2_frozen_subtypes", show_progress=False))
    assert scan.kind == "scan" and scan.labels == SUBTYPE_LABELS and scan.model.encoder.multilabel
    cohort = PreparedCohort(load_config(None, tiny).data.manifest, scan.prep)
    s, lab = score_scans("scan", scan.model, cohort, ids)
    np.testing.assert_allclose(lab[:, -1], s, atol=1e-12)
    assert lab.shape == (6, 6) and ((lab > 0) & (lab < 1)).all()

    with pytest.raises(InputError, match="model.init_from holds a slice model with subtypes labels, but this config "
                                         "says model.labels binary"):
        train(load_config(CONFIGS / "3d_slice_max.yaml", tiny + ["model.init_from=3d_slice_cnn_subtypes"]),
              runs / "wrong", show_progress=False)
    with pytest.raises(InputError, match="model.init_from holds a scan_lstm with subtypes labels, but this config "
                                         "trains model.labels binary"):
        train(load_config(CONFIGS / "3d_lstm2_e2e.yaml", tiny + lstm + ["model.init_from=3d_lstm2_frozen_subtypes"]),
              runs / "wrong2", show_progress=False)


def test_a_fresh_subtype_head_starts_at_the_balanced_prior():
    from ichdet.engine.stages import init_prior_bias
    from ichdet.engine.tasks import balanced_prevalence

    positives = np.array([[1, 0, -1, 0, 0, 1], [0, 0, 1, 1, 0, 1], [0, 0, 0, 1, -1, 1], [1, 0, 0, 0, 0, 1]])
    prior = balanced_prevalence(positives)
    # half the batch is positive; among positives epidural 2/4, intraventricular 1/3 (one unknown) ...
    np.testing.assert_allclose(prior, [0.25, 0.0, 0.5 / 3, 0.25, 0.0, 0.5])
    assert balanced_prevalence(np.zeros((0, 6))) is None
    for m in (create_model("slice_cnn", base_width=2, num_classes=6, multilabel=True),
              create_model("alexnet", in_channels=1, num_classes=6, multilabel=True),
              create_model("scan_lstm", encoder_kw={"base_width": 2}, hidden=4, num_classes=6, multilabel=True)):
        init_prior_bias(m, prior)
        bias = m.get_submodule(m.last_layer).bias
        np.testing.assert_allclose(torch.sigmoid(bias).detach().numpy(), np.clip(prior, 1e-3, 1 - 1e-3), rtol=1e-5)


def test_subtype_stages_build_their_head_at_the_training_prior(tiny, tmp_path):
    from ichdet.engine.distributed import DistInfo
    from ichdet.engine.run import open_run
    from ichdet.engine.stages import build_model
    from ichdet.engine.tasks import SliceTask

    run = open_run(load_config(CONFIGS / "3d_slice_cnn_subtypes.yaml", tiny), tmp_path / "r", False, DistInfo(),
                   show_progress=False)
    task = SliceTask(run)
    prior = task.label_prevalence()
    pos = [task.dataset[i][1].numpy() for i in range(task.train_index.n_pos)]
    want = 0.5 * np.array([(np.array(pos)[:, j] == 1).sum() / (np.array(pos)[:, j] >= 0).sum() for j in range(6)])
    np.testing.assert_allclose(prior, want)
    assert prior[-1] == 0.5 and (prior[:5] > 0).any()
    bias = build_model(run, prior).head.linear.bias.detach().numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-bias)), np.clip(prior, 1e-3, 1 - 1e-3), rtol=1e-5)
    binary = open_run(load_config(CONFIGS / "3d_slice_cnn.yaml", tiny), tmp_path / "b", False, DistInfo(),
                      show_progress=False)
    assert SliceTask(binary).label_prevalence() is None


def test_alexnet_trains_a_subtype_head(tiny, tmp_path):
    small = tiny + ["model.weights=", "model.kwargs={num_classes: 2}", "optim.steps_per_epoch=1", "optim.epochs=1"]
    b = load_bundle(train(load_config(CONFIGS / "2d_alexnet_subtypes.yaml", small), tmp_path / "a", show_progress=False))
    assert b.model.model_name == "alexnet" and b.model.multilabel and b.labels == SUBTYPE_LABELS
    assert b.model.num_classes == 6  # model.labels wins over a num_classes left in model.kwargs
    cohort = PreparedCohort(load_config(None, tiny).data.manifest, b.prep)
    ids = cohort.scan_ids()[:2]
    scores, labels = score_scans(b.kind, b.model, cohort, ids)
    assert labels.shape == (2, 6)
    np.testing.assert_array_equal(labels[:, -1], scores)


@pytest.mark.skipif(not pretrained_available(), reason="the pretrained extra (ichdet[pretrained]) is not installed")
def test_the_pretrained_encoder_chain_trains_subtype_heads(tiny, tmp_path):
    """3d_slice_effnet_subtypes -> 3d_effnet_lstm2_frozen_subtypes -> 3d_effnet_lstm2_e2e_subtypes: the
    ImageNet EfficientNet-Lite0 as the encoder of a subtype scan model, through the three stages."""
    runs = tmp_path / "runs"
    small = tiny + ["model.kwargs={}", "optim.epochs=1", "optim.steps_per_epoch=2"]
    enc = load_bundle(train(load_config(CONFIGS / "3d_slice_effnet_subtypes.yaml", small),
                            runs / "3d_slice_effnet_subtypes", show_progress=False))
    assert (enc.model.model_name, enc.model.multilabel, enc.model.num_classes) == ("efficientnet_lite0", True, 6)
    assert enc.prep.windows == ("brain", "subdural", "bone") and enc.model.normalize  # ImageNet's input scaling
    lstm = small + ["model.kwargs={lstm_layers: 2, hidden: 8}", "optim.batch_size=2"]
    for name in ("3d_effnet_lstm2_frozen_subtypes", "3d_effnet_lstm2_e2e_subtypes"):
        scan = load_bundle(train(load_config(CONFIGS / f"{name}.yaml", lstm), runs / name, show_progress=False))
    assert scan.kind == "scan" and scan.labels == SUBTYPE_LABELS
    assert scan.model.encoder.model_name == "efficientnet_lite0" and scan.model.encoder.multilabel
    rows = list(csv.DictReader((runs / "3d_effnet_lstm2_e2e_subtypes" / "metrics.csv").open()))
    assert all(float(r["train_slice_loss"]) > 0 for r in rows)  # the encoder's subtype head kept training
    cohort = PreparedCohort(load_config(None, tiny).data.manifest, scan.prep)
    ids = cohort.scan_ids()[:3]
    s, lab = score_scans("scan", scan.model, cohort, ids)
    assert lab.shape == (3, 6) and ((lab > 0) & (lab < 1)).all()
    np.testing.assert_allclose(lab[:, -1], s, atol=1e-12)


def test_a_binary_slice_model_starts_a_subtype_one_with_a_new_head():
    """The demo's subtype slice CNN starts from its binary one: every weight but the last layer."""
    from ichdet.engine.stages import load_encoder

    torch.manual_seed(0)
    binary = create_model("slice_cnn", base_width=2, feature_dim=16)
    sub = create_model("slice_cnn", base_width=2, feature_dim=16, num_classes=6, multilabel=True)
    head_before = {k: v.clone() for k, v in sub.state_dict().items() if k.startswith("head.linear.")}
    load_encoder(sub, binary)
    for k, v in sub.state_dict().items():
        if k.startswith("head.linear."):
            assert torch.equal(v, head_before[k]) and v.shape[0] == 6
        else:
            assert torch.equal(v, binary.state_dict()[k]), k
    with pytest.raises(InputError, match=r"^model.init_from's network does not match this one outside its last "
                                         r"layer: fc.fc1.weight, features.unit1.conv1.bias, features.unit1.conv1.weight, "
                                         r"features.unit1.conv2.bias$"):
        load_encoder(sub, create_model("slice_cnn", base_width=4, feature_dim=16))

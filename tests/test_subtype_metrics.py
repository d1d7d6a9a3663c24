"""The RSNA 2019 weighted multi-label log loss and per-subtype AUCs, against scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from ichdet.engine.losses import rsna_weighted_bce
from ichdet.errors import InputError
from ichdet.metrics import RSNA_WEIGHTS, SUBTYPE_LABELS, rsna_log_loss, subtype_aucs


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 6)) < 0.3).astype(int)
    y[:, 5] = y[:, :5].max(axis=1)  # "any" is the union of the subtypes
    p = np.clip(0.6 * y + 0.4 * rng.random((200, 6)), 0, 1)
    return y, p


def test_rsna_log_loss_is_the_weighted_mean_of_column_log_losses(data):
    y, p = data
    columns = [log_loss(y[:, j], p[:, j], labels=[0, 1]) for j in range(6)]
    assert rsna_log_loss(y, p) == pytest.approx(np.average(columns, weights=RSNA_WEIGHTS), rel=1e-12)
    assert RSNA_WEIGHTS[SUBTYPE_LABELS.index("any")] == 2.0
    assert rsna_log_loss(y, y) < 1e-12  # perfect predictions (clipped, never log(0))


def test_torch_loss_matches_the_metric(data):
    y, p = data
    logits = torch.logit(torch.tensor(np.clip(p, 1e-6, 1 - 1e-6)))
    got = float(rsna_weighted_bce(logits, torch.tensor(y)))
    assert got == pytest.approx(rsna_log_loss(y, np.clip(p, 1e-6, 1 - 1e-6)), rel=1e-5)
    masked = torch.tensor(y, dtype=torch.float32)
    masked[0, :5] = -1  # unknown subtypes of case 0: only its "any" counts
    one = rsna_weighted_bce(logits[:1], masked[:1])
    assert float(one) == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(
        logits[0, 5], masked[0, 5])), rel=1e-6)
    logits.requires_grad_(True)
    rsna_weighted_bce(logits, torch.tensor(y)).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_subtype_aucs(data):
    y, p = data
    y[:, 0] = 0  # no epidural case: no AUC
    out = subtype_aucs(y, p)
    assert out["epidural"] is None
    for j, name in enumerate(SUBTYPE_LABELS[1:], start=1):
        assert out[name]["auc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)
        low, high = out[name]["auc_ci"]
        assert low <= out[name]["auc"] <= high and out[name]["n_pos"] + out[name]["n_neg"] == 200


def test_bad_shapes_and_values(data):
    y, p = data
    with pytest.raises(InputError, match=r"^multi-label targets and probabilities must both be \(N, 6\) with N >= 1, "
                                         r"got \(200, 6\) and \(200, 5\)$"):
        rsna_log_loss(y, p[:, :5])
    with pytest.raises(InputError, match="^multi-label probabilities must be finite and in \\[0, 1\\]$"):
        rsna_log_loss(y, p + 1)
    with pytest.raises(InputError, match=r"^multi-label targets must be 0, 1 or -1 \(unknown\)$"):
        subtype_aucs(y * 2, p)
    with pytest.raises(InputError, match=r"^rsna_weighted_bce needs logits and targets of shape \(N, 6\)"):
        rsna_weighted_bce(torch.zeros(3, 5), torch.zeros(3, 5))


def test_unknown_targets_are_left_out(data):
    y, p = data
    y = y.astype(float)
    y[:50, 1] = -1  # intraparenchymal unknown for 50 cases
    out = subtype_aucs(y, p)
    assert out["intraparenchymal"]["n_pos"] + out["intraparenchymal"]["n_neg"] == 150
    assert out["intraparenchymal"]["auc"] == pytest.approx(roc_auc_score(y[50:, 1], p[50:, 1]), abs=1e-12)
    # the metric and the training loss agree on what an unknown target means
    logits = torch.logit(torch.tensor(np.clip(p, 1e-6, 1 - 1e-6)))
    assert float(rsna_weighted_bce(logits, torch.tensor(y))) == pytest.approx(
        rsna_log_loss(y, np.clip(p, 1e-6, 1 - 1e-6)), rel=1e-5)
    # a case with no known target counts for nothing
    y[0] = -1
    assert rsna_log_loss(y, p) == pytest.approx(rsna_log_loss(y[1:], p[1:]), rel=1e-12)

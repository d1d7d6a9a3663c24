"""Bundle kinds and network heads (`ichdet.models.kinds`, `ichdet.models.heads`): each kind's
scoring rule on hand-made network outputs, its labels and graph outputs, and the heads' readings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ichdet.errors import InputError
from ichdet.metrics import SUBTYPE_LABELS
from ichdet.models import create_model
from ichdet.models.heads import BINARY, MULTILABEL, head_of
from ichdet.models.kinds import KINDS, ModelOutputs, get_kind


class _FixedSVM:
    """An SVM head stand-in whose P(bleed) is the first feature column."""

    def predict_proba(self, x):
        p = np.asarray(x, dtype=np.float64)
        p = p[:, 0] if p.ndim == 2 else p[:, 0, 0]
        return np.stack([1 - p, p], axis=1)


def _outputs(labels: bool = False) -> ModelOutputs:
    p = np.array([0.1, 0.9, 0.3, 0.2])
    per_label = np.stack([p / 2, p / 3, p / 4, p / 5, p / 6, p], axis=1) if labels else None
    return ModelOutputs(p, np.array([[0.7], [0.2], [0.4], [0.1]], dtype=np.float32), 0.42, per_label,
                        np.linspace(0.1, 0.42, 6) if labels else None)


def test_each_kind_scores_by_its_rule():
    out = _outputs()
    assert get_kind("slice").score(out).probability == 0.9
    assert get_kind("aggregate").score(out, "p95").probability == pytest.approx(np.percentile(out.slice_probability, 95))
    scan = get_kind("scan").score(out)
    assert scan.probability == 0.42 and scan.slice_probabilities is out.slice_probability and scan.label_probs is None
    svm = get_kind("alexnet_svm").score(out, svm=_FixedSVM())  # the SVM's slice probabilities, their maximum
    np.testing.assert_allclose(svm.slice_probabilities, [0.7, 0.2, 0.4, 0.1], rtol=1e-6)
    assert svm.probability == pytest.approx(0.7)
    feature = get_kind("feature_svm").score(out, svm=_FixedSVM())  # one SVM call on the scan's features
    assert feature.probability == pytest.approx(0.7) and feature.slice_probabilities is out.slice_probability


def test_label_probabilities_follow_the_kind():
    out = _outputs(labels=True)
    per_slice = out.slice_labels
    np.testing.assert_allclose(get_kind("slice").score(out).label_probs, per_slice.max(axis=0))
    np.testing.assert_allclose(get_kind("aggregate").score(out, "p95").label_probs, np.percentile(per_slice, 95, axis=0))
    np.testing.assert_array_equal(get_kind("scan").score(out).label_probs, out.scan_labels)
    for kind in ("slice", "aggregate", "scan"):  # "any" is the score
        s = get_kind(kind).score(out)
        assert s.label_probs[-1] == s.probability
    assert get_kind("alexnet_svm").score(out, svm=_FixedSVM()).label_probs is None


def test_labels_and_graph_outputs_of_each_kind():
    binary = create_model("slice_cnn", base_width=2, feature_dim=8)
    multi = create_model("slice_cnn", base_width=2, feature_dim=8, num_classes=6, multilabel=True)
    lstm = create_model("scan_lstm", encoder_kw={"base_width": 2, "feature_dim": 8}, hidden=4, num_classes=6,
                        multilabel=True)
    assert get_kind("slice").labels(binary) == ("any",) and get_kind("slice").labels(multi) == SUBTYPE_LABELS
    assert get_kind("feature_svm").labels(multi) == ("any",)  # an SVM head decides: binary
    assert get_kind("slice").graph_labels(multi) == (True, False)
    assert get_kind("alexnet_svm").graph_labels(multi) == (False, False)
    assert get_kind("scan").graph_labels(lstm) == (False, True)  # its encoder's head is binary
    assert get_kind("scan").slice_classifier(lstm) is lstm.encoder and get_kind("slice").slice_classifier(multi) is multi
    assert [k for k, v in KINDS.items() if v.svm is not None] == ["alexnet_svm", "slice_svm", "feature_svm"]
    assert get_kind(KINDS["scan"]) is KINDS["scan"]
    with pytest.raises(InputError, match="^bundle kind must be one of slice, scan, aggregate, alexnet_svm, "
                                         "slice_svm, feature_svm, segmentation, got 'max'$"):
        get_kind("max")


def test_heads_read_logits():
    logits = torch.tensor([[0.0, 1.0, -2.0, 0.5, 3.0, 1.5], [1.0, -1.0, 0.0, 0.0, 0.0, -0.5]])
    p = MULTILABEL.probabilities(logits)
    torch.testing.assert_close(p, torch.sigmoid(logits))
    torch.testing.assert_close(MULTILABEL.probability(logits), p[:, -1])
    two = logits[:, :2]
    assert BINARY.probabilities(two).shape == (2, 1)
    torch.testing.assert_close(BINARY.probability(two), torch.softmax(two, 1)[:, 1])
    torch.testing.assert_close(BINARY.probabilities(two)[:, -1], BINARY.probability(two))
    assert head_of(object()) is BINARY and MULTILABEL.labels == SUBTYPE_LABELS and BINARY.labels == ("any",)
    with pytest.raises(InputError, match="^SliceCNN has a two-class head, not a multi-label \\(subtype\\) one$"):
        BINARY.require_labels("SliceCNN")

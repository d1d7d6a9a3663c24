"""Platt scaling written into a network's last layer: the fit, the exact effect on the network's
probabilities, the cases it leaves alone, the config rule, and a slice stage that calibrates."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ichdet.engine import load_config, train
from ichdet.engine.bundle import load_bundle
from ichdet.engine.calibration import calibrate_last_layer, platt_fit
from ichdet.engine.config import dump_config
from ichdet.engine.run import check_resume
from ichdet.errors import InputError
from ichdet.models import SliceCNN

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def test_platt_fit_recovers_a_known_scale_and_offset():
    rng = np.random.default_rng(0)
    d = rng.normal(0, 1.5, 20000)
    y = (rng.uniform(size=d.size) < 1 / (1 + np.exp(-(2.0 * d - 0.5)))).astype(int)
    a, c = platt_fit(y, 1 / (1 + np.exp(-d)))
    assert a == pytest.approx(2.0, abs=0.1) and c == pytest.approx(-0.5, abs=0.1)
    assert platt_fit(np.ones(5, dtype=int), np.full(5, 0.3)) is None  # one class: nothing to fit
    # a validation set the network separates: Platt's targets (N+ + 1)/(N+ + 2) and 1/(N- + 2) keep the
    # slope finite, the probabilities short of 0 and 1
    p = np.linspace(0.49, 0.51, 32)
    a, c = platt_fit((p > 0.5).astype(int), p)
    q = 1 / (1 + np.exp(-(a * _logit(p) + c)))
    assert 0 < a < np.inf and 0.001 < q.min() < 0.1 and 0.9 < q.max() < 0.999
    with pytest.raises(InputError, match=r"one shape \(N,\), got \(3,\) and \(2,\)"):
        platt_fit(np.array([0, 1, 0]), np.array([0.2, 0.4]))


def test_the_calibrated_network_gives_the_platt_probabilities_in_the_same_order():
    torch.manual_seed(0)
    model = SliceCNN(base_width=2, n_units=3, feature_dim=16, dropout=0.0).eval()
    x = torch.rand(40, 1, 32, 32)
    with torch.no_grad():
        before = torch.softmax(model(x), 1)[:, 1].double().numpy()
    y = (before > np.median(before)).astype(int)  # labels the network already ranks perfectly
    y[[0, 1, 2]] = 1 - y[[0, 1, 2]]
    done = calibrate_last_layer(model, y, before)
    assert done["method"] == "platt" and done["a"] > 0 and done["samples"] == 40
    with torch.no_grad():
        after = torch.softmax(model(x), 1)[:, 1].double().numpy()
    a, c = done["a"], done["c"]
    np.testing.assert_allclose(after, 1 / (1 + np.exp(-(a * _logit(before) + c))), atol=1e-4)  # float32 network
    assert (np.argsort(after, kind="stable") == np.argsort(before, kind="stable")).all()
    assert np.ptp(after) > 10 * np.ptp(before)  # a near-constant network's scores spread out


def test_a_reversing_fit_or_one_class_leaves_the_network_alone():
    torch.manual_seed(1)
    model = SliceCNN(base_width=2, n_units=3, feature_dim=16, dropout=0.0).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    p = np.linspace(0.4, 0.6, 20)
    assert calibrate_last_layer(model, (p < 0.5).astype(int), p)["method"] == "none"  # a < 0
    assert calibrate_last_layer(model, np.zeros(20, dtype=int), p) == {
        "method": "none", "reason": "the validation samples hold one class"}
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_calibrate_is_for_binary_slice_stages_and_old_runs_resume_without_it(tiny, tmp_path):
    with pytest.raises(InputError, match="config calibrate applies to stage slice with model.labels binary, "
                                         "got stage slice with subtypes labels"):
        load_config(CONFIGS / "3d_slice_cnn_subtypes.yaml", [*tiny, "calibrate=true"])
    with pytest.raises(InputError, match="got stage scan with binary labels"):
        load_config(CONFIGS / "3d_lstm2_frozen.yaml", [*tiny, "calibrate=true"])
    cfg = load_config(CONFIGS / "3d_slice_cnn.yaml", tiny)
    lines = dump_config(cfg).splitlines()
    assert "calibrate: false" in lines
    (tmp_path / "config.yaml").write_text("\n".join(x for x in lines if not x.startswith("calibrate:")) + "\n")
    check_resume(cfg, tmp_path)  # a run saved before the key existed did not calibrate: resumes as it was
    with pytest.raises(InputError, match="changed: calibrate"):
        check_resume(load_config(CONFIGS / "3d_slice_cnn.yaml", [*tiny, "calibrate=true"]), tmp_path)


def test_a_calibrated_slice_stage_records_it_and_its_operating_point_is_on_the_new_scale(tiny, tmp_path):
    tiny = [*tiny, "model.kwargs={base_width: 4, feature_dim: 16, dropout: 0.0}", "optim.lr=1e-3"]  # not constant
    bundle = load_bundle(train(load_config(CONFIGS / "3d_slice_cnn.yaml", [*tiny, "calibrate=true"]), tmp_path / "run",
                               show_progress=False))
    meta = json.loads((bundle.path / "bundle.json").read_text())
    assert meta["calibration"]["method"] == "platt" and meta["calibration"]["a"] > 0
    plain = load_bundle(train(load_config(CONFIGS / "3d_slice_cnn.yaml", tiny), tmp_path / "plain",
                              show_progress=False))
    assert "calibration" not in plain.meta
    # same training, so the networks differ only in the last layer: W' = a W, b' = a b + c e1
    a, c = meta["calibration"]["a"], meta["calibration"]["c"]
    w, w0 = bundle.model.head.linear.weight, plain.model.head.linear.weight
    b, b0 = bundle.model.head.linear.bias, plain.model.head.linear.bias
    torch.testing.assert_close(w, a * w0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, a * b0 + torch.tensor([0.0, c]), rtol=1e-5, atol=1e-6)
    # the slice operating point was chosen on the calibrated probabilities of the same samples
    assert meta["slice_operating_point"]["validation"]["auc"] == pytest.approx(
        plain.meta["slice_operating_point"]["validation"]["auc"], abs=1e-9)
    t0, t = plain.meta["slice_operating_point"]["threshold"], meta["slice_operating_point"]["threshold"]
    assert t == pytest.approx(1 / (1 + np.exp(-(a * np.log(t0 / (1 - t0)) + c))), abs=1e-4)

"""Fixtures for inference tests: a small synthetic cohort written as real DICOM and NIfTI, and
bundles of every kind built from small random-weight models (no training), binary and multi-label
(subtype) ones, and segmentation bundles."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ichdet.engine.bundle import save_bundle
from ichdet.models import create_model
from ichdet.models.aggregate import FeatureSVM
from ichdet.models.svm_head import SVMHead
from ichdet.preprocess import PrepSpec
from ichdet.synth import make_cohort

SIZE = 64
ENCODER = {"in_channels": 1, "base_width": 4, "n_units": 3, "feature_dim": 16, "dropout": 0.0}


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """6 scans (DICOM + NIfTI), 8 slices of 64 x 64 at 5 mm; returns the manifest."""
    return make_cohort(tmp_path_factory.mktemp("infer_cohort"), 6, seed=5, size=SIZE, n_slices=8, difficulty=0.2,
                       fmt="both")


def _save(root: Path, name: str, model: torch.nn.Module, model_name: str, kind: str, prep: PrepSpec,
          threshold: float = 0.5, **kw) -> Path:
    return save_bundle(root / name, model=model.eval(), model_name=model_name, model_kwargs=model.config(), kind=kind,
                       prep=prep, context=kw.pop("context", 0),
                       operating_point={"method": "fixed", "threshold": threshold}, metrics={}, config_yaml="",
                       data_hash="test", **kw)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """One bundle per kind: slice, aggregate (p95), scan (with the 2x2x2 filter), feature_svm,
    alexnet_svm (a real AlexNet, three windows, head crop) and a slice model with context 1."""
    root = tmp_path_factory.mktemp("bundles")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    prep = PrepSpec(windows=("brain",), size=SIZE)
    out = {}
    cnn = create_model("slice_cnn", **ENCODER)
    out["slice"] = _save(root, "slice", cnn, "slice_cnn", "slice", prep, threshold=0.3)
    out["aggregate"] = _save(root, "aggregate", cnn, "slice_cnn", "aggregate", prep, aggregate="p95")
    lstm = create_model("scan_lstm", encoder_kw=ENCODER, hidden=8)
    out["scan"] = _save(root, "scan", lstm, "scan_lstm", "scan", PrepSpec(windows=("brain",), size=SIZE, z_max_filter=True))
    fsvm = FeatureSVM(length=8, C=1.0).fit([rng.normal(size=(8, 16)) for _ in range(10)], [0, 1] * 5)
    out["feature_svm"] = _save(root, "feature_svm", cnn, "slice_cnn", "feature_svm", prep, svm=fsvm)
    alex = create_model("alexnet", num_classes=2)
    asvm = SVMHead(kernel="linear", C=1.0).fit(rng.normal(size=(20, 4096)), [0, 1] * 10)
    out["alexnet_svm"] = _save(root, "alexnet_svm", alex, "alexnet", "alexnet_svm",
                               PrepSpec(windows=("brain", "subdural", "bone"), size=96, crop_head=True), svm=asvm)
    ctx = create_model("slice_cnn", **{**ENCODER, "in_channels": 3})
    out["context"] = _save(root, "context", ctx, "slice_cnn", "slice", prep, context=1)
    return out


ML_HEAD = {"multilabel": True, "num_classes": 6}  # five subtypes then "any", one sigmoid each


@pytest.fixture(scope="session")
def ml_bundles(tmp_path_factory) -> dict[str, Path]:
    """Subtype bundles of random-weight multi-label networks: slice, aggregate (p95) and
    feature_svm (binary: an SVM head) on one multi-label SliceCNN; scan (a multi-label ScanLSTM on a
    multi-label encoder, 2x2x2 filter) and scan_binary_encoder (multi-label scan head on a
    two-class encoder)."""
    root = tmp_path_factory.mktemp("ml_bundles")
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    prep = PrepSpec(windows=("brain",), size=SIZE)
    out = {}
    cnn = create_model("slice_cnn", **ENCODER, **ML_HEAD)
    out["slice"] = _save(root, "slice", cnn, "slice_cnn", "slice", prep)
    out["aggregate"] = _save(root, "aggregate", cnn, "slice_cnn", "aggregate", prep, aggregate="p95")
    fsvm = FeatureSVM(length=8, C=1.0).fit([rng.normal(size=(8, 16)) for _ in range(10)], [0, 1] * 5)
    out["feature_svm"] = _save(root, "feature_svm", cnn, "slice_cnn", "feature_svm", prep, svm=fsvm)
    lstm = create_model("scan_lstm", encoder_kw={**ENCODER, **ML_HEAD}, hidden=8, **ML_HEAD)
    z_filter = PrepSpec(windows=("brain",), size=SIZE, z_max_filter=True)
    out["scan"] = _save(root, "scan", lstm, "scan_lstm", "scan", z_filter)
    lstm2 = create_model("scan_lstm", encoder_kw=ENCODER, hidden=8, **ML_HEAD)
    out["scan_binary_encoder"] = _save(root, "scan_binary_encoder", lstm2, "scan_lstm", "scan", prep)
    return out


@pytest.fixture(scope="session")
def seg_bundles(tmp_path_factory) -> dict[str, Path]:
    """Segmentation bundles of a small seg_unet (64 px, three windows) whose last layer gives
    intraparenchymal (label 2) the largest logit everywhere: "iph" (every voxel of the scan) and
    "iph_crop" (with the head crop: every voxel of the head's box, background outside it)."""
    from ichdet.models.seg_unet import SegUNet

    root = tmp_path_factory.mktemp("seg_bundles")
    torch.manual_seed(0)
    iph = SegUNet(decoder_channels=[16, 16, 8, 8, 8])
    conv = [m for m in iph.segmentation_head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([0.0, 0.0, 10.0, 0.0, 0.0, 0.0]))
    prep = PrepSpec(windows=("brain", "subdural", "bone"), size=SIZE, max_filter=1)
    return {"iph": _save(root, "iph", iph, "seg_unet", "segmentation", prep),
            "iph_crop": _save(root, "iph_crop", iph, "seg_unet", "segmentation",
                              PrepSpec(windows=prep.windows, size=SIZE, max_filter=1, crop_head=True))}

"""Fixtures for the `ichdet serve` tests (API and browser): a small random-weight scan bundle, a
small synthetic cohort and the upload files made from it, a `--studies` folder, and apps/clients.

    scan_bundle   bundle folder: kind "scan" (slice CNN + LSTM), brain window, 64 px, the 2x2x2
                  filter (8 slices -> 4 display slices)
    subtype_bundle  the same with multi-label heads (five subtypes then "any") on the encoder and
                  the scan model: a subtype bundle
    seg_bundle    a segmentation bundle (seg_unet, 64 px, three windows) whose last layer says
                  "intraparenchymal" everywhere (a known mask: every voxel)
    cohort        manifest of 2 synthetic scans (DICOM + NIfTI), 8 slices of 64 x 64
    dicom_dir     the first scan's DICOM series folder (8 files)
    dicom_zip     that series as a zip (entries "series/IM00001.dcm", ...)
    dicom_file    one DICOM file of it
    nifti_path    the same scan as .nii.gz
    png_path      a brain-windowed slice of it as an 8-bit PNG (64 x 64)
    studies_dir   a --studies folder: "case_a" (DICOM series), "case_b.nii.gz", "case_c.png"
    make_app      make_app(**create_app_kwargs) -> FastAPI on scan_bundle, temp files under tmp_path
    client        a started TestClient (lifespan run) of make_app() with --studies studies_dir
"""
from __future__ import annotations

import csv
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ichdet.engine.bundle import save_bundle
from ichdet.models import create_model
from ichdet.preprocess import PrepSpec
from ichdet.synth import make_cohort

SIZE = 64
N_SLICES = 8
ENCODER = {"in_channels": 1, "base_width": 4, "n_units": 3, "feature_dim": 16, "dropout": 0.0}


@pytest.fixture(scope="session")
def scan_bundle(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("scan_lstm", encoder_kw=ENCODER, hidden=8).eval()
    prep = PrepSpec(windows=("brain",), size=SIZE, z_max_filter=True)
    return save_bundle(tmp_path_factory.mktemp("serve_bundle") / "bundle", model=model, model_name="scan_lstm",
                       model_kwargs=model.config(), kind="scan", prep=prep, context=0,
                       operating_point={"method": "fixed", "threshold": 0.4}, metrics={}, config_yaml="",
                       data_hash="test")


@pytest.fixture(scope="session")
def subtype_bundle(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    head = {"multilabel": True, "num_classes": 6}
    model = create_model("scan_lstm", encoder_kw={**ENCODER, **head}, hidden=8, **head).eval()
    with torch.no_grad():  # spread the six probabilities apart, so the page's table shows distinct values
        model.head.bias.copy_(torch.tensor([-3.0, -1.5, -0.5, 0.5, 1.5, 0.0]))
    prep = PrepSpec(windows=("brain",), size=SIZE, z_max_filter=True)
    return save_bundle(tmp_path_factory.mktemp("serve_subtype_bundle") / "bundle", model=model,
                       model_name="scan_lstm", model_kwargs=model.config(), kind="scan", prep=prep, context=0,
                       operating_point={"method": "fixed", "threshold": 0.4}, metrics={}, config_yaml="",
                       data_hash="test")


@pytest.fixture(scope="session")
def seg_bundle(tmp_path_factory) -> Path:
    from ichdet.models.seg_unet import SegUNet

    torch.manual_seed(3)
    model = SegUNet(decoder_channels=[16, 16, 8, 8, 8]).eval()
    conv = [m for m in model.segmentation_head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # a constant logit map: intraparenchymal (label 2) everywhere
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([0.0, 0.0, 8.0, 0.0, 0.0, 0.0]))
    prep = PrepSpec(windows=("brain", "subdural", "bone"), size=SIZE, max_filter=1)
    return save_bundle(tmp_path_factory.mktemp("serve_seg_bundle") / "bundle", model=model, model_name="seg_unet",
                       model_kwargs=model.config(), kind="segmentation", prep=prep, context=0,
                       operating_point={"method": "fixed", "threshold": 0.5}, metrics={}, config_yaml="",
                       data_hash="test")


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("serve_cohort"), 2, seed=3, size=SIZE, n_slices=N_SLICES,
                       difficulty=0.2, fmt="both")


@pytest.fixture(scope="session")
def _first_scan(cohort) -> dict[str, Path]:
    with open(cohort, newline="") as fh:
        row = next(csv.DictReader(fh))
    return {"dicom": cohort.parent / row["path"], "nifti": cohort.parent / row["nifti_path"]}


@pytest.fixture(scope="session")
def dicom_dir(_first_scan) -> Path:
    return _first_scan["dicom"]


@pytest.fixture(scope="session")
def dicom_file(dicom_dir) -> Path:
    return sorted(dicom_dir.glob("*.dcm"))[N_SLICES // 2]


@pytest.fixture(scope="session")
def nifti_path(_first_scan) -> Path:
    return _first_scan["nifti"]


@pytest.fixture(scope="session")
def dicom_zip(dicom_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve_zip") / "series.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(dicom_dir.glob("*.dcm")):
            zf.write(f, f"series/{f.name}")
    return out


@pytest.fixture(scope="session")
def png_path(nifti_path, tmp_path_factory) -> Path:
    from ichdet.io import read_volume
    from ichdet.preprocess.windows import window

    hu = read_volume(nifti_path).hu[N_SLICES // 2]
    out = tmp_path_factory.mktemp("serve_png") / "slice.png"
    Image.fromarray(np.round(window(hu, "brain") * 255).astype(np.uint8)).save(out)
    return out


@pytest.fixture(scope="session")
def studies_dir(dicom_dir, nifti_path, png_path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_studies")
    shutil.copytree(dicom_dir, root / "case_a")
    shutil.copy(nifti_path, root / "case_b.nii.gz")
    shutil.copy(png_path, root / "case_c.png")
    return root


@pytest.fixture
def make_app(scan_bundle, tmp_path):
    """make_app(**kw) -> create_app(scan_bundle, tmp_root=tmp_path / "serve-tmp", **kw)."""
    from ichdet.server import create_app

    def make(**kw):
        kw.setdefault("tmp_root", tmp_path / "serve-tmp")
        return create_app(scan_bundle, **kw)

    return make


@pytest.fixture
def client(make_app, studies_dir):
    from fastapi.testclient import TestClient

    with TestClient(make_app(studies_dir=studies_dir)) as c:
        yield c

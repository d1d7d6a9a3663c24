"""`Predictor` (`ichdet.load_predictor`): the same scores as evaluation, on every input kind, with the
result fields a reader needs."""
from __future__ import annotations

import json
import warnings
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ichdet
from ichdet.datasets.prepared import PreparedCohort
from ichdet.engine.precision import PrecisionWarning, cpu_features
from ichdet.engine.scoring import score_scans
from ichdet.errors import InputError
from ichdet.inference import Predictor, ScanPrediction
from ichdet.io import read_volume
from ichdet.preprocess import window

KINDS = ["slice", "aggregate", "scan", "feature_svm", "alexnet_svm", "context"]


def _scan_dirs(cohort: Path) -> list[Path]:
    return sorted((cohort.parent / "scans").iterdir())


@pytest.mark.parametrize("kind", KINDS)
def test_predict_gives_the_evaluation_score(cohort, bundles, kind):
    """predict (read -> prepare -> runtime -> kind rule) equals engine.scoring.score_scans, which
    validation and `ichdet evaluate` use, for every bundle kind."""
    b = ichdet.load_bundle(bundles[kind])
    pc = PreparedCohort(cohort, b.prep)
    ids = pc.scan_ids()[:3]
    ref, _ = score_scans(b.kind, b.model, pc, ids, b.context, b.aggregate, b.svm)
    exact = Predictor(b, precision="fp32")  # the default (auto) is bf16 on CPUs with bf16 units
    got = [exact.predict(pc.row(s).resolved_path(pc.root)).probability for s in ids]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    assert len(set(np.round(got, 6))) > 1 or kind == "feature_svm"  # the scans differ, so should the scores


def test_result_fields_of_a_scan_model(cohort, bundles):
    """8 slices through the 2x2x2 filter: 4 prepared slices, values repeated per pair, the top 3
    prepared slices reported as their 6 original slices, most suspicious first."""
    b = ichdet.load_predictor(bundles["scan"])
    scan = _scan_dirs(cohort)[1]
    r = b.predict(scan)
    assert isinstance(r, ScanPrediction)
    vol = read_volume(scan)
    assert r.shape == (8, 64, 64) and r.series_uid == vol.series_uid and r.input == str(scan)
    p = np.asarray(r.slice_probabilities)
    assert p.shape == (8,) and np.all(p[0::2] == p[1::2]) and np.all((p >= 0) & (p <= 1))
    assert [t["index"] for t in r.top_slices][::2] == [t["index"] - 1 for t in r.top_slices][1::2]
    probs = [t["probability"] for t in r.top_slices]
    assert len(r.top_slices) == 6 and probs == sorted(probs, reverse=True) and probs[0] == p.max()
    for t in r.top_slices:
        assert t["probability"] == p[t["index"]]
        assert t["z_mm"] == pytest.approx((vol.affine @ [0, 0, t["index"], 1])[2], abs=1e-3)
        assert t["file"] == Path(vol.source[t["index"]]).name
    assert r.decision == (r.probability >= r.threshold) and r.threshold == b.bundle.threshold
    auto = "bf16" if cpu_features().native_bf16 else "fp32"  # the Predictor's default precision
    assert r.runtime == f"torch ({auto}, channels-last)" and r.seconds > 0 and r.heatmaps is None
    doc = json.loads(json.dumps(r.to_dict()))
    assert set(doc) >= {"input", "series_uid", "probability", "threshold", "decision", "slice_probabilities",
                        "top_slices", "subtypes", "seconds"}
    assert doc["subtypes"] is None


def test_dicom_folder_zip_nifti_volume_and_array_agree(cohort, bundles, tmp_path):
    b = ichdet.load_predictor(bundles["slice"])
    scan = _scan_dirs(cohort)[2]
    ref = b.predict(scan)
    archive = tmp_path / "scan.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(scan.iterdir()):
            zf.write(f, f"series/{f.name}")
    assert b.predict(archive).slice_probabilities == ref.slice_probabilities
    nifti = next((cohort.parent / "nifti").glob(f"{scan.name}*.nii*"))
    assert b.predict(nifti).probability == pytest.approx(ref.probability, abs=1e-4)
    vol = read_volume(scan)
    assert b.predict(vol).probability == ref.probability
    assert b.predict(vol.hu).slice_probabilities == pytest.approx(ref.slice_probabilities, abs=1e-4)


def test_single_images(cohort, bundles, tmp_path):
    """A PNG (display intensities) and one DICOM file are one-slice scans; a scan model says so."""
    vol = read_volume(_scan_dirs(cohort)[0])
    png = tmp_path / "slice.png"
    Image.fromarray((window(vol.hu[4], "brain") * 255).astype(np.uint8)).save(png)
    for kind in ("slice", "alexnet_svm"):
        r = ichdet.load_predictor(bundles[kind]).predict(png)
        assert r.shape == (1, 64, 64) and len(r.slice_probabilities) == 1 and r.top_slices[0]["index"] == 0
        assert "file" not in r.top_slices[0] and r.warnings == []
    one = ichdet.load_predictor(bundles["scan"]).predict(Path(vol.source[4]))
    assert one.shape == (1, 64, 64) and one.top_slices[0]["file"] == Path(vol.source[4]).name
    assert one.warnings == ["a scan model given a single image: its probability means little"]


def test_a_png_given_to_a_ct_trained_multi_window_model_is_flagged(cohort, bundles, tmp_path):
    vol = read_volume(_scan_dirs(cohort)[0])
    png = tmp_path / "slice.png"
    Image.fromarray((window(vol.hu[4], "brain") * 255).astype(np.uint8)).save(png)
    warned = {}
    for units in ("HU", "display"):
        bundle = shutil.copytree(bundles["alexnet_svm"], tmp_path / units)
        meta = json.loads((bundle / "bundle.json").read_text())
        (bundle / "bundle.json").write_text(json.dumps({**meta, "training_units": units}))
        warned[units] = ichdet.load_predictor(bundle).predict(png).warnings
    assert warned == {"HU": ["a display image given to a model trained on CT windows (brain, subdural, bone): every "
                             "channel gets the same grey image, so its probability means less"], "display": []}


def test_reader_warnings_travel_with_the_result(cohort, bundles, tmp_path):
    scan = tmp_path / "gap"
    shutil.copytree(_scan_dirs(cohort)[0], scan)
    files = sorted(scan.iterdir(), key=lambda f: read_volume(f).origin[2])
    files[4].unlink()  # a missing slice in the middle: a gap
    r = ichdet.load_predictor(bundles["slice"]).predict(scan)
    assert r.shape[0] == 7 and any("gap" in w for w in r.warnings)


def test_bf16_is_close_to_fp32_where_native_and_fp32_elsewhere(cohort, bundles):
    """bf16 autocast of the encoder where the CPU has bf16 units (the LSTM stays fp32); elsewhere
    asking for bf16 warns once and runs fp32, never a crash (oneDNN has no bf16 LSTM there)."""
    b = ichdet.load_bundle(bundles["scan"])
    scan = _scan_dirs(cohort)[3]
    fp32 = Predictor(b, precision="fp32").predict(scan)
    assert fp32.runtime == "torch (fp32, channels-last)"
    if cpu_features().native_bf16:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            bf16 = Predictor(b, precision="bf16").predict(scan)
        assert bf16.runtime == "torch (bf16, channels-last)"
        assert Predictor(b).runtime.describe() == "torch (bf16, channels-last)"  # auto
        assert abs(bf16.probability - fp32.probability) < 0.02
        assert np.abs(np.subtract(bf16.slice_probabilities, fp32.slice_probabilities)).max() < 0.02
    else:
        with pytest.warns(PrecisionWarning, match="^bf16 is not native on this CPU .* so fp32 runs instead$"):
            bf16 = Predictor(b, precision="bf16").predict(scan)
        assert bf16.runtime == "torch (fp32, channels-last)"
        assert Predictor(b).runtime.describe() == "torch (fp32, channels-last)"  # auto
        assert bf16.probability == fp32.probability and bf16.slice_probabilities == fp32.slice_probabilities


def test_bad_input_is_one_clear_error(bundles, tmp_path):
    b = ichdet.load_bundle(bundles["slice"])
    p = Predictor(b)
    with pytest.raises(InputError) as e:
        p.predict(tmp_path / "missing")
    assert str(e.value) == f"{tmp_path / 'missing'}: no such file or folder"
    with pytest.raises(InputError, match=r"^a HU array for predict must be \(Z, H, W\) or \(H, W\), got shape \(1, 2, 3, 4\)$"):
        p.predict(np.zeros((1, 2, 3, 4)))
    with pytest.raises(InputError, match="^predict takes a path, a Volume or a HU array, got int$"):
        p.predict(3)
    with pytest.raises(InputError, match="^runtime must be one of auto, torch, onnx, got 'tf'$"):
        Predictor(b, runtime="tf")
    with pytest.raises(InputError, match="^precision must be one of auto, fp32, bf16, fp16, got 'fp8'$"):
        Predictor(b, precision="fp8")
    with pytest.raises(InputError, match="^precision fp16 is for GPUs; on the CPU use auto, fp32 or bf16$"):
        Predictor(b, runtime="torch", precision="fp16")
    garbage = tmp_path / "x.nii.gz"
    garbage.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match=str(garbage)):
        p.predict(garbage)


def test_an_input_of_air_is_flagged(bundles):
    """A blank volume still gets a probability, but the result says it holds no head."""
    r = ichdet.load_predictor(bundles["slice"]).predict(np.full((4, 64, 64), -1000.0, dtype=np.float32))
    assert r.warnings == ["almost nothing but air in the input (tissue in 0.0% of it): is this a head CT?"]

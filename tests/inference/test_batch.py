"""Folders of many studies: what counts as a study, one result each, bad studies reported and
skipped; and the `ichdet predict` command around it."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

import ichdet
from ichdet.cli import run
from ichdet.errors import InputError
from ichdet.inference import Predictor, find_studies, predict_inputs
from ichdet.inference.batch import study_slug


def _scans(cohort: Path) -> list[Path]:
    return sorted((cohort.parent / "scans").iterdir())


@pytest.fixture
def studies_dir(cohort, tmp_path) -> Path:
    """patients/<scan>/series/*.dcm for 3 scans, a NIfTI, a README, and a study with a corrupt slice."""
    root = tmp_path / "studies"
    for scan in _scans(cohort)[:3]:
        shutil.copytree(scan, root / scan.name / "series")
    nifti = next((cohort.parent / "nifti").glob(f"{_scans(cohort)[3].name}*"))
    shutil.copy(nifti, root / nifti.name)
    (root / "README.txt").write_text("not a scan")
    bad = root / "broken" / "series"
    shutil.copytree(_scans(cohort)[4], bad)
    victim = sorted(bad.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated mid-header
    return root


def test_find_studies(cohort, studies_dir):
    studies = find_studies(studies_dir)
    labels = [s.label for s in studies]
    scans = _scans(cohort)
    assert labels == sorted([str(studies_dir / "broken" / "series"), str(next(studies_dir.glob("*.nii*")))]
                            + [str(studies_dir / s.name / "series") for s in scans[:3]])
    assert sum(isinstance(s.source, list) and len(s.source) == 8 for s in studies) == 4  # corrupt file kept with its study
    one = find_studies(scans[0])  # a series folder is one study, named by the folder
    assert [(s.label, s.source) for s in one] == [(str(scans[0]), scans[0])]


def test_a_stray_image_of_another_study_joins_the_series_beside_it(cohort, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(_scans(cohort)[0], folder)
    shutil.copy(sorted(_scans(cohort)[1].iterdir())[0], folder / "scout.dcm")  # one image of another study
    assert [s.label for s in find_studies(folder)] == [str(folder)]
    # ...but a second full series of another study stays a study of its own
    for f in sorted(_scans(cohort)[1].iterdir()):
        shutil.copy(f, folder / f"other_{f.name}")
    assert len(find_studies(folder)) == 2


def test_no_scans_in_a_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError) as e:
        find_studies(tmp_path)
    assert str(e.value) == f"{tmp_path}: found no scans (no DICOM series, NIfTI, image or zip files)"


def test_predict_inputs_keeps_going_past_a_bad_study(bundles, studies_dir, tmp_path):
    predictor = Predictor(ichdet.load_bundle(bundles["slice"]))
    seen = []
    results, errors = predict_inputs(predictor, [studies_dir, tmp_path / "nope"],
                                     progress=lambda done, total: seen.append((done, total)))
    assert len(results) == 4 and seen[-1] == (5, 5)
    assert errors[0] == {"input": str(tmp_path / "nope"), "error": "no such file or folder"}
    assert errors[1]["input"] == str(studies_dir / "broken" / "series")
    assert errors[1]["error"].startswith(str(sorted((studies_dir / "broken" / "series").iterdir())[3]))
    assert "truncated" in errors[1]["error"] or "corrupt" in errors[1]["error"]
    assert all(r.shape[0] == 8 for r in results)


def test_study_slug():
    taken: set[str] = set()
    assert study_slug("/data/a b/CT 1.2", taken) == "data_a_b_CT_1.2"
    assert study_slug("/data/a b/CT 1.2", taken) == "data_a_b_CT_1.2_2"
    assert study_slug("..", taken) == "study"


def test_cli_predict_table_json_and_files(cohort, bundles, studies_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = run(["predict", str(studies_dir), "--model", str(bundles["scan"]), "--out", str(out), "--heatmaps",
                "--quiet"])
    captured = capsys.readouterr()
    assert code == 2  # one study was bad input; the others still got results
    lines = captured.out.splitlines()
    assert lines[0].split()[:4] == ["input", "slices", "P(bleed)", "threshold"] and len(lines) == 2 + 4
    assert any(line.startswith(f"{studies_dir / 's'}") or "BLEED" in line or "no bleed" in line for line in lines[2:])
    err = [line for line in captured.err.splitlines() if line.startswith("ichdet: error:")]
    assert len(err) == 1 and err[0].startswith(f"ichdet: error: {studies_dir / 'broken' / 'series'}: ")
    doc = json.loads((out / "predictions.json").read_text())
    assert set(doc) == {"model", "scans", "errors"} and len(doc["scans"]) == 4 and len(doc["errors"]) == 1
    assert doc["model"]["kind"] == "scan" and doc["model"]["threshold"] == 0.5
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 5 and rows[-1]["error"] == doc["errors"][0]["error"]
    for s in doc["scans"]:  # heatmaps: one overlay per reported prepared slice + a contact sheet
        sheet = Path(s["heatmaps"]["contact_sheet"])
        assert sheet.is_file() and sheet.parent.parent == out / "heatmaps"
        assert len(s["heatmaps"]["slices"]) == 3
        assert all(Path(p).is_file() for p in s["heatmaps"]["slices"].values())


def test_cli_predict_json_to_stdout(cohort, bundles, capsys):
    scan = _scans(cohort)[0]
    assert run(["predict", str(scan), "--model", str(bundles["slice"]), "--json", "--top", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (s,) = doc["scans"]
    assert doc["errors"] == [] and s["input"] == str(scan) and len(s["top_slices"]) == 2
    assert len(s["slice_probabilities"]) == 8 and s["decision"] == (s["probability"] >= 0.3)


def test_cli_predict_bf16_on_a_scan_bundle_works_on_any_cpu(cohort, bundles, capsys):
    """`predict --precision bf16` on a CNN + BiLSTM bundle: bf16 where the CPU has bf16 units, else
    one warning line and an fp32 run; exit 0 either way (it was exit 2, a oneDNN LSTM error
    blamed on the input, on AVX2 CPUs)."""
    from ichdet.engine.precision import cpu_features

    scan = _scans(cohort)[0]
    assert run(["predict", str(scan), "--model", str(bundles["scan"]), "--precision", "bf16", "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    features = cpu_features()
    want = "bf16" if features.native_bf16 else "fp32"
    assert doc["errors"] == [] and doc["model"]["runtime"] == f"torch ({want}, channels-last)"
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    if features.native_bf16:
        assert lines == []
    else:
        assert lines == [f"ichdet: warning: bf16 is not native on this CPU ({features.describe()}): it would run "
                         "emulated, about ten times slower than fp32, so fp32 runs instead"]


def test_cli_predict_bad_input_is_one_line(bundles, tmp_path, capsys):
    assert run(["predict", str(tmp_path / "nope"), "--model", str(bundles["slice"])]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"ichdet: error: {tmp_path / 'nope'}: no such file or folder\n"
    assert run(["predict", str(tmp_path), "--model", str(bundles["slice"]), "--heatmaps"]) == 2
    assert capsys.readouterr().err == "ichdet: error: --heatmaps needs --out DIR (the overlays and contact sheets go there)\n"
    assert run(["predict", str(tmp_path), "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"ichdet: error: {tmp_path}: not a model bundle (no bundle.json)\n"


ONEDNN = "could not create a primitive"  # what a oneDNN failure inside the model says


def _failing(real, victim: str, error: BaseException):
    """`real` (a Predictor method taking the study first) raising `error` for the study named `victim`."""
    def method(self, x, *args, **kwargs):
        if victim in str(x):
            raise error
        return real(self, x, *args, **kwargs)

    return method


@pytest.mark.parametrize("error, message", [
    (OSError(5, "Input/output error"), "cannot be read (OSError: [Errno 5] Input/output error)"),
    (MemoryError(), "out of memory reading the scan"),
])
def test_a_study_that_cannot_be_read_is_recorded(bundles, studies_dir, monkeypatch, error, message):
    victim = str(studies_dir / _scans_in(studies_dir)[0])
    monkeypatch.setattr(Predictor, "prepare", _failing(Predictor.prepare, victim, error))
    results, errors = predict_inputs(Predictor(ichdet.load_bundle(bundles["slice"])), [studies_dir])
    assert len(results) == 3 and {"input": victim, "error": message} in errors and len(errors) == 2


@pytest.mark.parametrize("error", [ValueError("a bug in a transform"), KeyError("spacing"), RuntimeError(ONEDNN)])
def test_a_bug_while_reading_is_not_blamed_on_the_input(bundles, studies_dir, monkeypatch, error):
    victim = str(studies_dir / _scans_in(studies_dir)[0])
    monkeypatch.setattr(Predictor, "prepare", _failing(Predictor.prepare, victim, error))
    with pytest.raises(type(error)):
        predict_inputs(Predictor(ichdet.load_bundle(bundles["slice"])), [studies_dir])


@pytest.mark.parametrize("error", [RuntimeError(ONEDNN), MemoryError(), OSError(5, "Input/output error")])
def test_an_error_in_the_model_propagates(bundles, studies_dir, monkeypatch, error):
    def score_labels(self, image):
        raise error

    monkeypatch.setattr(Predictor, "score_labels", score_labels)
    with pytest.raises(type(error)):
        predict_inputs(Predictor(ichdet.load_bundle(bundles["slice"])), [studies_dir])


def test_cli_predict_model_crash_is_an_internal_error(cohort, bundles, monkeypatch, capsys):
    def score_labels(self, image):
        raise RuntimeError(ONEDNN)

    monkeypatch.setattr(Predictor, "score_labels", score_labels)
    monkeypatch.delenv("ICHDET_DEBUG", raising=False)
    assert run(["predict", str(_scans(cohort)[0]), "--model", str(bundles["slice"]), "--quiet", "-v"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"ichdet: internal error: RuntimeError: {ONEDNN} (run with --debug for the traceback)\n"
    with pytest.raises(RuntimeError, match=ONEDNN):
        run(["predict", str(_scans(cohort)[0]), "--model", str(bundles["slice"]), "--quiet", "--debug"])


def test_cli_predict_corrupt_jpeg_ls_is_bad_input(bundles, tmp_path, capsys):
    from ctfactory import JPEG_LS_REASON, write_corrupt_jpeg_ls

    path = write_corrupt_jpeg_ls(tmp_path / "jls.dcm")
    assert run(["predict", str(path), "--model", str(bundles["slice"]), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"ichdet: error: {path}: pixel data cannot be decoded (JPEG-LS Lossless Image "
                                       f"Compression 1.2.840.10008.1.2.4.80): {JPEG_LS_REASON}\n")


def _scans_in(studies_dir: Path) -> list[str]:
    """The DICOM studies of `studies_dir` (folder names relative to it), sorted."""
    return sorted(f"{p.name}/series" for p in studies_dir.iterdir() if (p / "series").is_dir() and p.name != "broken")

"""`ichdet evaluate`: a tiny trained bundle scored on held-out scans; case selection, metrics.json,
predictions.csv, figures; `train_or_resume` keeping finished runs; the CLI's input errors."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

import importlib
from ichdet.engine.bundle import load_bundle
from ichdet.cli import run as cli
from ichdet.datasets.manifest import ManifestRow, read_manifest, write_manifest
from ichdet.datasets.splits import read_splits
from ichdet.engine import load_config
from ichdet.engine.train import train_or_resume
from ichdet.errors import InputError
from ichdet.evaluation.evaluate import evaluate_bundle, select_cases
from ichdet.metrics import SUBTYPE_LABELS, rsna_log_loss, summarize
from ichdet.synth import make_cohort

train_mod = importlib.import_module("ichdet.engine.train")  # `ichdet.engine.train` the attribute is the function
DESIGN_KEYS = ("auc", "auc_ci", "sensitivity", "specificity", "accuracy", "threshold", "n_pos", "n_neg")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """16 scans (7 positive), 64 px, 8 slices; scans 8 and 9 share a patient."""
    return make_cohort(tmp_path_factory.mktemp("eval_cohort"), 16, seed=3, size=64, n_slices=8, difficulty=0.2)


def _overrides(manifest: Path, cache: Path) -> list[str]:
    return [f"data.manifest={manifest}", f"data.cache={cache}", "data.size=64", "data.val_fraction=0.2",
            "data.test_fraction=0.4", "model.kwargs={base_width: 4, feature_dim: 16}", "optim.epochs=1",
            "optim.steps_per_epoch=2", "optim.batch_size=4", "optim.val_samples=20", "threads=1",
            "precision=fp32", "channels_last=false"]


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory) -> tuple[Path, list[str]]:
    """(run folder, the overrides it was trained with): quick/3d_slice_cnn, one epoch of two steps."""
    root = tmp_path_factory.mktemp("eval_run")
    sets = _overrides(cohort, root / "cache")
    bundle = train_or_resume(load_config("quick/3d_slice_cnn", sets), root / "run", show_progress=False)
    assert bundle == root / "run" / "bundle"
    return root / "run", sets


def _predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _abs_manifest(rows: list[ManifestRow], root: Path, path: Path, **extra: dict[str, str]) -> Path:
    """A manifest elsewhere: the rows with absolute paths (and extra columns per scan)."""
    return write_manifest(path, [ManifestRow(r.scan_id, r.patient_id, str(r.resolved_path(root).resolve()), r.label,
                                             dict(r.subtypes), {**r.extra, **extra.get(r.scan_id, {})})
                                 for r in rows])


def test_bundle_keeps_its_splits_and_name(trained):
    run, _ = trained
    b = load_bundle(run / "bundle")
    assert (run / "bundle" / "splits.csv").read_text() == (run / "splits.csv").read_text()
    splits = b.training_splits()
    assert splits == read_splits(run / "splits.csv") and len(splits) == 16
    assert sorted(set(splits.values())) == ["test", "train", "val"]
    assert b.name == "3d_slice_cnn"


def test_evaluate_scores_exactly_the_held_out_scans(cohort, trained, tmp_path):
    run, _ = trained
    b = load_bundle(run / "bundle")
    splits = b.training_splits()
    held = [r.scan_id for r in read_manifest(cohort) if splits[r.scan_id] not in ("train", "val")]
    result = evaluate_bundle(run / "bundle", cohort, tmp_path)
    preds = _predictions(tmp_path / "predictions.csv")
    assert [p["scan_id"] for p in preds] == held
    labels = {r.scan_id: r for r in read_manifest(cohort)}
    assert all(int(p["label"]) == labels[p["scan_id"]].label for p in preds)
    assert all(p["patient_id"] == labels[p["scan_id"]].patient_id for p in preds)

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert list(saved["models"]) == ["3d_slice_cnn"]
    m = saved["models"]["3d_slice_cnn"]
    assert set(DESIGN_KEYS) <= set(m)
    y = np.array([int(p["label"]) for p in preds])
    s = np.array([float(p["score"]) for p in preds])
    assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert (m["n_pos"], m["n_neg"]) == (int(y.sum()), int((1 - y).sum())) and m["n_pos"] >= 1 and m["n_neg"] >= 1
    assert m["threshold"] == pytest.approx(b.threshold) and b.threshold == b.meta["operating_point"]["threshold"]
    assert all(float(p["threshold"]) == pytest.approx(b.threshold, rel=1e-5) for p in preds)
    assert [int(p["decision"]) for p in preds] == [int(v >= b.threshold) for v in s]
    ref = summarize(y, s, b.threshold)
    for key in ("sensitivity", "specificity", "accuracy", "tp", "fp", "tn", "fn"):
        assert m[key] == pytest.approx(ref[key]), key
    assert len(m["auc_ci"]) == 2 and m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1]
    assert saved["data"] == {"manifest": str(cohort.resolve()), "split": "auto", "cases": len(held),
                             "left_out_trained_or_validated": 16 - len(held),
                             "chosen_by": "all scans not in the bundle's train/val split"}
    assert saved["bundle"] == str((run / "bundle").resolve()) and saved["bundle_kind"] == "slice"
    assert result["models"]["3d_slice_cnn"]["auc"] == m["auc"]
    assert "subtypes" not in m and "rsna_log_loss" not in m  # a binary bundle: unchanged output
    assert list(preds[0]) == ["scan_id", "patient_id", "label", "score", "threshold", "decision"]
    for fig in ("roc.png", "confusion.png"):
        with Image.open(tmp_path / fig) as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_split_test_and_all(cohort, trained, tmp_path):
    run, _ = trained
    splits = read_splits(run / "splits.csv")
    test_ids = [r.scan_id for r in read_manifest(cohort) if splits[r.scan_id] == "test"]
    r = evaluate_bundle(run / "bundle", cohort, tmp_path / "test", split="test")
    assert [p["scan_id"] for p in _predictions(tmp_path / "test" / "predictions.csv")] == test_ids
    assert r["data"]["split"] == "test" and r["data"]["chosen_by"] == "the bundle's splits.csv"
    assert r["data"]["cases"] == len(test_ids)
    r = evaluate_bundle(run / "bundle", cohort, tmp_path / "all", split="all")
    assert len(_predictions(tmp_path / "all" / "predictions.csv")) == 16
    used = sum(v in ("train", "val") for v in splits.values())
    assert r["data"] == {"manifest": str(cohort.resolve()), "split": "all", "cases": 16, "includes_training_cases": used}
    m = r["models"]["3d_slice_cnn"]
    assert (m["n_pos"], m["n_neg"]) == (7, 9)


def test_split_column_of_the_manifest(cohort, trained, tmp_path):
    """With a split column, `auto` and `test` take its test rows (never the bundle's train/val scans)."""
    run, _ = trained
    splits = read_splits(run / "splits.csv")
    rows = read_manifest(cohort)
    # mark every scan "test" in the column: auto still leaves out what the bundle trained on
    manifest = _abs_manifest(rows, cohort.parent, tmp_path / "m.csv", **{r.scan_id: {"split": "test"} for r in rows})
    b = load_bundle(run / "bundle")
    from ichdet.datasets.prepared import PreparedCohort

    c = PreparedCohort(manifest, b.prep, slice_labels_path=None)
    ids, how = select_cases(b, c, "auto")
    assert ids == [r.scan_id for r in rows if splits[r.scan_id] == "test"]
    assert how == {"split": "auto", "cases": len(ids), "left_out_trained_or_validated": None,
                   "chosen_by": "manifest split column"}
    # a column whose test rows are the bundle's test scans: --split test takes exactly them
    test_only = _abs_manifest(rows, cohort.parent, tmp_path / "t.csv",
                              **{r.scan_id: {"split": "test" if splits[r.scan_id] == "test" else "train"} for r in rows})
    ids, how = select_cases(b, PreparedCohort(test_only, b.prep, slice_labels_path=None), "test")
    assert ids == [r.scan_id for r in rows if splits[r.scan_id] == "test"]
    assert how == {"split": "test", "chosen_by": "manifest split column", "cases": len(ids)}
    with pytest.raises(InputError) as e:
        select_cases(b, c, "train")
    assert str(e.value) == "split must be one of auto, test, all, got 'train'"


def test_split_test_never_scores_the_bundles_training_scans(cohort, trained, tmp_path):
    run, _ = trained
    splits = read_splits(run / "splits.csv")
    rows = read_manifest(cohort)
    manifest = _abs_manifest(rows, cohort.parent, tmp_path / "m.csv", **{r.scan_id: {"split": "test"} for r in rows})
    b = load_bundle(run / "bundle")
    from ichdet.datasets.prepared import PreparedCohort

    ids, _ = select_cases(b, PreparedCohort(manifest, b.prep, slice_labels_path=None), "test")
    assert not [s for s in ids if splits[s] in ("train", "val")]


def test_manifest_of_training_scans_only(cohort, trained, tmp_path):
    run, _ = trained
    splits = read_splits(run / "splits.csv")
    rows = [r for r in read_manifest(cohort) if splits[r.scan_id] in ("train", "val")]
    manifest = _abs_manifest(rows, cohort.parent, tmp_path / "trained.csv")
    with pytest.raises(InputError) as e:
        evaluate_bundle(run / "bundle", manifest, tmp_path / "out")
    assert str(e.value) == (f"{manifest}: every scan of the manifest was used to train or validate this bundle; "
                            "nothing is left to evaluate")
    assert not (tmp_path / "out").exists()


def test_one_class_and_foreign_manifest(cohort, trained, tmp_path):
    run, _ = trained
    splits = read_splits(run / "splits.csv")
    rows = read_manifest(cohort)
    pos = [r for r in rows if r.label == 1 and splits[r.scan_id] == "test"]
    manifest = _abs_manifest(pos, cohort.parent, tmp_path / "pos.csv")
    with pytest.raises(InputError) as e:
        evaluate_bundle(run / "bundle", manifest, tmp_path / "out")
    assert str(e.value) == f"{manifest}: the {len(pos)} case(s) to evaluate are all positive; AUC needs both classes"
    # scans the bundle never saw: all of them are scored; --split test finds none of them in splits.csv
    renamed = [ManifestRow("other" + r.scan_id, r.patient_id, r.path, r.label, r.subtypes, r.extra) for r in rows]
    foreign = _abs_manifest(renamed, cohort.parent, tmp_path / "foreign.csv")
    r = evaluate_bundle(run / "bundle", foreign, tmp_path / "foreign")
    assert r["data"]["cases"] == 16 and r["data"]["left_out_trained_or_validated"] == 0
    with pytest.raises(InputError) as e:
        evaluate_bundle(run / "bundle", foreign, tmp_path / "foreign_test", split="test")
    assert str(e.value) == f"{foreign}: no test cases in the manifest (by the bundle's splits.csv)"


def test_bundle_without_splits_csv(cohort, trained, tmp_path):
    """An old bundle copied away from its run folder: no splits.csv anywhere, so --split test cannot work."""
    run, _ = trained
    old = tmp_path / "old_bundle"
    shutil.copytree(run / "bundle", old)
    (old / "splits.csv").unlink()
    b = load_bundle(old)
    assert b.training_splits() == {} and b.name == "3d_slice_cnn"
    with pytest.raises(InputError) as e:
        evaluate_bundle(old, cohort, tmp_path / "out", split="test")
    assert str(e.value) == f"{old}: --split test needs a manifest split column or a bundle with splits.csv"
    # a bundle.json without an experiment name: the bundle's folder names it (its run's, for RUN/bundle)
    meta = json.loads((old / "bundle.json").read_text())
    del meta["experiment"]
    (old / "bundle.json").write_text(json.dumps(meta))
    assert load_bundle(old).name == "old_bundle"
    shutil.copytree(old, tmp_path / "myrun" / "bundle")
    assert load_bundle(tmp_path / "myrun" / "bundle").name == "myrun"
    # the run folder's splits.csv serves a bundle written before bundles kept their own
    (run / "bundle" / "splits.csv").rename(tmp_path / "kept.csv")
    try:
        assert load_bundle(run / "bundle").training_splits() == read_splits(run / "splits.csv")
    finally:
        (tmp_path / "kept.csv").rename(run / "bundle" / "splits.csv")


def test_train_or_resume_keeps_a_finished_run(trained, monkeypatch):
    run, sets = trained
    meta = run / "bundle" / "bundle.json"
    before = meta.stat().st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(train_mod, "train", no_training)
    assert train_or_resume(load_config("quick/3d_slice_cnn", sets), run, show_progress=False) == run / "bundle"
    # threads and the cache folder do not change the result: still the finished run
    free = [s for s in sets if not s.startswith(("threads=", "data.cache="))] + ["threads=2", f"data.cache={run}/c2"]
    assert train_or_resume(load_config("quick/3d_slice_cnn", free), run, show_progress=False) == run / "bundle"
    assert meta.stat().st_mtime_ns == before
    with pytest.raises(InputError) as e:
        train_or_resume(load_config("quick/3d_slice_cnn", sets + ["optim.epochs=2"]), run, show_progress=False)
    assert str(e.value) == f"{run / 'config.yaml'}: cannot resume with a different config; changed: optim.epochs"
    assert meta.stat().st_mtime_ns == before


def test_train_or_resume_resumes_an_interrupted_run(trained, tmp_path, monkeypatch):
    """A checkpoint newer than the bundle means the run went on after it: resume, do not start over."""
    run, sets = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    latest, meta = copy / "latest.pt", copy / "bundle" / "bundle.json"
    t = meta.stat().st_mtime
    os.utime(latest, (t + 10, t + 10))
    calls = []
    monkeypatch.setattr(train_mod, "train", lambda cfg, out, resume=False, show_progress=True:
                        calls.append((Path(out), resume)) or Path(out) / "bundle")
    assert train_or_resume(load_config("quick/3d_slice_cnn", sets), copy, show_progress=False) == copy / "bundle"
    assert calls == [(copy, True)]
    calls.clear()
    assert train_or_resume(load_config("quick/3d_slice_cnn", sets), tmp_path / "new", show_progress=False)
    assert calls == [(tmp_path / "new", False)]  # a new folder: a new run


# ---------------------------------------------------------------- subtypes
@pytest.fixture(scope="module")
def subtype_bundle(cohort, trained, tmp_path_factory) -> Path:
    """quick/3d_slice_cnn with the subtype head (model.labels=subtypes), trained like `trained`."""
    _, sets = trained
    root = tmp_path_factory.mktemp("eval_sub")
    cfg = load_config("quick/3d_slice_cnn_subtypes", sets)
    return train_or_resume(cfg, root / "run", show_progress=False)


def test_evaluate_a_subtype_bundle_per_label(cohort, subtype_bundle, tmp_path, capsys):
    from ichdet.datasets.prepared import PreparedCohort
    from ichdet.engine.scoring import score_scan

    b = load_bundle(subtype_bundle)
    assert b.has_subtypes and b.name == "3d_slice_cnn_subtypes"
    result = evaluate_bundle(subtype_bundle, cohort, tmp_path, split="all")
    preds = _predictions(tmp_path / "predictions.csv")
    assert list(preds[0]) == (["scan_id", "patient_id", "label", "score", "threshold", "decision"]
                              + [f"p_{n}" for n in SUBTYPE_LABELS] + [f"y_{n}" for n in SUBTYPE_LABELS[:-1]])
    c = PreparedCohort(cohort, b.prep, slice_labels_path=None)
    ids = [p["scan_id"] for p in preds]
    assert ids == c.scan_ids()
    y = c.label_targets(ids)
    p = np.array([[float(r[f"p_{n}"]) for n in SUBTYPE_LABELS] for r in preds])
    assert [[int(r[f"y_{n}"]) for n in SUBTYPE_LABELS[:-1]] for r in preds] == y[:, :-1].tolist()
    for i, sid in enumerate(ids[:4]):  # the probabilities are the bundle kind's (one pass with the score)
        want = score_scan(b.kind, b.model, c[sid].image, b.context, b.aggregate, b.svm)
        score, labels = want.probability, want.label_probs
        assert p[i] == pytest.approx(labels, abs=1e-6) and float(preds[i]["score"]) == pytest.approx(score, abs=1e-6)
    assert p[:, -1] == pytest.approx([float(r["score"]) for r in preds], abs=1e-12)  # "any" is the score

    saved = json.loads((tmp_path / "metrics.json").read_text())
    m = saved["models"]["3d_slice_cnn_subtypes"]
    assert list(m["subtypes"]) == list(SUBTYPE_LABELS) and m == result["models"]["3d_slice_cnn_subtypes"]
    n_auc = 0
    for j, label in enumerate(SUBTYPE_LABELS):
        known = y[:, j] >= 0
        e = m["subtypes"][label]
        assert (e["n_pos"], e["n_neg"]) == (int(y[known, j].sum()), int((y[known, j] == 0).sum()))
        if 0 < e["n_pos"] < known.sum():
            assert e["auc"] == pytest.approx(roc_auc_score(y[known, j], p[known, j]), abs=1e-9), label
            assert e["auc_ci"] is None if min(e["n_pos"], e["n_neg"]) == 1 else e["auc_ci"][0] <= e["auc"] <= e["auc_ci"][1]
            n_auc += 1
        else:
            assert e["auc"] is None and e["auc_ci"] is None
    assert n_auc >= 3 and m["subtypes"]["any"]["auc"] == pytest.approx(m["auc"], abs=1e-12)
    assert m["rsna_log_loss"] == pytest.approx(rsna_log_loss(y, p), abs=1e-9)
    # the CLI prints one line per label and the log loss
    assert cli(["evaluate", "--model", str(subtype_bundle), "--data", str(cohort), "--split", "all",
                "--out", str(tmp_path / "cli")]) == 0
    lines = capsys.readouterr().out.splitlines()
    e = m["subtypes"]["any"]

    def ci(v):
        return "no CI" if v is None else f"95% CI {v[0]:.3f}-{v[1]:.3f}"

    assert lines[1:7] == [
        (f"  {k}: AUC {v['auc']:.3f} ({ci(v['auc_ci'])}), {v['n_pos']} positive, "
         f"{v['n_neg']} negative") if v["auc"] is not None else
        f"  {k}: no AUC ({v['n_pos']} positive, {v['n_neg']} negative cases)" for k, v in m["subtypes"].items()]
    assert lines[7] == f"  RSNA weighted log loss: {m['rsna_log_loss']:.4f}" and e["n_pos"] == 7


# ---------------------------------------------------------------- CLI
def test_cli_evaluate_needs_data_or_images(trained, tmp_path, capsys):
    run, _ = trained
    base = ["evaluate", "--model", str(run / "bundle"), "--out", str(tmp_path / "o")]
    for extra in ([], ["--data", "m.csv", "--images", "imgs"]):
        assert cli(base + extra) == 2
        err = capsys.readouterr().err
        assert err == "ichdet: error: give --data MANIFEST, or --images DIR with --labels CSV\n"
    assert cli(base + ["--images", "imgs"]) == 2
    assert capsys.readouterr().err == "ichdet: error: --images needs --labels CSV\n"
    assert not (tmp_path / "o").exists()


def test_cli_evaluate_prints_the_summary(cohort, trained, tmp_path, capsys):
    run, _ = trained
    out = tmp_path / "o"
    assert cli(["evaluate", "--model", str(run / "bundle"), "--data", str(cohort), "--split", "test",
                "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())["models"]["3d_slice_cnn"]
    lines = capsys.readouterr().out.splitlines()
    lo, hi = m["auc_ci"]
    assert lines[0] == (f"3d_slice_cnn: AUC {m['auc']:.3f} (95% CI {lo:.3f}-{hi:.3f}), at threshold "
                        f"{m['threshold']:.4g}: sensitivity {m['sensitivity']:.3f}, specificity "
                        f"{m['specificity']:.3f}, accuracy {m['accuracy']:.3f} ({m['n_pos']} positive, "
                        f"{m['n_neg']} negative cases)")
    assert lines[1] == f"wrote {out}/metrics.json, predictions.csv, roc.png, confusion.png"


def test_evaluate_reformats_thin_scans_as_predict_does(trained, tmp_path):
    """The bundle was trained on 5 mm scans; a cohort of 0.625 mm scans is scored in slabs of 8
    slices, exactly as `predict` scores each scan."""
    from ichdet.inference import Predictor

    run, _ = trained
    bundle = load_bundle(run / "bundle")
    assert bundle.slice_thickness_mm == 5.0
    thin = make_cohort(tmp_path / "thin", 4, seed=11, size=64, n_slices=40, slice_thickness=0.625, difficulty=0.2)
    out = tmp_path / "eval"
    evaluate_bundle(run / "bundle", thin, out, split="all", cache=tmp_path / "cache")
    rows = {r["scan_id"]: float(r["score"]) for r in _predictions(out / "predictions.csv")}
    predictor = Predictor(bundle, precision="fp32")
    for row in read_manifest(thin):
        r = predictor.predict(row.resolved_path(thin.parent))
        assert r.slabs["slices_per_slab"] == 8 and r.slabs["n_slabs"] == 5
        assert rows[row.scan_id] == pytest.approx(r.probability, abs=1e-6)

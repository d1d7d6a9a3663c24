"""`ichdet cv` end to end on 16 tiny exported images (2 folds, 1 epoch, 64 px): out-of-fold
predictions, patient-grouped folds, pooled and per-fold metrics against scikit-learn, report,
final bundles, `evaluate_images` with a cv bundle, resuming, and the CLI's input errors."""
from __future__ import annotations

import csv
import importlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ichdet.engine.bundle import load_bundle, read_bundle_meta
from ichdet.cli import CV_ARCHS, build_parser
from ichdet.cli import run as cli
from ichdet.evaluation.cv import MODELS as MODELS_ALL
from ichdet.evaluation.cv import (
    CVOptions, _order, assign_folds, cross_validate, fold_manifest, model_config, requested,
)
from ichdet.datasets.manifest import ManifestRow, read_manifest, write_manifest
from ichdet.datasets.splits import read_splits
from ichdet.engine import load_config
from ichdet.engine.run import resolve_paths, resolve_steps_per_epoch
from ichdet.errors import InputError, InputWarning
from ichdet.evaluation.evaluate import evaluate_images
from ichdet.metrics import SUBTYPE_LABELS, delong_test, roc_auc, rsna_log_loss
from ichdet.models.efficientnet import imagenet_weights_path, pretrained_available
from ichdet.synth import make_cohort
from ichdet.synth.images import export_image_set

train_mod = importlib.import_module("ichdet.engine.train")  # `ichdet.engine.train` the attribute is the function
TINY = ["threads=1", "precision=fp32", "channels_last=false", "target_sensitivity=0.9"]
MODELS = ["cnn", "alexnet-svm"]


def _opts(**kw) -> CVOptions:
    base = dict(models=MODELS, folds=2, epochs=1, size=64, quick=True, overrides=list(TINY), show_progress=False, jobs=1)
    return CVOptions(**{**base, **kw})


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, labels.csv with id,patient,hemorrhage): 16 images of 15 patients, 7 positive;
    synth3_00008 (negative) and synth3_00009 (positive) are one patient."""
    cohort = make_cohort(tmp_path_factory.mktemp("cv_cohort"), 16, seed=3, size=64, n_slices=8, difficulty=0.2)
    out = tmp_path_factory.mktemp("cv_images")
    labels = export_image_set(cohort, out, seed=0)
    return out / "images", labels


@pytest.fixture(scope="module")
def cv_run(images, tmp_path_factory):
    """One full `cross_validate` run: (out folder, the returned result). Its AlexNet checkpoints and
    bundles take ~4 GB, so the folder is removed when the module is done."""
    img, labels = images
    out = tmp_path_factory.mktemp("cv_out")
    result = cross_validate(img, labels, out, _opts())
    yield out, result
    shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------- pieces
def test_model_order():
    assert _order(["alexnet-svm"]) == ["alexnet", "alexnet-svm"]  # the SVM needs its AlexNet, trained first
    assert _order(["alexnet-svm", "cnn"]) == ["cnn", "alexnet", "alexnet-svm"]
    with pytest.raises(InputError) as e:
        _order(["cnn", "vgg"])
    assert str(e.value) == ("unknown model(s) ['vgg']; choose from cnn, alexnet, alexnet-svm, efficientnet, "
                            "efficientnet-svm, cnn-subtypes, alexnet-subtypes or all")
    # by default the 2D paper's three, then the ImageNet EfficientNet-Lite0 fine-tuned and frozen + SVM
    assert requested(CVOptions()) == ["cnn", "alexnet", "alexnet-svm", "efficientnet", "efficientnet-svm"]
    assert _order(["efficientnet-svm"]) == ["efficientnet-svm"]  # frozen ImageNet features: no network to train first
    assert requested(CVOptions(models=["cnn"], subtypes=True)) == ["cnn", "cnn-subtypes", "alexnet-subtypes"]
    assert _order(requested(CVOptions(subtypes=True))) == list(MODELS_ALL)


def _rows(n_pos_patients: int, n_neg_patients: int, pairs: int = 0) -> list[ManifestRow]:
    rows, k = [], 0
    for y, n in ((1, n_pos_patients), (0, n_neg_patients)):
        for p in range(n):
            for _ in range(2 if p < pairs else 1):
                rows.append(ManifestRow(f"img{k:02d}", f"pat{y}{p}", f"img{k:02d}.png", y))
                k += 1
    return rows


def test_assign_folds_groups_patients_and_stratifies():
    rows = _rows(6, 9, pairs=3)  # 6 positive and 9 negative patients, 3 of each class with two images
    fold_of = assign_folds(rows, 3, seed=1)
    assert set(fold_of) == {r.scan_id for r in rows} and set(fold_of.values()) == {0, 1, 2}
    by_patient: dict[str, set[int]] = {}
    for r in rows:
        by_patient.setdefault(r.patient_id, set()).add(fold_of[r.scan_id])
    assert all(len(f) == 1 for f in by_patient.values())
    for f in range(3):
        labels = [r.label for r in rows if fold_of[r.scan_id] == f]
        assert 0 < sum(labels) < len(labels)  # both classes in every held-out fold
    assert assign_folds(rows, 3, seed=1) == fold_of  # deterministic
    with pytest.raises(InputError) as e:
        assign_folds(_rows(4, 9), 5, seed=0)
    assert str(e.value) == ("5-fold cross-validation needs at least 5 positive and negative patients; "
                            "the images have 4 positive and 9 negative")
    with pytest.raises(InputError) as e:
        assign_folds(_rows(4, 9), 1, seed=0)
    assert str(e.value) == ("1-fold cross-validation needs at least 2 positive and negative patients; "
                            "the images have 4 positive and 9 negative")


def test_fold_manifest_holds_out_one_fold(tmp_path):
    rows = _rows(6, 9, pairs=3)
    fold_of = assign_folds(rows, 3, seed=1)
    path = fold_manifest(rows, tmp_path, fold_of, 2, 0.25, 0, tmp_path / "f2" / "manifest.csv")
    got = {r.scan_id: r for r in read_manifest(path)}
    assert {s for s, r in got.items() if r.extra["split"] == "test"} == {s for s, f in fold_of.items() if f == 2}
    rest = {r.extra["split"] for s, r in got.items() if fold_of[s] != 2}
    assert rest == {"train", "val"}
    by_patient: dict[str, set[str]] = {}
    for r in got.values():
        by_patient.setdefault(r.patient_id, set()).add(r.extra["split"])
        assert Path(r.path).is_absolute() and Path(r.path) == (tmp_path / r.scan_id).with_suffix(".png").resolve()
    assert all(len(s) == 1 for s in by_patient.values())
    final = fold_manifest(rows, tmp_path, None, None, 0.25, 0, tmp_path / "final.csv")
    assert {r.extra["split"] for r in read_manifest(final)} == {"train", "val"}  # no test fold


def _split_manifest(path: Path, n_train: int, n_val: int) -> Path:
    rows = [ManifestRow(f"s{i}", f"p{i}", f"s{i}.png", i % 2, extra={"split": "train" if i < n_train else "val"})
            for i in range(n_train + n_val)]
    return write_manifest(path, rows)


def test_model_config_per_model(tmp_path):
    m = _split_manifest(tmp_path / "manifest.csv", 60, 15)
    opts = _opts(weights="", epochs=3, size=96)
    cnn = model_config("cnn", m, opts, tmp_path / "cache")
    assert cnn.experiment == "2d_cnn" and cnn.optim.steps_per_epoch == 0  # one pass, resolved when the run opens
    batch = load_config("quick/2d_cnn").optim.batch_size
    assert resolve_steps_per_epoch(resolve_paths(cnn)).optim.steps_per_epoch == math.ceil(60 / batch)
    assert (cnn.optim.epochs, cnn.data.size, cnn.data.crop_head, cnn.optim.patience) == (3, 96, True, 0)
    assert (cnn.threads, cnn.precision, cnn.channels_last, cnn.target_sensitivity) == (1, "fp32", False, 0.9)
    assert cnn.data.manifest == str(m) and cnn.data.slice_labels == "" and cnn.optim.select_metric == "auc"
    alex = model_config("alexnet", m, opts, tmp_path / "cache")
    assert alex.experiment == "2d_alexnet" and alex.model.weights == "" and alex.data.size == 96
    assert alex.model.lr_mult == {"features": 1.0}  # random convolutions learn at the full rate
    svm = model_config("alexnet-svm", m, opts, tmp_path / "cache")
    assert svm.stage == "svm" and svm.model.init_from == "alexnet" and svm.experiment == "2d_alexnet_svm"
    full = _opts(quick=False, epochs=None, size=None)
    assert load_config("cv/2d_cnn", [f"data.manifest={m}", f"data.cache={tmp_path / 'cache'}", "seed=0", *TINY]) == \
        model_config("cnn", m, full, tmp_path / "cache")  # configs/cv/2d_cnn.yaml, the run's values, --set
    assert [model_config(n, m, full, tmp_path / "cache").optim.epochs for n in ("cnn", "alexnet")] == [20, 8]
    # cv/2d_cnn.yaml: the CNN sees the 224 px images AlexNet and EfficientNet see (2d_cnn itself: 256)
    assert [model_config(n, m, full, tmp_path / "cache").data.size for n in ("cnn", "alexnet", "efficientnet")] == [224] * 3
    # the subtype models: their network's epochs and weights, the multi-label head and the RSNA loss
    per_net = _opts(weights="w.pt", epochs={"cnn": 4, "alexnet": 2})
    sub = model_config("alexnet-subtypes", m, per_net, tmp_path / "cache")
    assert (sub.experiment, sub.model.weights, sub.optim.epochs) == ("2d_alexnet_subtypes", "w.pt", 2)
    assert sub.model.lr_mult == {"features": 0.1}  # ImageNet's convolutions: 2d_alexnet.yaml's gentler rate
    assert model_config("alexnet", m, _opts(quick=False, weights="imagenet"), tmp_path / "cache").model.lr_mult == \
        load_config("2d_alexnet").model.lr_mult == {"features": 0.1}
    assert (sub.model.labels, sub.optim.loss, sub.data.crop_head) == ("subtypes", "rsna", True)
    assert model_config("cnn-subtypes", m, per_net, tmp_path / "cache").optim.epochs == 4
    demo = _opts(configs="demo/quick", epochs=None, size=None)  # `ichdet demo`'s own folder of configs
    assert model_config("cnn", m, demo, tmp_path / "cache") == load_config(
        "demo/quick/2d_cnn", [f"data.manifest={m}", f"data.cache={tmp_path / 'cache'}", "seed=0", *TINY])


def test_model_config_top_level_overrides_reach_the_svm(tmp_path):
    svm = model_config("alexnet-svm", tmp_path / "m.csv", _opts(), tmp_path / "cache")
    assert (svm.threads, svm.precision, svm.channels_last, svm.target_sensitivity) == (1, "fp32", False, 0.9)


# ---------------------------------------------------------------- end to end
def test_every_image_scored_once_per_model_out_of_fold(images, cv_run):
    img, labels = images
    out, result = cv_run
    preds = _csv(out / "predictions.csv")
    truth = {r["id"]: (int(r["hemorrhage"]), r["patient"]) for r in _csv(labels)}
    assert len(truth) == 16
    assert [p["model"] for p in preds] == ["cnn"] * 16 + ["alexnet-svm"] * 16  # the AlexNet is not reported
    for name in MODELS:
        mine = [p for p in preds if p["model"] == name]
        assert sorted(p["scan_id"] for p in mine) == sorted(truth)
        assert all(int(p["label"]) == truth[p["scan_id"]][0] for p in mine)
    # folds: what assign_folds gives the prepared folder, same for both models, patients never split
    fold_of = assign_folds(read_manifest(out / "data" / "manifest.csv"), 2, 0)
    assert {p["scan_id"]: int(p["fold"]) for p in preds} == fold_of
    assert truth["synth3_00008"][1] == truth["synth3_00009"][1]
    assert fold_of["synth3_00008"] == fold_of["synth3_00009"]
    for f in (0, 1):
        test_ids = {r.scan_id for r in read_manifest(out / "folds" / str(f) / "manifest.csv")
                    if r.extra["split"] == "test"}
        assert test_ids == {s for s, g in fold_of.items() if g == f}
        for name in ("cnn", "alexnet", "alexnet-svm"):  # no held-out image in any training or validation split
            trained = read_splits(out / "folds" / str(f) / name / "bundle" / "splits.csv")
            assert {s for s, v in trained.items() if v in ("train", "val")}.isdisjoint(test_ids)
    # each row's threshold is its fold's model's own operating point
    for p in preds:
        t = read_bundle_meta(out / "folds" / p["fold"] / p["model"] / "bundle")["operating_point"]["threshold"]
        assert float(p["max_sensitivity_threshold"]) == pytest.approx(t, rel=1e-5)


def test_metrics_json_matches_sklearn_and_delong(cv_run):
    out, result = cv_run
    saved = json.loads((out / "metrics.json").read_text())
    assert list(saved["models"]) == MODELS
    assert saved["data"] == {"images": 16, "patients": 15, "positives": 7}
    assert saved["cv"] == {"folds": 2, "seed": 0, "grouped_by": "patient", "stratified": True,
                           "val_fraction_of_training_folds": 0.2, "weights": "random", "quick": True,
                           "epochs": {"cnn": 1, "alexnet": 1}, "subtypes": False,  # as each network trained
                           "started_from": {"cnn": "random", "alexnet-svm": "trained network"}}
    preds = _csv(out / "predictions.csv")
    order = [p["scan_id"] for p in preds if p["model"] == "cnn"]
    cols = {}
    for name in MODELS:
        mine = {p["scan_id"]: p for p in preds if p["model"] == name}
        y = np.array([int(mine[s]["label"]) for s in order])
        s = np.array([float(mine[s]["score"]) for s in order])
        folds = np.array([int(mine[s]["fold"]) for s in order])
        t = np.array([float(mine[s]["max_sensitivity_threshold"]) for s in order])
        cols[name] = s
        m = saved["models"][name]
        assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
        assert m["auc"] == result["models"][name]["auc"]
        assert (m["n_pos"], m["n_neg"]) == (7, 9)
        pred = s >= 0.5  # the classifier's own decision
        assert m["threshold"] == 0.5 and m["decision"] == "score >= 0.5 (the classifier's own decision)"
        assert m["sensitivity"] == pytest.approx((pred & (y == 1)).sum() / 7)
        assert m["specificity"] == pytest.approx((~pred & (y == 0)).sum() / 9)
        assert m["accuracy"] == pytest.approx((pred == (y == 1)).mean())
        # the max-sensitivity figures pool each fold's own threshold
        ms = m["max_sensitivity"]
        assert ms["threshold"] == pytest.approx(sorted(set(t.tolist())), rel=1e-5)
        pooled = s >= t
        assert ms["sensitivity"] == pytest.approx((pooled & (y == 1)).sum() / 7)
        assert ms["specificity"] == pytest.approx((~pooled & (y == 0)).sum() / 9)
        assert ms["chosen_on"] == "each fold's validation part of its training folds"
        # per fold: size and AUC of each held-out fold
        assert [f["fold"] for f in m["folds"]] == [0, 1]
        assert sum(f["n"] for f in m["folds"]) == 16
        for f in m["folds"]:
            k = folds == f["fold"]
            assert f["n"] == int(k.sum())
            assert f["auc"] == pytest.approx(roc_auc(y[k], s[k]), abs=1e-6)
            assert f["accuracy"] == pytest.approx((pred[k] == (y[k] == 1)).mean())
        assert m["label"] == {"cnn": "CNN from scratch", "alexnet-svm": "AlexNet-SVM"}[name]
        assert m["bundle"] == str(out / "bundles" / name)
    y = np.array([int(p["label"]) for p in preds if p["model"] == "cnn"])
    p_ref = delong_test(y, cols["cnn"], cols["alexnet-svm"])["p"]
    assert saved["models"]["cnn"]["delong_pairwise"] == {"alexnet-svm": pytest.approx(p_ref, abs=1e-4)}
    assert saved["models"]["alexnet-svm"]["delong_pairwise"] == {"cnn": pytest.approx(p_ref, abs=1e-4)}


def test_report_and_bundles(cv_run):
    out, result = cv_run
    md = (out / "report.md").read_text()
    assert md.startswith("# ichdet cv: CNN vs AlexNet vs AlexNet-SVM\n")
    assert ("> **⚠ AlexNet started from random weights (no `--weights`): this is not the paper's transfer "
            "learning.") in md
    assert ("16 images of 15 patients (7 with haemorrhage), 2 folds stratified by label and grouped by patient "
            "(seed 0).") in md
    assert ("| model | started from | pooled AUC (95% CI, DeLong) | per-fold AUC (mean ± sd) | accuracy | sensitivity | "
            "specificity | DeLong p vs CNN from scratch | DeLong p vs AlexNet-SVM |") in md
    assert result["cv"]["started_from"] == {"cnn": "random", "alexnet-svm": "trained network"}
    for name, label in (("cnn", "CNN from scratch"), ("alexnet-svm", "AlexNet-SVM")):
        m = result["models"][name]
        lo, hi = m["auc_ci"]
        row = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
        start = result["cv"]["started_from"][name]
        assert row.startswith(f"| {label} | {start} | {m['auc']:.3f} ({lo:.3f}–{hi:.3f}) |")
        assert f"| {100 * m['accuracy']:.1f}% | {100 * m['sensitivity']:.1f}% | {100 * m['specificity']:.1f}% |" in row
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "index.html").is_file()
    cnn = load_bundle(out / "bundles" / "cnn")
    assert (out / "bundles" / "cnn" / "bundle.json").is_file()
    assert cnn.kind == "slice" and cnn.name == "2d_cnn"
    assert cnn.prep.size == 64 and cnn.prep.crop_head and cnn.prep.windows == ("brain",)
    svm = load_bundle(out / "bundles" / "alexnet-svm")
    assert svm.kind == "alexnet_svm" and svm.svm is not None and svm.prep.windows == ("brain", "subdural", "bone")
    # trained on PNGs: a CT given to it later gets the brain window in all three channels, as the PNGs had
    assert svm.training_units == cnn.training_units == "display" and svm.input_prep.grey and not cnn.input_prep.grey
    assert "calibration" in cnn.meta and "calibration" not in svm.meta  # the SVM's own Platt scaling is its svc's
    assert load_bundle(out / "bundles" / "alexnet").kind == "slice"
    # the final bundles were trained on every image (train/val), none held out
    assert set(cnn.training_splits().values()) == {"train", "val"} and len(cnn.training_splits()) == 16


def test_evaluate_images_with_a_cv_bundle(images, cv_run, tmp_path):
    img, labels = images
    out, _ = cv_run
    result = evaluate_images(out / "bundles" / "cnn", img, labels, tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["models"].keys() == {"2d_cnn"} and saved["data"]["split"] == "all"
    assert saved["data"]["cases"] == 16 and saved["data"]["includes_training_cases"] == 16
    assert saved["data"]["manifest"] == str((tmp_path / "data" / "manifest.csv").resolve())
    m = saved["models"]["2d_cnn"]
    preds = _csv(tmp_path / "predictions.csv")
    assert len(preds) == 16
    y = np.array([int(p["label"]) for p in preds])
    s = np.array([float(p["score"]) for p in preds])
    assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6) == result["models"]["2d_cnn"]["auc"]
    assert m["threshold"] == pytest.approx(load_bundle(out / "bundles" / "cnn").threshold)
    assert (tmp_path / "roc.png").is_file() and (tmp_path / "confusion.png").is_file()


def test_parallel_folds_give_the_sequential_results(images, tmp_path, capfd):
    """Two folds and the final model in two worker processes (one torch thread each, as TINY sets)
    give the same out-of-fold predictions, byte for byte, and the same final weights as one run
    after another; each worker's log lines say which run they come from."""
    img, labels = images
    runs = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        runs[jobs] = cross_validate(img, labels, out, _opts(models=["cnn"], final=True, jobs=jobs))
        assert sorted(p.parents[2].name for p in out.glob("folds/*/cnn/bundle/bundle.json")) == ["0", "1"]
    err = capfd.readouterr().err
    assert re.search(r"^cv: 3 training runs, 2 at a time with \d+ thread\(s\) each$", err, re.M)
    assert f"[final] bundle: {tmp_path / 'jobs2' / 'final' / 'cnn' / 'bundle'} (validation AUC" in err
    assert f"[fold 2] bundle: {tmp_path / 'jobs2' / 'folds' / '1' / 'cnn' / 'bundle'} (validation AUC" in err
    assert "] [" not in err  # a worker that runs a second task does not stack prefixes
    assert (tmp_path / "jobs1" / "predictions.csv").read_bytes() == (tmp_path / "jobs2" / "predictions.csv").read_bytes()
    assert runs[1]["models"]["cnn"]["auc"] == runs[2]["models"]["cnn"]["auc"]
    weights = [load_bundle(tmp_path / f"jobs{j}" / "bundles" / "cnn").model.state_dict() for j in (1, 2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_second_run_reuses_the_finished_runs(images, cv_run, monkeypatch):
    img, labels = images
    out, first = cv_run
    metas = sorted(out.glob("folds/*/*/bundle/bundle.json")) + sorted(out.glob("final/*/bundle/bundle.json"))
    assert len(metas) == 9  # 2 folds + final, 3 runs each
    before = {p: p.stat().st_mtime_ns for p in metas}

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(train_mod, "train", no_training)  # reuse is proved by this, not by a time bound
    again = cross_validate(img, labels, out, _opts())
    assert {p: p.stat().st_mtime_ns for p in metas} == before
    for name in MODELS:
        for key in ("auc", "auc_ci", "sensitivity", "specificity", "folds", "delong_pairwise", "max_sensitivity"):
            assert again["models"][name][key] == first["models"][name][key], (name, key)
    # another config for an existing run folder is an error, not a silent reuse
    with pytest.raises(InputError, match="cannot resume with a different config; changed: optim.epochs"):
        cross_validate(img, labels, out, _opts(epochs=2))


def test_ichdet_train_on_the_cv_config_reproduces_the_cv_run(cv_run, tmp_path):
    """`ichdet train cv/quick/NAME` with the run's data and seed and cv's options as --set trains the
    model cv trained: the same resolved config, key by key, and the same weights."""
    import torch
    import yaml

    out, _ = cv_run
    fold = out / "folds" / "0"
    shutil.copytree(fold / "alexnet", tmp_path / "alexnet")  # the SVM's model.init_from: a sibling run
    run_values = [f"data.manifest={fold / 'manifest.csv'}", f"data.cache={out / 'cache'}", "seed=0"]
    for name, options in (("cnn", ["optim.epochs=1", "data.size=64"]), ("alexnet-svm", [])):
        argv = ["train", f"cv/quick/{MODELS_ALL[name]}", "--out", str(tmp_path / name), "--quiet"]
        assert cli(argv + [a for s in run_values + options + TINY for a in ("--set", s)]) == 0
        cv_trained = yaml.safe_load((fold / name / "config.yaml").read_text())
        trained = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        for section, values in cv_trained.items():
            for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
                got = trained[section] if key is None else trained[section][key]
                assert got == value, (name, section, key)
        assert trained == cv_trained
    ours = torch.load(tmp_path / "cnn" / "bundle" / "weights.pt", weights_only=True)
    theirs = torch.load(fold / "cnn" / "bundle" / "weights.pt", weights_only=True)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# ---------------------------------------------------------------- CLI
def test_cli_cv_arch_chooses_architectures_and_model_is_refused(capsys):
    assert CV_ARCHS == (*MODELS_ALL, "all")
    base = ["cv", "--images", "i", "--labels", "l", "--out", "o"]
    assert build_parser().parse_args(base).arch == "all"
    assert build_parser().parse_args(base + ["--arch", "alexnet-svm"]).arch == "alexnet-svm"
    hint = ("cv takes no --model (a bundle folder in the other commands); choose architectures with --arch (cnn, alexnet, "
            "alexnet-svm, efficientnet, efficientnet-svm, cnn-subtypes, alexnet-subtypes or all)")
    for argv in (base + ["--model", "cnn"], ["cv", "--model", "all"], base + ["--model"]):
        assert cli(argv) == 2, argv
        assert capsys.readouterr() == ("", f"ichdet: error: {hint}\n")
    with pytest.raises(InputError) as e:
        build_parser().parse_args(base + ["--model", "alexnet"])
    assert str(e.value) == hint
    with pytest.raises(SystemExit):
        cli(["cv", "--help"])
    assert "--model" not in capsys.readouterr().out


def test_cli_cv_missing_labels(images, tmp_path, capsys):
    img, _ = images
    missing = tmp_path / "missing.csv"
    assert cli(["cv", "--images", str(img), "--labels", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"ichdet: error: {missing}: labels CSV not found\n"
    assert not (tmp_path / "o").exists()


def test_cli_cv_too_few_images_for_the_folds(images, tmp_path, capsys):
    img, labels = images
    few = tmp_path / "few"
    few.mkdir()
    recs = _csv(labels)
    keep = [r for r in recs if r["hemorrhage"] == "1"][:3] + [r for r in recs if r["hemorrhage"] == "0"][:3]
    for r in keep:
        shutil.copy(img / f"{r['id']}.png", few / f"{r['id']}.png")
    (tmp_path / "few.csv").write_text("id,patient,hemorrhage\n" + "".join(
        f"{r['id']},{r['id']},{r['hemorrhage']}\n" for r in keep))
    assert cli(["cv", "--images", str(few), "--labels", str(tmp_path / "few.csv"), "--folds", "5",
                "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ("ichdet: error: 5-fold cross-validation needs at least 5 positive and "
                                       "negative patients; the images have 3 positive and 3 negative\n")


def test_label_column_choice_reaches_the_folder_reader(images, tmp_path):
    img, labels = images
    rows = _csv(labels)
    two = tmp_path / "two_labels.csv"
    with open(two, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "any", "flag", "subdural"])
        w.writerows([r["id"], r["hemorrhage"], r["hemorrhage"], r["hemorrhage"]] for r in rows)
    # subtype-named columns are subtypes, not label candidates, while another 0/1 column is
    with pytest.raises(InputError, match=r"several 0/1 columns could be the label: any, flag; pass --label-column"):
        cross_validate(img, two, tmp_path / "a", _opts())
    with pytest.raises(InputError, match=r"^50-fold cross-validation needs at least 50 positive and negative patients"):
        cross_validate(img, two, tmp_path / "b", _opts(folds=50, label_column="any"))
    got = read_manifest(tmp_path / "b" / "data" / "manifest.csv")
    by_id = sorted(rows, key=lambda r: r["id"])
    assert [r.label for r in got] == [int(r["hemorrhage"]) for r in by_id]
    assert [r.subtypes for r in got] == [{"subdural": int(r["hemorrhage"])} for r in by_id]


def test_patient_column_found_by_the_folder_reader_unless_named(images, tmp_path):
    """cv passes only an explicit patient column on; `prepare_folder` finds a usual one, or warns."""
    img, labels = images
    recs = _csv(labels)

    def patients(labels_csv: Path, out: Path, **kw) -> dict[str, str]:  # {scan_id: patient_id} of OUT/data
        with pytest.raises(InputError, match=r"^50-fold cross-validation"):  # stops after the manifest
            cross_validate(img, labels_csv, out, _opts(folds=50, **kw))
        return {r.scan_id: r.patient_id for r in read_manifest(out / "data" / "manifest.csv")}

    renamed, plain = tmp_path / "renamed.csv", tmp_path / "plain.csv"
    renamed.write_text("id,Patient_ID,hemorrhage\n" + "".join(f"{r['id']},{r['patient']},{r['hemorrhage']}\n"
                                                            for r in recs))
    plain.write_text("id,hemorrhage\n" + "".join(f"{r['id']},{r['hemorrhage']}\n" for r in recs))
    own = {r["id"]: r["id"] for r in recs}
    grouped = patients(renamed, tmp_path / "a")
    assert grouped == {r["id"]: r["patient"] for r in recs} and len(set(grouped.values())) == 15
    assert patients(renamed, tmp_path / "b", patient_column="id") == own  # an explicit column wins
    with pytest.warns(InputWarning) as caught:
        assert patients(plain, tmp_path / "c") == own
    assert [str(w.message) for w in caught if w.category is InputWarning] == [
        f"{plain}: no patient column (named patient, patient_id, patientid, patient id, subject, subject_id, "
        f"or given by --patient-column): each image is its own patient"]


# ---------------------------------------------------------------- subtypes
@pytest.fixture(scope="module")
def subtype_images(tmp_path_factory) -> tuple[Path, Path]:
    """The `images` cohort exported with the five subtype columns in labels.csv."""
    cohort = make_cohort(tmp_path_factory.mktemp("cv_sub_cohort"), 16, seed=3, size=64, n_slices=8, difficulty=0.2)
    out = tmp_path_factory.mktemp("cv_sub_images")
    return out / "images", export_image_set(cohort, out, seed=0, subtypes=True)


def test_subtype_labels_reach_the_image_manifest(subtype_images, tmp_path):
    from ichdet.datasets.adapters.folder import prepare_folder
    from ichdet.datasets.manifest import SUBTYPES

    img, labels = subtype_images
    recs = {r["id"]: r for r in _csv(labels)}
    assert list(next(iter(recs.values()))) == ["id", "patient", "hemorrhage", *SUBTYPES]
    rows = read_manifest(prepare_folder(img, tmp_path / "m.csv", labels=labels, images=img))
    assert len(rows) == 16
    for r in rows:
        rec = recs[r.scan_id]
        assert r.label == int(rec["hemorrhage"])
        assert r.subtypes == {k: int(rec[k]) for k in SUBTYPES if rec[k] != ""}
        if r.label == 0:
            assert r.subtypes == dict.fromkeys(SUBTYPES, 0)
    assert sum(any(r.subtypes.values()) for r in rows) >= 4  # most positive images name their subtype


def test_cv_subtype_model_per_label_pooled_and_per_fold(subtype_images, images, tmp_path):
    img, labels = subtype_images
    out = tmp_path / "cv"
    result = cross_validate(img, labels, out, _opts(models=["cnn"], subtypes=True, final=False,
                                                    epochs={"cnn": 1, "alexnet": 1}))
    assert list(result["models"]) == ["cnn", "cnn-subtypes", "alexnet-subtypes"]
    assert result["cv"]["subtypes"] is True
    assert "subtypes" not in result["models"]["cnn"]
    preds = _csv(out / "predictions.csv")
    assert list(preds[0]) == (["model", "scan_id", "fold", "label", "score", "max_sensitivity_threshold"]
                              + [f"p_{n}" for n in SUBTYPE_LABELS] + [f"y_{n}" for n in SUBTYPE_LABELS[:-1]])
    assert all(p["p_any"] == "" for p in preds if p["model"] == "cnn")
    saved = json.loads((out / "metrics.json").read_text())
    md = (out / "report.md").read_text()
    assert "### 2D subtype models, pooled out-of-fold predictions: AUC (95% CI), positive cases" in md
    for name in ("cnn-subtypes", "alexnet-subtypes"):
        mine = [p for p in preds if p["model"] == name]
        assert len(mine) == 16
        y = np.array([[int(p[f"y_{n}"]) for n in SUBTYPE_LABELS[:-1]] + [int(p["label"])] for p in mine])
        pr = np.array([[float(p[f"p_{n}"]) for n in SUBTYPE_LABELS] for p in mine])
        folds = np.array([int(p["fold"]) for p in mine])
        assert pr[:, -1] == pytest.approx([float(p["score"]) for p in mine], abs=1e-12)
        m = saved["models"][name]
        assert m["rsna_log_loss"] == pytest.approx(rsna_log_loss(y, pr), abs=1e-9)
        assert m["subtypes"]["any"]["auc"] == pytest.approx(m["auc"], abs=1e-12)
        n_auc = 0
        for j, label in enumerate(SUBTYPE_LABELS):
            known = y[:, j] >= 0
            e = m["subtypes"][label]
            assert (e["n_pos"], e["n_neg"]) == (int(y[known, j].sum()), int((y[known, j] == 0).sum()))
            if e["auc"] is not None:
                assert e["auc"] == pytest.approx(roc_auc_score(y[known, j], pr[known, j]), abs=1e-9)
                n_auc += 1
        assert n_auc >= 2
        assert [f["fold"] for f in m["subtype_folds"]] == [0, 1]
        for f in m["subtype_folds"]:
            k = folds == f["fold"]
            assert f["n"] == int(k.sum())
            assert f["rsna_log_loss"] == pytest.approx(rsna_log_loss(y[k], pr[k]), abs=1e-9)
            e = f["subtypes"]["any"]
            assert e["auc"] == pytest.approx(roc_auc_score(y[k, -1], pr[k, -1]), abs=1e-9)
        row = next(line for line in md.splitlines() if line.startswith(f"| {m['label']} | ") and " pos |" in line)
        assert row.endswith(f" | {m['rsna_log_loss']:.4f} |")
    # a labels CSV without subtype columns cannot train the subtype models
    with pytest.raises(InputError) as e:
        cross_validate(images[0], images[1], tmp_path / "none", _opts(models=["cnn"], subtypes=True))
    assert str(e.value) == (f"{images[1]}: the subtype models need subtype columns (epidural, intraparenchymal, "
                            "intraventricular, subarachnoid, subdural) in the labels CSV")


@pytest.mark.skipif(not pretrained_available(), reason="the pretrained extra (ichdet[pretrained]) is not installed")
def test_efficientnet_svm_on_frozen_imagenet_features(images, tmp_path):
    """`--arch efficientnet-svm`: a linear SVM on the frozen ImageNet EfficientNet-Lite0's features, no
    CT training; its bundle's network carries the SVM in its last layer, so the network's own P(bleed)
    is the SVM's probability (and Grad-CAM explains the SVM)."""
    img, labels = images
    result = cross_validate(img, labels, tmp_path / "cv", _opts(models=["efficientnet-svm"], folds=2))
    assert result["cv"]["started_from"] == {"efficientnet-svm": "imagenet"}
    assert list(result["models"]) == ["efficientnet-svm"] and 0.0 <= result["models"]["efficientnet-svm"]["auc"] <= 1.0
    assert "| EfficientNet-Lite0-SVM (frozen ImageNet features) | imagenet |" in (tmp_path / "cv" / "report.md").read_text()
    b = load_bundle(tmp_path / "cv" / "bundles" / "efficientnet-svm")
    assert (b.kind, b.meta["model"]["name"], b.prep.windows) == ("slice_svm", "efficientnet_lite0", ("brain", "subdural", "bone"))
    state = torch.load(imagenet_weights_path(), weights_only=True, map_location="cpu")
    assert torch.equal(b.model._blocks[7]._depthwise_conv.weight, state["_blocks.7._depthwise_conv.weight"])  # frozen
    x = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = b.model.eval().forward_features(x)
        network = b.model.forward_head(features).softmax(1)[:, 1].double().numpy()
    np.testing.assert_allclose(network, b.svm.predict_proba(features.double().numpy())[:, 1], rtol=0, atol=1e-5)


def test_cli_cv_epochs_for_every_network_or_per_network(tmp_path, capsys):
    """`--epochs 16` sets every network's passes; `--epochs cnn=16` the CNN's (and its subtype model's) only."""
    from dataclasses import replace

    base = ["cv", "--images", "i", "--labels", "l", "--out", "o"]
    assert build_parser().parse_args(base + ["--epochs", "16"]).epochs == 16
    per_net = build_parser().parse_args(base + ["--epochs", "cnn=16, alexnet=3"]).epochs
    assert per_net == {"cnn": 16, "alexnet": 3}
    m, opts = tmp_path / "m.csv", replace(_opts(quick=False), epochs=per_net)
    got = {n: model_config(n, m, opts, tmp_path / "cache").optim.epochs
           for n in ("cnn", "cnn-subtypes", "alexnet", "efficientnet")}
    assert got == {"cnn": 16, "cnn-subtypes": 16, "alexnet": 3,
                   "efficientnet": load_config("cv/2d_efficientnet").optim.epochs}  # 10: its config's
    for value, message in (
            ("0", "passes must be a positive integer, got '0' in '0'"),
            ("cnn=x", "passes must be a positive integer, got 'x' in 'cnn=x'"),
            ("alexnet-svm=2", "'alexnet-svm=2' in 'alexnet-svm=2' is not NAME=N with NAME one of cnn, alexnet, "
                              "efficientnet, cnn-subtypes, alexnet-subtypes (an SVM trains no passes)")):
        with pytest.raises(SystemExit) as e:  # argparse's own exit for a bad option value
            cli(base + ["--epochs", value])
        assert e.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"ichdet cv: error: argument --epochs: {message}"

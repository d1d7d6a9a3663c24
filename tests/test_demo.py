"""`ichdet demo` end to end on a tiny profile: every row of both tables filled, bundles kept, resumable."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from ichdet.engine.bundle import load_bundle
from ichdet.engine.config import EXPERIMENTS, load_config
from ichdet.demo import (FULL, PROPOSED, QUICK, ROWS_3D, ROWS_SUBTYPES, SEGMENTATION, SUBTYPE_ORDER, TRAIN_ORDER,
                         Profile, run_demo)
from ichdet.evaluation.cv import MODELS
from ichdet.metrics import SUBTYPE_LABELS, rsna_log_loss

CV_2D = tuple(MODELS.values())  # the 2D experiments the demo cross-validates
FAST = {"threads": 1, "precision": "fp32", "channels_last": False}
SMALL_3D = {"data": {"size": 64}, "optim": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "val_samples": 24},
            **FAST}
TINY = {  # experiment name prefix -> what shrinks it, over its configs/demo/quick config
    "3d_slice_cnn": {**SMALL_3D, "model": {"kwargs": {"base_width": 2, "feature_dim": 16, "dropout": 0.5}}},
    "3d_lstm": {**SMALL_3D, "model": {"kwargs": {"hidden": 8}}},
    "3d_e2e": {**SMALL_3D, "model": {"kwargs": {"hidden": 8, "encoder_kw": {"base_width": 2, "feature_dim": 16}}}},
    "3d_slice_effnet": SMALL_3D,
    "3d_effnet": {**SMALL_3D, "model": {"kwargs": {"hidden": 8}}},
    "3d_": {},
    "2d_alexnet_svm": FAST,
    SEGMENTATION: {"data": {"size": 64}, "optim": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4}, **FAST},
    "2d_": {"data": {"size": 64}, "optim": {"epochs": 1}, **FAST},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Profile:
    """A tiny profile whose configs (a folder of NAME.yaml) shrink the quick demo's."""
    folder = tmp_path_factory.mktemp("tiny_configs")
    for name in TRAIN_ORDER + SUBTYPE_ORDER + CV_2D + (SEGMENTATION,) + tuple(c for _, c in QUICK.starts):
        shrink = next(v for prefix, v in TINY.items() if name.startswith(prefix))
        base = EXPERIMENTS / "demo" / "quick" / f"{name}.yaml"
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"base": str(base), **shrink}))
    return Profile(scans=30, size=64, slices=8, difficulty=0.2, configs=str(folder), cv_folds=2, cv_images=16,
                   starts=QUICK.starts)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, seed=3, show_progress=False, profile=tiny)


def test_every_profile_names_a_config_for_every_model():
    """The demo's recipes are configs (configs/demo/, configs/demo/quick/), one per experiment."""
    for profile in (QUICK, FULL):
        for name in TRAIN_ORDER + SUBTYPE_ORDER + CV_2D + (SEGMENTATION,):
            assert load_config(f"{profile.configs}/{name}", ["data.manifest=m.csv"]).experiment == name
    for name, config in QUICK.starts:  # the quick binary slice CNN starts from the subtype one
        cfg = load_config(f"demo/quick/{config}", ["data.manifest=m.csv"])
        assert (cfg.experiment, cfg.model.init_from) == (name, "3d_slice_cnn_subtypes")
    assert (load_config("demo/quick/3d_lstm2_e2e").optim.epochs, load_config("demo/3d_lstm2_e2e").optim.epochs) == (2, 16)
    assert (load_config("demo/quick/2d_cnn").optim.epochs, load_config("demo/2d_cnn").optim.epochs) == (20, 40)


def test_every_3d_row_is_filled_on_the_test_split(demo):
    out, result = demo
    assert list(result["models"]) == list(ROWS_3D)
    splits = load_bundle(out / "runs" / PROPOSED / "bundle").training_splits()
    test = sorted(s for s, v in splits.items() if v == "test")
    assert result["data"]["test_scans"] == len(test) > 0
    for name, m in result["models"].items():
        assert 0.0 <= m["auc"] <= 1.0 and m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1], name
        assert m["seconds_per_scan"] > 0
        assert (m["delong_p"] is None) == (name == PROPOSED)
        assert m["n_pos"] + m["n_neg"] == len(test)
        assert m["threshold"] == pytest.approx(load_bundle(out / "runs" / name / "bundle").threshold)


def test_report_has_both_tables_figures_and_the_synthetic_warning(demo):
    out, result = demo
    md = (out / "report" / "report.md").read_text()
    html = (out / "report" / "index.html").read_text()
    for text in (md, html):
        assert "SYNTHETIC" in text
        assert text.index("SYNTHETIC") < text.index("3D: whole-scan")
        for label in ROWS_3D.values():
            assert label.split(":")[0] in text
        assert "AlexNet-SVM" in text and "ichdet prepare rsna" in text
    for fig in ("roc_3d_slice_baselines.png", "roc_3d_lstm.png", "roc_2d.png"):
        assert (out / "report" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "report" / "metrics.json").read_text())
    assert saved["models"][PROPOSED]["auc"] == pytest.approx(result["models"][PROPOSED]["auc"])
    assert set(saved["cv"]["models"]) == {"cnn", "alexnet", "alexnet-svm", "efficientnet", "efficientnet-svm",
                                          "cnn-subtypes"}
    cnn_sub = saved["cv"]["models"]["cnn-subtypes"]
    assert set(cnn_sub["subtypes"]) == set(SUBTYPE_LABELS) and "subtypes" not in saved["cv"]["models"]["cnn"]
    assert "2D subtype models, pooled out-of-fold predictions" in md


def test_cv_auc_matches_its_predictions(demo):
    out, result = demo
    rows = [line.split(",") for line in (out / "cv" / "predictions.csv").read_text().splitlines()[1:]]
    for name, m in result["cv"]["models"].items():
        y = np.array([int(r[3]) for r in rows if r[0] == name])
        p = np.array([float(r[4]) for r in rows if r[0] == name])
        assert len(y) == 16
        assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    sub = [r for r in rows if r[0] == "cnn-subtypes"]
    m = result["cv"]["models"]["cnn-subtypes"]
    for j, label in enumerate(SUBTYPE_LABELS[:-1]):  # p_ columns 6..11, y_ columns 12..16
        y = np.array([int(r[12 + j]) for r in sub])
        p = np.array([float(r[6 + j]) for r in sub])
        known = y >= 0
        e = m["subtypes"][label]
        if e["auc"] is not None:
            assert e["auc"] == pytest.approx(roc_auc_score(y[known], p[known]), abs=1e-6)
    assert m["subtypes"]["any"]["auc"] == pytest.approx(m["auc"], abs=1e-9)


def _subtype_predictions(path):
    rows = [line.split(",") for line in path.read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    assert header == ["model", "scan_id"] + [f"y_{n}" for n in SUBTYPE_LABELS] + [f"p_{n}" for n in SUBTYPE_LABELS]
    return rows


def test_subtype_table_matches_sklearn_on_the_saved_predictions(demo):
    out, result = demo
    sub = result["subtypes"]
    assert list(sub["models"]) == list(ROWS_SUBTYPES) and sub["test_scans"] == result["data"]["test_scans"]
    saved = json.loads((out / "report" / "metrics.json").read_text())["subtypes"]
    rows = _subtype_predictions(out / "report" / "predictions_subtypes.csv")
    splits = load_bundle(out / "runs" / PROPOSED / "bundle").training_splits()
    md = (out / "report" / "report.md").read_text()
    html = (out / "report" / "index.html").read_text()
    assert "## Subtypes: per-subtype AUC on the held-out test scans" in md and "Subtypes: per-subtype AUC" in html
    assert "### 3D subtype models on the held-out test scans: AUC (95% CI), positive cases" in md
    assert ("| model | " + " | ".join(SUBTYPE_LABELS) + " | RSNA log loss (any ×2) |") in md
    n_auc = 0
    for name, m in saved["models"].items():
        mine = [r for r in rows if r[0] == name]
        assert sorted(r[1] for r in mine) == sorted(s for s, v in splits.items() if v == "test")
        y = np.array([[int(v) for v in r[2:8]] for r in mine])
        p = np.array([[float(v) for v in r[8:14]] for r in mine])
        assert m["rsna_log_loss"] == pytest.approx(rsna_log_loss(y, p), abs=1e-9)
        cells = []
        for j, label in enumerate(SUBTYPE_LABELS):
            known = y[:, j] >= 0
            e = m["subtypes"][label]
            assert e["n_pos"] == int(y[known, j].sum()) and e["n_neg"] == int((y[known, j] == 0).sum())
            if 0 < e["n_pos"] < known.sum():
                assert e["auc"] == pytest.approx(roc_auc_score(y[known, j], p[known, j]), abs=1e-9)
                if min(e["n_pos"], e["n_neg"]) == 1:  # DeLong gives no CI for one case of a class
                    assert e["auc_ci"] is None
                    cells.append(f"{e['auc']:.3f}, {e['n_pos']} pos")
                else:
                    assert e["auc_ci"][0] <= e["auc"] <= e["auc_ci"][1]
                    cells.append(f"{e['auc']:.3f} ({e['auc_ci'][0]:.3f}–{e['auc_ci'][1]:.3f}), {e['n_pos']} pos")
                n_auc += 1
            else:
                assert e["auc"] is None and e["auc_ci"] is None
                cells.append(f"—, {e['n_pos']} pos")
        line = next(li for li in md.splitlines() if li.startswith(f"| {ROWS_SUBTYPES[name]} |"))
        assert line == f"| {ROWS_SUBTYPES[name]} | " + " | ".join(cells) + f" | {m['rsna_log_loss']:.4f} |"
        assert m["subtypes"]["any"]["auc"] == pytest.approx(
            roc_auc_score(y[:, -1], [float(r[-1]) for r in mine]), abs=1e-9)
        # "any" is the scan score: the same test scans and labels as the binary table
        assert m["subtypes"]["any"]["n_pos"] == result["data"]["test_positive"]
    assert n_auc >= 3


def test_every_model_is_kept_as_a_loadable_bundle(demo):
    out, result = demo
    names = set(TRAIN_ORDER) | set(SUBTYPE_ORDER) | {SEGMENTATION, "2d_cnn", "2d_alexnet", "2d_alexnet_svm", "2d_efficientnet",
                                                      "2d_efficientnet_svm", "2d_cnn_subtypes"}
    assert set(result["bundles"]) == names
    assert load_bundle(out / "bundles" / PROPOSED).meta["model"]["name"] == "scan_lstm"
    assert load_bundle(out / "bundles" / "2d_alexnet_svm").kind == "alexnet_svm"
    for name in ("3d_lstm2_e2e_subtypes", "3d_slice_max_subtypes", "2d_cnn_subtypes"):
        b = load_bundle(out / "bundles" / name)
        assert b.has_subtypes and b.labels == SUBTYPE_LABELS, name
    assert not load_bundle(out / "bundles" / "2d_cnn").has_subtypes
    assert load_bundle(out / "bundles" / SEGMENTATION).kind == "segmentation"


def test_a_second_run_reuses_every_trained_model(demo, tiny):
    out, first = demo
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/bundle/bundle.json")}
    again = run_demo(out, seed=3, show_progress=False, profile=tiny)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["models"][PROPOSED]["auc"] == pytest.approx(first["models"][PROPOSED]["auc"])


def test_demo_on_a_given_manifest_skips_the_synthetic_cohort(demo, tiny):
    out, first = demo
    manifest = out / "cohort" / "manifest.csv"
    again = run_demo(out, seed=3, show_progress=False, profile=tiny, data=manifest)  # same runs: all reused
    assert again["synthetic"] is False and again["seconds"]["synth"] == 0.0
    assert again["data"]["manifest"] == str(manifest.resolve()) and "scans" not in again["data"]
    md = (out / "report" / "report.md").read_text()
    assert "SYNTHETIC" not in md and f"Data: {manifest.resolve()}" in md
    assert again["models"][PROPOSED]["auc"] == pytest.approx(first["models"][PROPOSED]["auc"])


def test_segmentation_is_scored_on_the_same_test_scans(demo):
    """The synthetic cohort has masks, so the demo trains seg_unet and reports Dice and volumes on the 3D test split."""
    out, result = demo
    seg = result["segmentation"]
    assert seg["model"] == SEGMENTATION and seg["test_scans"] == result["data"]["test_scans"]
    splits = load_bundle(out / "runs" / SEGMENTATION / "bundle").training_splits()
    assert sorted(s["scan_id"] for s in seg["scans"]) == sorted(s for s, v in splits.items() if v == "test")
    assert seg["n_scans"] == seg["test_scans"] and seg["seconds_per_scan"] > 0
    assert seg["labels"]["any"]["scans_with_bleed"] >= 1 and seg["total"]["n"] == sum(s["true_ml"] > 0 for s in seg["scans"])
    saved = json.loads((out / "report" / "metrics.json").read_text())["segmentation"]
    assert saved["total"]["median_abs_error_ml"] == pytest.approx(seg["total"]["median_abs_error_ml"])
    md = (out / "report" / "report.md").read_text()
    assert "## Segmentation: Dice and bleed volume" in md and "bland_altman.png" in md
    assert (out / "report" / "bland_altman.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_binary_slice_cnn_starts_from_the_subtype_one_only_with_subtype_labels(demo, tiny, tmp_path):
    from ichdet.datasets.manifest import read_manifest, write_manifest
    from dataclasses import replace as dc_replace

    out, first = demo
    assert first["starts"] == {"3d_slice_cnn": "3d_slice_cnn_from_subtypes"}
    saved = yaml.safe_load((out / "runs" / "3d_slice_cnn" / "config.yaml").read_text())
    assert saved["model"]["init_from"] == "3d_slice_cnn_subtypes"
    assert "`3d_slice_cnn` was trained by the config `3d_slice_cnn_from_subtypes`" in (out / "report" / "report.md").read_text()
    # without subtype labels (and masks) the binary chain trains from scratch and nothing waits for a subtype run
    cohort = out / "cohort"
    rows = [dc_replace(r, subtypes={}, extra={k: v for k, v in r.extra.items() if k != "mask_path"})
            for r in read_manifest(cohort / "manifest.csv")]
    binary = write_manifest(cohort / "manifest_binary.csv", rows)
    # the 2D comparison is not what this run checks: the CNN alone keeps its AlexNets (0.2-0.7 GB each) off the disk
    plain = run_demo(tmp_path / "plain", seed=3, show_progress=False, profile=dc_replace(tiny, cv_models=("cnn",)),
                     data=binary)
    assert plain["starts"] == {} and plain["subtypes"] is None and plain["segmentation"] is None
    saved = yaml.safe_load((tmp_path / "plain" / "runs" / "3d_slice_cnn" / "config.yaml").read_text())
    assert saved["model"]["init_from"] == ""
    assert set(plain["models"]) == set(first["models"])

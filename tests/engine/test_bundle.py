"""The bundle records the training slice thickness: saved, loaded, None for 2D models and for
bundles written before it was recorded, and turned into the slab spec new scans are prepared with."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ichdet.engine.bundle import META, load_bundle, save_bundle
from ichdet.models import create_model
from ichdet.preprocess import PrepSpec

ENCODER = {"in_channels": 1, "base_width": 4, "n_units": 3, "feature_dim": 16, "dropout": 0.0}
PREP = PrepSpec(windows=("brain",), size=64, z_max_filter=True)


def _save(out: Path, **kw) -> Path:
    model = create_model("slice_cnn", **ENCODER).eval()
    return save_bundle(out, model=model, model_name="slice_cnn", model_kwargs=model.config(), kind="slice", prep=PREP,
                       context=0, operating_point={"method": "fixed", "threshold": 0.5}, metrics={}, config_yaml="",
                       data_hash="test", **kw)


@pytest.mark.parametrize("thickness", [5.0, 0.625, 2.5])
def test_the_thickness_round_trips(tmp_path, thickness):
    b = load_bundle(_save(tmp_path / "b", slice_thickness_mm=thickness))
    assert json.loads((b.path / META).read_text())["slice_thickness_mm"] == thickness
    assert b.slice_thickness_mm == thickness
    assert b.prep == PREP and "slab_mm" not in b.meta["prep"]  # the training spec (and cache key) as before
    assert b.input_prep == dataclasses.replace(PREP, slab_mm=thickness)
    assert b.input_prep.key() == f"brain_s64_mf2_z1_crop0_slab{thickness:g}"


def test_a_2d_bundle_and_an_older_bundle_have_none(tmp_path):
    two_d = load_bundle(_save(tmp_path / "2d"))
    assert json.loads((two_d.path / META).read_text())["slice_thickness_mm"] is None
    assert two_d.slice_thickness_mm is None and two_d.input_prep == two_d.prep == PREP
    old = _save(tmp_path / "old", slice_thickness_mm=5.0)
    meta = json.loads((old / META).read_text())
    del meta["slice_thickness_mm"]  # as ichdet wrote bundle.json before it recorded the thickness
    (old / META).write_text(json.dumps(meta))
    b = load_bundle(old)
    assert b.slice_thickness_mm is None and b.input_prep == b.prep == PREP and b.input_prep.slab_mm is None

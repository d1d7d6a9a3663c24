"""The bundle records the training slice thickness: saved, loaded, None for 2D models and for
bundles written before it was recorded, and turned into the slab spec new scans are prepared with.
It records what the training images held (display images or HU), so that a CT reaches a model
trained on display images as those did: its first window in every channel. `copy_bundle` links
the weights and copies the rest."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import numpy as np
import torch

from ichdet.engine.bundle import META, load_bundle, save_bundle
from ichdet.errors import InputError
from ichdet.io.volume import Volume
from ichdet.models import create_model
from ichdet.preprocess import PrepSpec, prepare_volume
from ichdet.preprocess.windows import BRAIN_WINDOW, window

ENCODER = {"in_channels": 1, "base_width": 4, "n_units": 3, "feature_dim": 16, "dropout": 0.0}
PREP = PrepSpec(windows=("brain",), size=64, z_max_filter=True)


def _save(out: Path, prep: PrepSpec = PREP, **kw) -> Path:
    model = create_model("slice_cnn", **{**ENCODER, "in_channels": len(prep.windows)}).eval()
    return save_bundle(out, model=model, model_name="slice_cnn", model_kwargs=model.config(), kind="slice", prep=prep,
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


THREE = PrepSpec(windows=("brain", "subdural", "bone"), size=32, max_filter=1, crop_head=True)


def test_a_model_trained_on_display_images_gets_a_ct_as_one_grey_window(tmp_path):
    b = load_bundle(_save(tmp_path / "img", prep=THREE, training_units="display"))
    assert json.loads((b.path / META).read_text())["training_units"] == "display" == b.training_units
    assert b.prep == THREE and "grey" not in b.meta["prep"]  # the training spec and its cache key as before
    assert b.input_prep == dataclasses.replace(THREE, grey=True)
    assert b.input_prep.key() == "brain+subdural+bone_s32_mf1_z0_crop1_grey" != THREE.key()
    rng = np.random.default_rng(0)
    hu = np.full((2, 32, 32), -1000.0, dtype=np.float32)
    hu[:, 4:28, 4:28] = rng.uniform(-100, 1500, (2, 24, 24))  # a "head" of brain to bone
    vol = Volume(hu=hu, spacing=(5.0, 1.0, 1.0), affine=np.eye(4), source=["ct"])
    grey, windows = prepare_volume(vol, b.input_prep), prepare_volume(vol, THREE)
    assert grey.shape == windows.shape == (3, 2, 32, 32)
    np.testing.assert_array_equal(grey[0], windows[0])  # the brain window...
    np.testing.assert_array_equal(grey[1], grey[0])  # ...in every channel, as a PNG gives it
    np.testing.assert_array_equal(grey[2], grey[0])
    assert not np.array_equal(windows[2], windows[0])
    np.testing.assert_allclose(grey[0, :, 16, 16], window(hu[:, 16, 16], BRAIN_WINDOW), atol=1e-6)
    png = Volume(hu=np.clip(hu[:1] / 1000, 0, 1), spacing=(1.0, 1.0, 1.0), affine=np.eye(4), source=["x.png"])
    png.info["units"] = "display"
    np.testing.assert_array_equal(prepare_volume(png, b.input_prep), prepare_volume(png, THREE))  # images unchanged


@pytest.mark.parametrize("units", ["HU", None])
def test_ct_trained_one_window_and_older_bundles_keep_their_windows(tmp_path, units):
    b = load_bundle(_save(tmp_path / "ct", prep=THREE, training_units=units))
    assert b.training_units == units and b.input_prep == THREE and not b.input_prep.grey
    one = load_bundle(_save(tmp_path / "one", training_units="display"))  # one window: nothing to copy
    assert one.input_prep == PREP
    meta = json.loads((tmp_path / "ct" / META).read_text())
    del meta["training_units"]  # as ichdet wrote bundle.json before it recorded them
    (tmp_path / "ct" / META).write_text(json.dumps(meta))
    assert load_bundle(tmp_path / "ct").input_prep == THREE


def test_unknown_training_units_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"training_units must be one of \('display', 'HU', None\), got 'png'"):
        _save(tmp_path / "x", training_units="png")
    assert PrepSpec.from_dict({**THREE.to_dict(), "grey": True}).grey
    with pytest.raises(InputError, match="PrepSpec.grey must be true or false, got 'yes'"):
        PrepSpec(grey="yes")


def test_a_copied_bundle_links_its_weights_copies_its_text_and_outlives_a_rewrite(tmp_path):
    import os

    from ichdet.engine.bundle import copy_bundle

    src = _save(tmp_path / "run" / "bundle")
    dst = copy_bundle(src, tmp_path / "bundles" / "b")
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in src.iterdir())
    assert os.path.samefile(src / "weights.pt", dst / "weights.pt") and (dst / "weights.pt").stat().st_nlink == 2
    assert not os.path.samefile(src / META, dst / META) and (dst / META).read_bytes() == (src / META).read_bytes()
    before = (dst / "weights.pt").read_bytes()
    state = load_bundle(dst).model.state_dict()
    _save(tmp_path / "run" / "bundle", prep=dataclasses.replace(PREP, size=96))  # the source bundle written again
    assert (dst / "weights.pt").read_bytes() == before and (dst / "weights.pt").stat().st_nlink == 1
    assert load_bundle(dst).prep.size == 64 and load_bundle(src).prep.size == 96
    assert all(torch.equal(v, load_bundle(dst).model.state_dict()[k]) for k, v in state.items())
    assert not any(p.name.startswith(".") for p in (tmp_path / "bundles").iterdir())  # no temp folder left


def test_a_bundle_copied_to_another_filesystem_is_a_plain_copy(tmp_path, small_disk):
    import os

    from ichdet.engine.bundle import copy_bundle

    src = _save(tmp_path / "bundle")
    dst = copy_bundle(src, small_disk(16) / "b")
    assert (dst / "weights.pt").stat().st_nlink == 1 and not os.path.samefile(src / "weights.pt", dst / "weights.pt")
    assert (dst / "weights.pt").read_bytes() == (src / "weights.pt").read_bytes()
    assert load_bundle(dst).kind == "slice"

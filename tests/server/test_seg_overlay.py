"""`ichdet serve` with a segmentation bundle: the Study JSON's volumes and mask legend, and the
slice PNGs with the label mask drawn per subtype (TestClient; the browser test drives the page)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from ichdet.datasets.manifest import SUBTYPES  # noqa: E402
from ichdet.io import read_volume  # noqa: E402
from ichdet.server.overlays import MASK_ALPHA, SUBTYPE_COLOURS, mask_overlay, parse_labels  # noqa: E402

IPH = SUBTYPE_COLOURS["intraparenchymal"]


def _png(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)))


@pytest.fixture
def seg_client(seg_bundle, tmp_path):
    from ichdet.server import create_app

    with TestClient(create_app(seg_bundle, tmp_root=tmp_path / "serve-tmp")) as c:
        yield c


def _open(c: TestClient, path) -> dict:
    r = c.post("/api/studies", content=path.read_bytes(), headers={"Content-Type": "application/octet-stream",
                                                                   "X-Filename": path.name})
    assert r.status_code == 201, r.text
    return r.json()


def _cavity(nifti_path, seg_bundle) -> tuple[np.ndarray, np.ndarray]:
    """The scan's cranial cavity on its own voxels (Z, H, W) and on the prepared grid (Z, S, S): where
    the bundle's intraparenchymal-everywhere model leaves its label."""
    from ichdet.engine.bundle import load_bundle
    from ichdet.preprocess import cranial_cavity
    from ichdet.preprocess.masks import crop_box, prepare_mask

    vol, spec = read_volume(nifti_path), load_bundle(seg_bundle).prep
    cavity = cranial_cavity(vol.hu, vol.spacing)[1]
    return cavity, prepare_mask(cavity.view(np.uint8), spec, crop_box(vol.hu, vol.spacing, spec)) > 0


def test_study_has_volumes_and_legend(seg_client, seg_bundle, nifti_path):
    s = _open(seg_client, nifti_path)
    vol = read_volume(nifti_path)
    cavity, _ = _cavity(nifti_path, seg_bundle)
    assert 0 < cavity.sum() < cavity.size
    whole = cavity.sum() * float(np.prod(vol.spacing)) / 1000.0  # intraparenchymal wherever a bleed can be
    assert s["volumes"]["subtypes"]["intraparenchymal"] == pytest.approx(whole, abs=1e-3)
    assert s["volumes"]["total"] == pytest.approx(whole, abs=1e-3)
    assert [g["name"] for g in s["segments"]] == list(SUBTYPES) and [g["label"] for g in s["segments"]] == [1, 2, 3, 4, 5]
    assert s["segments"][1]["colour"] == "#%02x%02x%02x" % IPH


def test_mask_overlay_per_subtype(seg_client, seg_bundle, nifti_path):
    from scipy import ndimage

    s = _open(seg_client, nifti_path)
    url = f"/api/studies/{s['id']}/slices/3"
    gray = _png(seg_client.get(url))
    assert gray.ndim == 2
    shown = _png(seg_client.get(url, params={"mask": "all"})).astype(float)
    assert shown.shape == (*gray.shape, 3)
    region = _cavity(nifti_path, seg_bundle)[1][3]  # the slice's cranial cavity, prepared grid
    assert 0.1 < region.mean() < 0.9
    inner = ndimage.binary_erosion(region)  # the region's edge pixels are its outline
    want = (1 - MASK_ALPHA) * gray[inner][..., None].astype(float) + MASK_ALPHA * np.asarray(IPH, float)
    assert np.abs(shown[inner] - want).max() <= 0.5 + 1e-9
    assert np.all(shown[region & ~inner] == IPH)  # outlined in the subtype's colour
    assert np.array_equal(shown[~region], np.repeat(gray[~region][..., None], 3, axis=1))  # air, scalp: grey
    assert np.array_equal(_png(seg_client.get(url, params={"mask": "2"})), shown.astype(np.uint8))
    other = _png(seg_client.get(url, params={"mask": "1,5"}))  # no epidural or subdural voxel: the grey slice
    assert np.array_equal(other, np.repeat(gray[..., None], 3, axis=2))
    heat = _png(seg_client.get(url, params={"overlay": "true", "mask": "2"}))  # P(bleed) map, then the mask
    assert heat.shape == (*gray.shape, 3)


def test_bad_mask_values(seg_client, client, nifti_path):
    s = _open(seg_client, nifti_path)
    r = seg_client.get(f"/api/studies/{s['id']}/slices/0", params={"mask": "9"})
    assert r.status_code == 400
    assert r.json()["detail"] == ("mask must be 'all' or labels from 1..5 separated by commas (1 = epidural ... "
                                  "5 = subdural), got '9'")
    other = _open(client, nifti_path)  # the scan bundle does not segment
    r = client.get(f"/api/studies/{other['id']}/slices/0", params={"mask": "all"})
    assert r.status_code == 400 and r.json()["detail"] == "this model does not segment: there is no bleed mask to show"
    assert other["volumes"] is None and other["segments"] is None


def test_parse_labels_and_overlay_shapes():
    assert parse_labels("") == set() and parse_labels("all") == {1, 2, 3, 4, 5} and parse_labels(" 2,4 ") == {2, 4}
    for bad in ("0", "6", "a", "1,,2"):
        with pytest.raises(ValueError, match="mask must be 'all'"):
            parse_labels(bad)
    with pytest.raises(ValueError, match=r"mask_overlay: slice \(4, 4\) and labels \(3, 3\) differ in shape"):
        mask_overlay(np.zeros((4, 4), np.uint8), np.zeros((3, 3), np.uint8), {1})

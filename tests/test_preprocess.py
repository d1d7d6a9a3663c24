"""Windows, max-filter downsampling, resizing, cranial-slice selection, head cropping, prepare_volume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ichdet.errors import InputError
from ichdet.io.volume import Volume
from ichdet.preprocess import (
    BONE_WINDOW, BRAIN_WINDOW, SUBDURAL_WINDOW, WINDOWS, PrepSpec, Window, cranial_cavity, cranial_slices, crop_to_head,
    fit_to_square, head_box, head_mask, max_filter_2d, max_filter_3d, parse_window, prepare_volume,
    resize_slices, window, window_stack,
)


# ---------------------------------------------------------------- windows
def test_brain_window_values_and_clipping():
    hu = np.array([-1000, 0, 20, 40, 60, 80, 1000], dtype=np.int16)
    out = window(hu, BRAIN_WINDOW)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_window_torch_matches_numpy():
    hu = np.linspace(-200, 400, 61, dtype=np.float32)
    t = window(torch.from_numpy(hu), SUBDURAL_WINDOW)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), window(hu, SUBDURAL_WINDOW), atol=1e-7)
    assert window(np.float32(80), SUBDURAL_WINDOW) == pytest.approx(0.5)  # center 80, width 200


def test_parse_window():
    assert parse_window("brain") == BRAIN_WINDOW
    assert parse_window("Soft-Tissue") == WINDOWS["soft_tissue"] == Window(40, 380)
    assert parse_window(" 600/2800 ") == BONE_WINDOW
    assert parse_window(BRAIN_WINDOW) is BRAIN_WINDOW
    for bad in ("lung2", "40/", "40/0", "40/-5", "a/b"):
        with pytest.raises(InputError, match="window"):
            parse_window(bad)


def test_window_stack_channels_first():
    hu = np.full((2, 3, 4), 40.0, dtype=np.float32)
    out = window_stack(hu, ["brain", "subdural", "bone"])
    assert out.shape == (3, 2, 3, 4)
    np.testing.assert_allclose(out[:, 0, 0, 0], [0.5, 0.3, (40 + 800) / 2800], rtol=1e-6)
    assert window_stack(torch.from_numpy(hu), ["brain"]).shape == (1, 2, 3, 4)
    with pytest.raises(InputError):
        window_stack(hu, [])


# ---------------------------------------------------------------- max filter
def test_max_filter_2d_hand_computed():
    x = np.array([[1, 2, 3, 4],
                  [5, 6, 7, 8],
                  [9, 1, 0, 0],
                  [0, 0, 0, 2]], dtype=np.float32)
    np.testing.assert_array_equal(max_filter_2d(x), [[6, 8], [9, 2]])
    # odd sizes: the ragged last row/column is its own block (padding never wins)
    y = -np.arange(15, dtype=np.float32).reshape(3, 5)
    np.testing.assert_array_equal(max_filter_2d(y), [[0, -2, -4], [-10, -12, -14]])
    np.testing.assert_array_equal(max_filter_2d(x, 1), x)


def test_max_filter_keeps_isolated_bright_pixel():
    """The point of the papers' max filter: a one-pixel bleed survives, an average dilutes it."""
    sl = np.full((3, 512, 512), 30.0, dtype=np.float32)
    sl[1, 301, 77] = 75.0
    out = max_filter_2d(sl)
    assert out.shape == (3, 256, 256)
    assert out[1, 150, 38] == 75.0 and (out == 75.0).sum() == 1
    assert resize_slices(sl, 256)[1, 150, 38] < 45.0  # area average: 30 + 45/4


def test_max_filter_torch_and_ints_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.integers(-1024, 3000, size=(5, 7, 9)).astype(np.int16)
    ref = max_filter_2d(x.astype(np.float32), 3)
    assert ref.shape == (5, 3, 3)
    np.testing.assert_array_equal(max_filter_2d(x, 3), ref)
    np.testing.assert_array_equal(max_filter_2d(torch.from_numpy(x.astype(np.float32)), 3).numpy(), ref)
    mask = rng.random((4, 6, 6)) > 0.9
    np.testing.assert_array_equal(max_filter_2d(mask), mask.reshape(4, 3, 2, 3, 2).any(axis=(2, 4)))


def test_max_filter_3d():
    x = np.zeros((5, 4, 6), dtype=np.float32)
    x[4, 3, 5] = 9.0
    x[0, 0, 1] = 2.0
    out = max_filter_3d(x)
    assert out.shape == (3, 2, 3)
    assert out[2, 1, 2] == 9.0 and out[0, 0, 0] == 2.0 and out.sum() == 11.0
    np.testing.assert_array_equal(max_filter_3d(torch.from_numpy(x)).numpy(), out)
    with pytest.raises(InputError, match="got shape"):
        max_filter_3d(np.zeros((4, 4)))
    with pytest.raises(InputError, match="got 0"):
        max_filter_2d(x, 0)


# ---------------------------------------------------------------- resize
def test_resize_and_fit_to_square():
    x = np.zeros((2, 4, 8), dtype=np.float32)
    sq = fit_to_square(x, fill=-1000)
    assert sq.shape == (2, 8, 8)
    assert (sq[:, :2] == -1000).all() and (sq[:, 2:6] == 0).all() and (sq[:, 6:] == -1000).all()
    assert resize_slices(x, 4).shape == (2, 4, 4)
    up = resize_slices(np.full((1, 3, 3), 7.0), 12)
    assert up.shape == (1, 12, 12) and up.dtype == np.float32 and np.allclose(up, 7.0)
    with pytest.raises(InputError, match="got shape"):
        resize_slices(np.zeros((4, 4)), 2)


# ---------------------------------------------------------------- anatomy
def _ellipse(shape, center, radii):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return ((yy - center[0]) / radii[0]) ** 2 + ((xx - center[1]) / radii[1]) ** 2 <= 1.0


def _head_slice(n=128, skull=True, gap_px=0):
    """HU slice, 1 mm pixels: air, skin (30 HU), skull ring (1000 HU), brain (35 HU)."""
    sl = np.full((n, n), -1000.0, dtype=np.float32)
    c = (n // 2, n // 2)
    sl[_ellipse(sl.shape, c, (50, 40))] = 30.0
    if skull:
        sl[_ellipse(sl.shape, c, (47, 37))] = 1000.0
    sl[_ellipse(sl.shape, c, (43, 33))] = 35.0
    if gap_px:
        sl[c[0] - gap_px // 2:c[0] + gap_px // 2 + 1, : c[1]] = np.where(
            sl[c[0] - gap_px // 2:c[0] + gap_px // 2 + 1, : c[1]] > 500, 30.0, sl[c[0] - gap_px // 2:c[0] + gap_px // 2 + 1, : c[1]])
    return sl


def test_cranial_slices_ring_soft_air():
    vol = np.stack([_head_slice(), _head_slice(skull=False), np.full((128, 128), -1000.0, np.float32),
                    _head_slice(gap_px=4)])
    assert cranial_slices(vol, (6.0, 1.0, 1.0)).tolist() == [True, False, False, True]
    # a cranial area threshold above the brain's ~4500 mm^2 rejects everything
    assert not cranial_slices(vol, (5.0, 1.0, 1.0), min_area_mm2=6000).any()
    # with 0.25 mm pixels the same brain is 16x smaller in mm^2
    assert not cranial_slices(vol, (5.0, 0.25, 0.25)).any()
    with pytest.raises(InputError, match="got shape"):
        cranial_slices(vol[0], (1.0, 1.0))


def test_cranial_slices_fills_short_gaps_along_z():
    vol = np.stack([_head_slice(), _head_slice(skull=False), _head_slice()])
    assert cranial_slices(vol, (5.0, 1.0, 1.0)).tolist() == [True, True, True]  # 5 mm gap filled
    assert cranial_slices(vol, (20.0, 1.0, 1.0)).tolist() == [True, False, True]  # 20 mm gap kept


def test_cranial_cavity_is_inside_the_skull_not_the_scalp():
    """1 mm pixels: the skin ring (radius 47-50 px along rows) is soft tissue outside the skull
    (43-47), the brain (< 43) is inside; the cavity takes the brain and up to 2 mm of bone, never the
    skin. A slice without a ring between two closed ones takes their cavities; none cranial: all."""
    vol = np.stack([_head_slice(), _head_slice(skull=False), _head_slice(), np.full((128, 128), -1000.0, np.float32)])
    flags, cavity = cranial_cavity(vol, (5.0, 1.0, 1.0))
    assert flags.tolist() == cranial_slices(vol, (5.0, 1.0, 1.0)).tolist() == [True, True, True, False]
    assert cavity.shape == vol.shape and cavity.dtype == bool
    brain = _ellipse((128, 128), (64, 64), (43, 33))
    skin = _ellipse((128, 128), (64, 64), (50, 40)) & ~_ellipse((128, 128), (64, 64), (47, 37))
    for z in (0, 2):
        assert cavity[z][brain].all() and not cavity[z][skin].any()
        assert not cavity[z][~_ellipse((128, 128), (64, 64), (45.5, 35.5))].any()  # at most ~2 mm into the bone
    assert np.array_equal(cavity[1], cavity[0]) and not cavity[3].any()  # the open slice: its neighbours'
    flags, cavity = cranial_cavity(vol[3:], (5.0, 1.0, 1.0))
    assert not flags.any() and cavity.all()  # no skull found anywhere: nothing is ruled out
    with pytest.raises(InputError, match=r"^cranial_cavity expects \(Z, H, W\) HU, got shape \(128, 128\)$"):
        cranial_cavity(vol[0], (1.0, 1.0))


def _scene(n=256, table_row=203):
    """Ellipse head, a thin bright table line under it, burnt-in text in the top-left corner."""
    img = np.full((n, n), -1000.0, dtype=np.float32)
    img[_ellipse(img.shape, (120, 128), (80, 64))] = 40.0
    img[_ellipse(img.shape, (120, 128), (80, 64)) & ~_ellipse(img.shape, (120, 128), (76, 60))] = 1200.0
    img[table_row:table_row + 3, 10:246] = 300.0  # table: 3 px thick, full width
    img[206:230, 20:23] = 300.0  # a table leg touching the line
    for k in range(4):  # "TEXT": 2 px strokes
        img[6:16, 8 + 7 * k:10 + 7 * k] = 3000.0
        img[6:8, 6 + 7 * k:13 + 7 * k] = 3000.0
    return img


@pytest.mark.parametrize("table_row", [203, 199])  # 3 px below the head / touching it
def test_head_mask_excludes_table_and_text(table_row):
    img = _scene(table_row=table_row)
    mask = head_mask(img)
    assert mask[120, 128] and mask[45, 128] and mask[195, 128]  # centre, top and bottom of the head
    assert not mask[table_row + 1, :100].any() and not mask[table_row + 1, 160:].any()
    assert not mask[203:].any() and not mask[:20, :40].any()
    r0, r1, c0, c1 = head_box(mask, margin=0)  # the ellipse spans rows 40..200, columns 64..192
    assert 40 <= r0 <= 41 and 200 <= r1 <= 202 and 64 <= c0 <= 65 and 192 <= c1 <= 193


def test_crop_to_head_excludes_table_and_text():
    img = _scene()
    out = crop_to_head(img, margin=2)
    assert 163 <= out.shape[0] <= 165 and 131 <= out.shape[1] <= 133  # ellipse 161 x 129 + margins
    assert out.max() == 1200.0  # no text (3000 HU)
    assert not (out == 300.0).any()  # no table
    # an 8-bit windowed image works with an 8-bit threshold; leading axes share the box
    u8 = (window(np.stack([img, img]), Window(40, 400)) * 255).astype(np.uint8)
    out8 = crop_to_head(u8, threshold=10, margin=2)
    assert out8.shape == (2, *out.shape) and out8.dtype == np.uint8
    np.testing.assert_array_equal(out8[1], (window(out, Window(40, 400)) * 255).astype(np.uint8))
    air = np.full((32, 32), -1000.0, np.float32)
    assert crop_to_head(air) is air or np.array_equal(crop_to_head(air), air)


# ---------------------------------------------------------------- spec and pipeline
def test_prep_spec_round_trip_and_key():
    spec = PrepSpec(windows=("brain", "80/200"), size=128, z_max_filter=True)
    d = spec.to_dict()
    assert d == {"windows": ["brain", "80/200"], "size": 128, "max_filter": 2, "z_max_filter": True,
                 "crop_head": False}
    assert PrepSpec.from_dict(d) == spec
    assert spec.key() == "brain+subdural_s128_mf2_z1_crop0" == PrepSpec(("40/80", "subdural"), 128, 2, True).key()
    assert PrepSpec(windows=("30/70",)).key().startswith("c30w70_s256")
    assert PrepSpec().key() != PrepSpec(size=224).key()
    with pytest.raises(InputError, match="unknown preprocessing keys"):
        PrepSpec.from_dict({"windowz": ["brain"]})
    with pytest.raises(InputError, match="got 0"):
        PrepSpec(size=0)
    with pytest.raises(InputError, match="window"):
        PrepSpec(windows=("lungs",))
    with pytest.raises(InputError, match="true or false"):
        PrepSpec(crop_head="no")


def test_prepare_volume_shapes_and_bleed_survives():
    hu = np.stack([np.pad(_head_slice(256), 128, constant_values=-1000.0)] * 5)  # (5, 512, 512)
    hu[2, 257, 301] = 75.0  # a one-pixel bleed in the skull
    vol = Volume(hu, spacing=(5.0, 0.5, 0.5), affine=np.diag([0.5, 0.5, 5.0, 1.0]))
    out = prepare_volume(vol, PrepSpec())
    assert out.shape == (1, 5, 256, 256) and out.dtype == np.float32
    assert out[0, 2, 128, 150] == pytest.approx(75 / 80)  # kept by the 2x2 max filter
    out3 = prepare_volume(hu, PrepSpec(windows=("brain", "bone"), z_max_filter=True, size=128))
    assert out3.shape == (2, 3, 128, 128)
    crop = prepare_volume(vol, PrepSpec(crop_head=True, size=64))
    assert crop.shape == (1, 5, 64, 64)
    assert crop[0, :, 32, 32].min() > 0.3  # the brain fills the cropped frame's centre
    with pytest.raises(InputError, match="got shape"):
        prepare_volume(np.zeros((4, 4)), PrepSpec())


def test_real_cq500_cranial_slices_and_head_box(cq500_dir):
    """Five slices of the real CQ500 series: neck and vertex are not cranial, the rest are."""
    pydicom = pytest.importorskip("pydicom")
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(cq500_dir.glob("CT*.dcm"))]
    uid = max({h.SeriesInstanceUID for h in headers}, key=[h.SeriesInstanceUID for h in headers].count)
    series = [h for h in headers if h.SeriesInstanceUID == uid]
    iop = np.asarray(series[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    series.sort(key=lambda h: float(normal @ np.asarray(h.ImagePositionPatient, float)))
    picks = [5, 40, 120, 200, 230]  # of 238, inferior to superior
    hu = np.stack([pydicom.dcmread(series[i].filename).pixel_array * float(series[i].RescaleSlope)
                   + float(series[i].RescaleIntercept) for i in picks]).astype(np.float32)
    dy, dx = (float(v) for v in series[0].PixelSpacing)
    assert cranial_slices(hu, (50.0, dy, dx)).tolist() == [False, True, True, True, False]
    flags, cavity = cranial_cavity(hu, (50.0, dy, dx))
    assert flags.tolist() == [False, True, True, True, False] and not cavity[[0, 4]].any()
    assert 120 < cavity[2].sum() * dy * dx / 100 < 200  # cm^2 of the mid-brain slice (157 found)
    row_hu, row_cav = hu[2, 256], cavity[2, 256]  # a row across the head: scalp, skull, brain, skull, scalp
    bone = np.flatnonzero(row_hu > 300)
    soft = (row_hu >= 0) & (row_hu <= 100)
    scalp = soft & ((np.arange(512) < bone.min()) | (np.arange(512) > bone.max()))
    assert scalp.sum() > 3 and not row_cav[scalp].any()
    inner = np.arange(512)[(np.arange(512) > bone[bone < 256].max()) & (np.arange(512) < bone[bone > 256].min())]
    assert row_cav[inner].all()  # every pixel between the inner tables
    r0, r1, c0, c1 = head_box(head_mask(hu, (50.0, dy, dx)))
    assert 40 < c0 and c1 < 450  # the curved table sides (columns ~20 and ~460) are excluded


# ---------------------------------------------------------------- display images (PNG/JPEG)
def _display_png(path, canvas, center, radii, artefacts=True, background=0, mode="RGB"):
    """An 8-bit brain-windowed head: white skull ring (1/15 of the radius), grey brain, a darker
    'ventricle'; with `artefacts`, a bright border stripe on the left, burnt-in text at the top and a
    table bar under the head. `canvas` (W, H), `center` (x, y), `radii` (rx, ry) in pixels."""
    from PIL import Image, ImageDraw

    img = Image.new("L", canvas, background)
    d = ImageDraw.Draw(img)
    (cx, cy), (rx, ry) = center, radii
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    t = max(2, round(ry / 15))
    d.ellipse([cx - rx + t, cy - ry + t, cx + rx - t, cy + ry - t], fill=110)
    d.ellipse([cx - rx // 4, cy - ry // 3, cx + rx // 4, cy + ry // 6], fill=40)
    if artefacts:
        w, h = canvas
        d.rectangle([0, 0, 5, h - 1], fill=200)  # border stripe, 6 px wide, full height
        d.text((40, 6), "L  42   W80 L40", fill=255)  # burnt-in text
        y = cy + ry + 8
        d.rectangle([0, y, w - 1, y + 4], fill=150)  # scanner table, 5 px, full width
    img.convert(mode).save(path)
    return path


def test_display_png_is_cropped_to_the_head_and_artefacts_removed(tmp_path):
    from ichdet.io.images import read_image

    spec = PrepSpec(windows=("brain", "bone"), size=64, crop_head=True)
    # non-square RGB canvas 340 x 260; head 131 wide x 181 tall (long axis vertical)
    dirty = read_image(_display_png(tmp_path / "dirty.png", (340, 260), (190, 120), (65, 90)))
    assert dirty.info["units"] == "display" and dirty.hu.shape == (1, 260, 340)
    assert dirty.hu[0, 130, 2] == pytest.approx(200 / 255)  # the stripe is there in the input
    out = prepare_volume(dirty, spec)
    assert out.shape == (2, 1, 64, 64) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], out[1])  # windows cannot apply to display values: same grey twice
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() == pytest.approx(1.0, abs=0.02)  # the skull ring
    # the artefacts are gone: the same head without stripe, text and table prepares identically
    clean = read_image(_display_png(tmp_path / "clean.png", (340, 260), (190, 120), (65, 90), artefacts=False))
    np.testing.assert_allclose(out, prepare_volume(clean, spec), atol=1e-6)
    img = out[0, 0]
    assert img[0, 0] == img[0, -1] == img[-1, 0] == img[-1, -1] == 0.0  # corners: off the head, black
    assert not (np.abs(img - 150 / 255) < 0.01).any()  # no table grey survives anywhere
    # the head fills the square along its long (vertical) axis and is centred along the short one
    rows = np.flatnonzero((img > 0.1).any(axis=1))
    cols = np.flatnonzero((img > 0.1).any(axis=0))
    assert rows[0] <= 2 and rows[-1] >= 61
    assert 6 <= cols[0] <= 12 and 51 <= cols[-1] <= 57  # 131/181 of 64 px ~ 46 px wide, centred
    assert img[32, 32] == pytest.approx(40 / 255, abs=0.01)  # the ventricle at the centre
    assert img[32, 44] == img[32, 20] == img[50, 32] == pytest.approx(110 / 255, abs=0.01)  # brain around it


def test_display_png_same_head_any_canvas_prepares_alike(tmp_path):
    from ichdet.io.images import read_image

    spec = PrepSpec(windows=("brain",), size=64, crop_head=True)
    a = prepare_volume(read_image(_display_png(tmp_path / "a.png", (340, 260), (190, 120), (65, 90))), spec)
    # 1.6x larger head on a taller grey-background canvas, off-centre, grayscale
    b = prepare_volume(read_image(_display_png(tmp_path / "b.png", (420, 520), (180, 300), (104, 144),
                                               background=9, mode="L")), spec)
    assert a.shape == b.shape == (1, 1, 64, 64)
    assert np.abs(a - b).mean() < 0.04  # what remains: the 4 px crop margin is a different fraction of each
    # without cropping the two differ a lot: the head's place and size follow the canvas
    raw = PrepSpec(windows=("brain",), size=64, crop_head=False)
    ra = prepare_volume(read_image(tmp_path / "a.png"), raw)
    rb = prepare_volume(read_image(tmp_path / "b.png"), raw)
    assert np.abs(ra - rb).mean() > 0.1 and np.abs(ra - rb).mean() > 4 * np.abs(a - b).mean()


def test_prepare_display_image_checks_its_input():
    from ichdet.preprocess.pipeline import prepare_display_image

    with pytest.raises(InputError) as e:
        prepare_display_image(np.zeros((2, 8, 8)), PrepSpec(size=8))
    assert str(e.value) == "prepare_display_image expects a (1, H, W) image, got shape (2, 8, 8)"
    with pytest.raises(InputError) as e:
        prepare_display_image(np.zeros((8, 8)), PrepSpec(size=8))
    assert str(e.value) == "prepare_display_image expects a (1, H, W) image, got shape (8, 8)"
    # without cropping: padded to a square with black, then resized; a HU volume is not a display image
    img = np.zeros((1, 20, 40), np.float32)
    img[0, :, :] = 0.5
    out = prepare_display_image(img, PrepSpec(windows=("brain",), size=8, max_filter=1))
    assert out.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(out[0, 0, :2], 0.0)  # the padding rows (10 of 40 at the top)
    np.testing.assert_allclose(out[0, 0, 2:6], 0.5)
    np.testing.assert_allclose(out[0, 0, 6:], 0.0)
    hu = Volume(np.full((1, 8, 8), 40.0, np.float32), spacing=(1.0, 1.0, 1.0), affine=np.eye(4))
    assert prepare_volume(hu, PrepSpec(size=8))[0, 0, 0, 0] == pytest.approx(0.5)  # brain window of 40 HU

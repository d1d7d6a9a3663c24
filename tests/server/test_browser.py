"""The viewer page in a real browser: `ichdet serve` started as a user would (a subprocess on a free
port), driven by headless Chromium through Playwright.

Skipped with the reason when Playwright or Chromium is missing, unless ICHDET_REQUIRE_BROWSER=1
(CI), where that is a failure. With ICHDET_SCREENSHOT set, the viewer (study open, heatmap on,
1280 x 800) is saved to docs/viewer.png.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from ichdet.synth import make_cohort

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "viewer.png"
CHROMIUM = os.environ.get("ICHDET_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SIZE = 64
N_SLICES = 8
GARBAGE = b"this is not a scan\n" * 20
WAIT_MS = 30_000  # upper bound for one page state to appear (an upload's inference included)


def _unavailable(reason: str) -> None:
    if os.environ.get("ICHDET_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test required (ICHDET_REQUIRE_BROWSER=1) but {reason}")
    pytest.skip(reason)


# ---------------------------------------------------------------- data and server

@pytest.fixture(scope="module")
def browser_data(tmp_path_factory) -> dict[str, Path]:
    """3 synthetic scans: the first zipped for the upload; the second (DICOM series "case_b") and the
    third (NIfTI "case_c.nii.gz") in the --studies folder."""
    root = tmp_path_factory.mktemp("browser_data")
    manifest = make_cohort(root / "cohort", 3, seed=11, size=SIZE, n_slices=N_SLICES, difficulty=0.2, fmt="both")
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    first, second = (manifest.parent / r["path"] for r in rows[:2])
    third = manifest.parent / rows[2]["nifti_path"]
    upload = root / "series.zip"
    with zipfile.ZipFile(upload, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(first.glob("*.dcm")):
            zf.write(f, f"series/{f.name}")
    studies = root / "studies"
    shutil.copytree(second, studies / "case_b")
    shutil.copy(third, studies / "case_c.nii.gz")
    garbage = root / "notes.zip"  # the name says zip; the bytes do not
    garbage.write_bytes(GARBAGE)
    return {"upload": upload, "studies": studies, "garbage": garbage}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextlib.contextmanager
def _serve(bundle: Path, log_dir: Path, studies: Path | None = None):
    """`python -m ichdet.cli serve --model BUNDLE ...` on a free port; yields the base URL once
    healthy; always terminated."""
    port = _free_port()
    log = log_dir / "server.log"
    cmd = [sys.executable, "-m", "ichdet.cli", "serve", "--model", str(bundle), "--port", str(port)]
    if studies is not None:
        cmd += ["--studies", str(studies)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=log.parent)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`ichdet serve` exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                status, _ = _request("GET", base + "/api/health")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`ichdet serve` not healthy after 90 s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(scan_bundle, browser_data, tmp_path_factory) -> str:
    """`ichdet serve` of the binary scan bundle with the --studies folder."""
    with _serve(scan_bundle, tmp_path_factory.mktemp("browser_server"), browser_data["studies"]) as base:
        yield base


@pytest.fixture(scope="module")
def subtype_server(subtype_bundle, tmp_path_factory) -> str:
    """`ichdet serve` of the subtype bundle (multi-label heads)."""
    with _serve(subtype_bundle, tmp_path_factory.mktemp("browser_subtype_server")) as base:
        yield base


@pytest.fixture(scope="module")
def seg_server(seg_bundle, tmp_path_factory) -> str:
    """`ichdet serve` of the segmentation bundle (intraparenchymal everywhere)."""
    with _serve(seg_bundle, tmp_path_factory.mktemp("browser_seg_server")) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        _unavailable(f"playwright is not installed ({e})")
    if not (CHROMIUM and Path(CHROMIUM).is_file()):
        _unavailable(f"chromium not found (looked for {CHROMIUM!r}; set ICHDET_CHROMIUM)")
    with sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        except Exception as e:  # noqa: BLE001 - any launch failure means "no usable browser"
            _unavailable(f"chromium at {CHROMIUM} did not start ({str(e).splitlines()[0]})")
        try:
            yield b
        finally:
            b.close()


# ---------------------------------------------------------------- helpers

def _study(base: str, sid: str) -> dict:
    status, body = _request("GET", f"{base}/api/studies/{sid}")
    assert status == 200, (status, body)
    return json.loads(body)


def _study_id(page) -> str:
    m = re.search(r"/api/studies/([^/]+)/slices/", page.get_attribute("#slice-image", "src") or "")
    assert m, "the slice image has no study src"
    return m.group(1)


def _wait_loaded(page, src_part: str = "") -> None:
    """Until #slice-image shows its current src (containing `src_part`)."""
    page.wait_for_function(
        "part => { const i = document.getElementById('slice-image');"
        " return i.dataset.loaded === 'true' && i.complete && i.naturalWidth > 0 && i.getAttribute('src').includes(part); }",
        arg=src_part, timeout=WAIT_MS)


def _pixels(page) -> list[int]:
    """The RGBA pixels of the image the page shows (its PNG drawn at natural size)."""
    return page.evaluate("""() => {
        const img = document.getElementById('slice-image');
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d');
        ctx.drawImage(img, 0, 0);
        return Array.from(ctx.getImageData(0, 0, c.width, c.height).data);
    }""")


def _fmt(p: float) -> str:
    return f"{p:.3f}"  # as the page shows probabilities (toFixed(3))


def _expect_slice(page, expect, study: dict, k: int) -> None:
    n = study["n_slices"]
    expect(page.locator("#slice-image")).to_have_attribute("data-slice", str(k))
    expect(page.locator("#slice-index")).to_have_text(f"{k + 1} / {n}")
    expect(page.locator("#slice-label")).to_have_text(study["slice_labels"][k])
    expect(page.locator("#slice-slider")).to_have_value(str(k))
    expect(page.locator("#strip .bar.current")).to_have_attribute("data-index", str(k))
    assert f"/slices/{k}?" in page.get_attribute("#slice-image", "src")


def _check_study_panel(page, expect, study: dict) -> None:
    """What the side panel and the strip show equals the Study JSON."""
    p, t = study["probability"], study["threshold"]
    expect(page.locator("#probability")).to_have_text(_fmt(p))
    expect(page.locator("#threshold")).to_have_text(_fmt(t))
    assert study["decision"] == (p >= t)
    expect(page.locator("#decision")).to_have_text("BLEED" if p >= t else "no bleed")
    n = study["n_slices"]
    assert n == len(study["slice_probabilities"]) == len(study["slice_labels"])
    bars = page.locator("#strip [data-index]")
    expect(bars).to_have_count(n)
    hot = [i for i, q in enumerate(study["slice_probabilities"]) if q >= t]
    assert page.eval_on_selector_all("#strip .bar.hot", "els => els.map(e => Number(e.dataset.index))") == hot
    expect(page.locator("#top-slices [data-index]")).to_have_count(len(study["top_slices"]))
    if study["subtypes"]:
        expect(page.locator("#subtypes tr")).to_have_count(len(study["subtypes"]))
    else:
        expect(page.locator("#subtypes")).to_be_hidden()
    assert page.eval_on_selector_all("#warnings li", "els => els.map(e => e.textContent)") == study["warnings"]


# ---------------------------------------------------------------- the test

def test_viewer_in_browser(browser, server, browser_data):
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text} @ {m.location.get('url', '')}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    try:
        # the empty page: no viewer yet, the --studies folder listed
        page.goto(server + "/")
        expect(page.locator("#drop-zone")).to_be_visible()
        expect(page.locator("#viewer")).to_be_hidden()
        expect(page.locator("#studies-list option")).to_have_count(2)
        expect(page.locator("#open-study")).to_be_visible()

        # upload the zipped DICOM series through the file input
        page.set_input_files("#file-input", str(browser_data["upload"]))
        expect(page.locator("#viewer")).to_be_visible()
        sid = _study_id(page)
        study = _study(server, sid)
        assert study["name"] == "series.zip"
        n = study["n_slices"]
        assert n == N_SLICES // 2  # the 2x2x2 filter merges slice pairs
        _check_study_panel(page, expect, study)
        expect(page.locator("#status")).to_contain_text("Opened series.zip")

        # it opens on the most suspicious slice, brain window, no overlay
        k0 = study["top_slices"][0] if study["top_slices"] else (n - 1) // 2
        _expect_slice(page, expect, study, k0)
        img = page.locator("#slice-image")
        expect(img).to_have_attribute("data-window", "brain")
        expect(img).to_have_attribute("data-overlay", "false")
        expect(page.locator("#window-brain")).to_have_class(re.compile(r"\bactive\b"))
        _wait_loaded(page, f"/slices/{k0}?window=brain&overlay=false")

        # keys: Home, ArrowUp / ArrowDown, End, PageDown
        page.keyboard.press("Home")
        _expect_slice(page, expect, study, 0)
        page.keyboard.press("ArrowUp")
        _expect_slice(page, expect, study, 1)
        page.keyboard.press("ArrowDown")
        _expect_slice(page, expect, study, 0)
        page.keyboard.press("ArrowDown")  # stays at the first slice
        _expect_slice(page, expect, study, 0)
        page.keyboard.press("End")
        _expect_slice(page, expect, study, n - 1)
        page.keyboard.press("PageDown")
        _expect_slice(page, expect, study, max(0, n - 1 - 5))
        page.keyboard.press("Home")

        # the mouse wheel over the image: one slice per notch, up = superior
        box = img.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -100)
        _expect_slice(page, expect, study, 1)
        page.mouse.wheel(0, -100)
        _expect_slice(page, expect, study, 2)
        page.mouse.wheel(0, 100)
        _expect_slice(page, expect, study, 1)

        # the slider
        page.locator("#slice-slider").fill(str(n - 1))
        _expect_slice(page, expect, study, n - 1)

        # a click on a strip bar jumps there; so does a top-slice chip
        page.locator("#strip [data-index='0']").click()
        _expect_slice(page, expect, study, 0)
        chip = page.locator("#top-slices [data-index]").first
        k_chip = int(chip.get_attribute("data-index"))
        chip.click()
        _expect_slice(page, expect, study, k_chip)
        page.locator("#strip [data-index='1']").click()
        _expect_slice(page, expect, study, 1)
        _wait_loaded(page, "/slices/1?window=brain&overlay=false")
        brain = _pixels(page)
        assert max(brain) > 0 and len(brain) == 4 * study["size"] ** 2

        # windows: bone by button, the pixels change; back to brain with key 1
        page.locator("#window-bone").click()
        expect(img).to_have_attribute("data-window", "bone")
        expect(page.locator("#window-bone")).to_have_class(re.compile(r"\bactive\b"))
        expect(page.locator("#window-brain")).not_to_have_class(re.compile(r"\bactive\b"))
        _wait_loaded(page, "/slices/1?window=bone&overlay=false")
        assert _pixels(page) != brain
        page.keyboard.press("1")
        expect(img).to_have_attribute("data-window", "brain")
        expect(page.locator("#window-brain")).to_have_class(re.compile(r"\bactive\b"))
        _wait_loaded(page, "/slices/1?window=brain&overlay=false")
        assert _pixels(page) == brain

        # the heatmap overlay: checkbox on, the src asks for it, the pixels change
        page.locator("#overlay-toggle").check()
        expect(img).to_have_attribute("data-overlay", "true")
        assert "overlay=true" in img.get_attribute("src")
        _wait_loaded(page, "/slices/1?window=brain&overlay=true")
        assert _pixels(page) != brain
        if os.environ.get("ICHDET_SCREENSHOT"):
            page.wait_for_timeout(300)
            page.screenshot(path=str(SCREENSHOT))
        page.keyboard.press("o")  # the key toggles it back
        expect(img).to_have_attribute("data-overlay", "false")
        expect(page.locator("#overlay-toggle")).not_to_be_checked()
        _wait_loaded(page, "/slices/1?window=brain&overlay=false")

        # open the --studies entry: a new study replaces (and closes) the uploaded one
        page.locator("#studies-list").select_option("case_b")
        page.locator("#open-study").click()
        page.wait_for_function(
            "old => !(document.getElementById('slice-image').getAttribute('src') || '').includes(old)",
            arg=sid, timeout=WAIT_MS)
        sid2 = _study_id(page)
        study2 = _study(server, sid2)
        assert study2["name"].endswith("case_b")
        _check_study_panel(page, expect, study2)
        k2 = study2["top_slices"][0] if study2["top_slices"] else (study2["n_slices"] - 1) // 2
        _expect_slice(page, expect, study2, k2)
        _wait_loaded(page, f"/slices/{k2}?window=brain&overlay=false")
        deadline = time.monotonic() + 10
        while _request("GET", f"{server}/api/studies/{sid}")[0] != 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _request("GET", f"{server}/api/studies/{sid}")[0] == 404

        # garbage upload: the status line shows the server's 400 reason; the open study stays
        status, body = _request("POST", server + "/api/studies", GARBAGE,
                                {"Content-Type": "application/octet-stream", "X-Filename": "notes.zip"})
        assert status == 400, (status, body)
        detail = json.loads(body)["detail"]
        assert detail
        page.set_input_files("#file-input", str(browser_data["garbage"]))
        expect(page.locator("#status")).to_contain_text(detail)
        expect(page.locator("#status")).to_have_class(re.compile(r"\berror\b"))
        page.locator("#status").evaluate("e => { e.textContent = ''; e.className = 'status'; }")
        # the same bytes dropped on the drop zone take the same way
        drop = page.evaluate_handle("""text => {
            const dt = new DataTransfer();
            dt.items.add(new File([text], 'dropped.nii', {type: 'application/octet-stream'}));
            return dt;
        }""", GARBAGE.decode())
        page.dispatch_event("#drop-zone", "dragenter", {"dataTransfer": drop})
        page.dispatch_event("#drop-zone", "dragover", {"dataTransfer": drop})
        page.dispatch_event("#drop-zone", "drop", {"dataTransfer": drop})
        expect(page.locator("#status")).to_contain_text(detail)
        expect(page.locator("#status")).to_have_class(re.compile(r"\berror\b"))
        expect(page.locator("#viewer")).to_be_visible()
        assert _study_id(page) == sid2

        # close: the viewer goes, the server forgets the study
        page.locator("#close-study").click()
        expect(page.locator("#viewer")).to_be_hidden()
        expect(page.locator("#status")).to_contain_text("closed")
        assert _request("GET", f"{server}/api/studies/{sid2}")[0] == 404
    finally:
        context.close()

    # the only errors the browser may log: its own line for the rejected upload's 400
    expected = [e for e in errors if e.startswith("console: Failed to load resource") and "status of 400" in e
                and e.endswith("/api/studies")]
    assert len(expected) <= 2 and [e for e in errors if e not in expected] == [], errors


@contextlib.contextmanager
def _viewer_page(browser):
    """A fresh 1280 x 800 page; on leaving, its context closes and no page error may have occurred."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    try:
        yield page
    finally:
        context.close()
    assert errors == []


def test_viewer_shows_subtypes(browser, subtype_server, browser_data):
    """A subtype bundle: the side panel's subtype table has one row per label of the Study JSON
    (five subtypes then "any"), in order, with the API's probabilities and bars."""
    from playwright.sync_api import expect

    from ichdet.metrics import SUBTYPE_LABELS

    expect.set_options(timeout=WAIT_MS)
    with _viewer_page(browser) as page:
        page.goto(subtype_server + "/")
        expect(page.locator("#subtypes-card")).to_be_hidden()
        page.set_input_files("#file-input", str(browser_data["upload"]))
        expect(page.locator("#viewer")).to_be_visible()
        study = _study(subtype_server, _study_id(page))
        subtypes = study["subtypes"]
        assert list(subtypes) == list(SUBTYPE_LABELS) and subtypes["any"] == study["probability"]
        _check_study_panel(page, expect, study)
        expect(page.locator("#subtypes-card")).to_be_visible()
        rows = page.locator("#subtypes tr")
        expect(rows).to_have_count(6)
        expect(page.locator("#subtypes th")).to_have_text(list(SUBTYPE_LABELS))
        expect(page.locator("#subtypes td.num")).to_have_text([_fmt(p) for p in subtypes.values()])
        widths = page.eval_on_selector_all("#subtypes td.sub-bar > div", "els => els.map(e => e.style.width)")
        bars = [float(w.rstrip("%")) for w in widths]
        assert bars == pytest.approx([100 * p for p in subtypes.values()], abs=1e-3)  # CSS keeps ~4 decimals
        assert len(set(subtypes.values())) == 6  # six distinct values, so the rows cannot be mixed up
        page.locator("#close-study").click()
        expect(page.locator("#viewer")).to_be_hidden()


def test_viewer_shows_the_mask_and_volumes(browser, seg_server, browser_data):
    """A segmentation bundle: the mask card lists each subtype's volume and the total from the Study
    JSON; the mask toggle (checkbox and key m) and the per-subtype checkboxes set the slice image's
    `mask` query, and the image shows the subtype's colour only while it is on."""
    from playwright.sync_api import expect

    from ichdet.server.overlays import SUBTYPE_COLOURS

    expect.set_options(timeout=WAIT_MS)
    with _viewer_page(browser) as page:
        page.goto(seg_server + "/")
        expect(page.locator("#mask-card")).to_be_hidden()
        page.set_input_files("#file-input", str(browser_data["upload"]))
        expect(page.locator("#viewer")).to_be_visible()
        study = _study(seg_server, _study_id(page))
        _check_study_panel(page, expect, study)
        expect(page.locator("#mask-card")).to_be_visible()
        vols = study["volumes"]
        names = [g["name"] for g in study["segments"]]
        expect(page.locator("#volumes th")).to_have_text([*names, "total"])
        expect(page.locator("#volumes td.num")).to_have_text([f"{vols['subtypes'][n]:.1f} mL" for n in names]
                                                            + [f"{vols['total']:.1f} mL"])
        assert vols["subtypes"]["intraparenchymal"] == vols["total"] > 0
        expect(page.locator("#abc2")).to_contain_text("ABC/2 of the largest lesion: ")
        img = page.locator("#slice-image")
        k = int(img.get_attribute("data-slice"))
        _wait_loaded(page, f"/slices/{k}?window=brain&overlay=false")
        assert "mask=" not in img.get_attribute("src")
        plain = _pixels(page)
        red = SUBTYPE_COLOURS["intraparenchymal"]

        def reddish(px: list[int]) -> int:  # pixels redder than grey by the mask's tint
            return sum(1 for i in range(0, len(px), 4) if px[i] - px[i + 1] > 40)

        assert reddish(plain) == 0
        page.locator("#mask-toggle").check()
        _wait_loaded(page, "mask=1%2C2%2C3%2C4%2C5")
        expect(img).to_have_attribute("data-mask", "1,2,3,4,5")
        on = _pixels(page)
        n = len(on) // 4  # the cranial cavity tinted and outlined, the air and scalp around it not
        assert 0.2 * n < reddish(on) < n and on[0] == on[1] == on[2] and tuple(red) in {tuple(on[i:i + 3])
                                                                                       for i in range(0, len(on), 4)}
        page.locator("#mask-label-2").uncheck()  # intraparenchymal off: the other four shown, none present
        _wait_loaded(page, "mask=1%2C3%2C4%2C5")
        assert reddish(_pixels(page)) == 0
        page.locator("#mask-label-2").check()
        _wait_loaded(page, "mask=1%2C2%2C3%2C4%2C5")
        page.keyboard.press("m")  # the key turns the mask off
        expect(page.locator("#mask-toggle")).not_to_be_checked()
        _wait_loaded(page, f"/slices/{k}?window=brain&overlay=false")
        assert "mask=" not in img.get_attribute("src") and _pixels(page) == plain
        page.locator("#close-study").click()
        expect(page.locator("#viewer")).to_be_hidden()

"""`ichdet serve`'s JSON API (docs/serve-api.md) through FastAPI's TestClient: uploads of every
kind, the slice images, --studies, the upload limit, unsafe zips, the bounded queue, study
expiry and eviction, the OpenAPI schema, the logs, and the CLI command."""
from __future__ import annotations

import io
import json
import logging
import stat
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import ichdet  # noqa: E402
from ichdet import cli  # noqa: E402
from ichdet.server.queue import QueueFull  # noqa: E402
from ichdet.server.uploads import NOT_A_SCAN, display_name, sniff  # noqa: E402

STUDY_KEYS = {"id", "name", "shape", "n_slices", "size", "slice_labels", "slice_probabilities", "probability",
              "threshold", "decision", "top_slices", "subtypes", "volumes", "segments", "windows", "warnings", "seconds",
              "expires_in_s"}
WINDOWS = ("brain", "subdural", "bone", "40/80", "50/150")


@pytest.fixture(scope="module")
def reference(scan_bundle):
    """The library's own prediction of a path, to compare the server's with."""
    return ichdet.load_predictor(scan_bundle).predict


def _upload(c: TestClient, path: Path, name: str | None = None, url: str = "/api/studies"):
    headers = {"Content-Type": "application/octet-stream"}
    if name is not None:
        headers["X-Filename"] = name
    return c.post(url, content=path.read_bytes(), headers=headers)


def _png(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)))


def _study_dirs(app) -> list[Path]:
    root = app.state.server.space.root
    return sorted(root.iterdir()) if root is not None and root.is_dir() else []


# ---------------------------------------------------------------------------------------------
def test_health(client, scan_bundle):
    r = client.get("/api/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "model": {"name": scan_bundle.parent.name, "kind": "scan", "threshold": 0.4},
                        "queue": {"pending": 0, "capacity": 4}, "studies_open": 0}


@pytest.mark.parametrize("kind, n_slices, shape", [("zip", 4, [8, 64, 64]), ("nifti", 4, [8, 64, 64]),
                                                   ("png", 1, [1, 64, 64]), ("dicom", 1, [1, 64, 64])])
def test_upload_every_kind(client, reference, request, kind, n_slices, shape):
    path = request.getfixturevalue({"zip": "dicom_zip", "nifti": "nifti_path", "png": "png_path",
                                    "dicom": "dicom_file"}[kind])
    r = _upload(client, path, f"my {kind} scan")
    assert r.status_code == 201, r.text
    s = r.json()
    assert set(s) == STUDY_KEYS
    assert s["name"] == f"my {kind} scan" and len(s["id"]) == 32
    assert s["n_slices"] == n_slices and s["shape"] == shape and s["size"] == 64
    assert len(s["slice_probabilities"]) == len(s["slice_labels"]) == n_slices
    assert s["slice_labels"][0] == ("slices 0-1" if n_slices == 4 else "slice 0")
    assert s["windows"] == ["brain", "subdural", "bone"] and s["subtypes"] is None
    assert s["threshold"] == 0.4 and s["decision"] == (s["probability"] >= 0.4)
    assert s["top_slices"] and all(0 <= k < n_slices for k in s["top_slices"])
    assert s["slice_probabilities"][s["top_slices"][0]] == max(s["slice_probabilities"])
    assert s["expires_in_s"] == 1800 and s["seconds"] > 0
    ref = reference(path)
    assert s["probability"] == pytest.approx(ref.probability, abs=1e-6)
    assert s["slice_probabilities"] == pytest.approx(ref.slice_probabilities[::shape[0] // n_slices], abs=1e-6)
    assert client.get(f"/api/studies/{s['id']}").json() == {**s, "expires_in_s": 1800}
    if kind == "png":
        assert any("no Hounsfield units" in w for w in s["warnings"])


def test_an_odd_number_of_slices(client, reference, dicom_dir, tmp_path):
    """7 slices through the 2x2x2 filter: 4 display slices, the last of them slice 6 alone."""
    from ichdet.io import read_volume

    last = Path(read_volume(dicom_dir).source[-1]).name
    archive = tmp_path / "seven.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(dicom_dir.glob("*.dcm")):
            if f.name != last:
                zf.write(f, f"series/{f.name}")
    s = _upload(client, archive, "seven.zip").json()
    assert s["shape"] == [7, 64, 64] and s["n_slices"] == 4
    assert s["slice_labels"] == ["slices 0-1", "slices 2-3", "slices 4-5", "slice 6"]
    ref = reference(archive)
    assert s["slice_probabilities"] == pytest.approx(ref.slice_probabilities[::2], abs=1e-6)
    assert s["top_slices"] == list(dict.fromkeys(t["index"] // 2 for t in ref.top_slices))
    _png(client.get(f"/api/studies/{s['id']}/slices/3"))
    assert client.get(f"/api/studies/{s['id']}/slices/4").status_code == 404


def test_default_display_name_and_percent_encoding(client, nifti_path):
    assert _upload(client, nifti_path).json()["name"] == "upload.nii.gz"
    assert _upload(client, nifti_path, "../../etc/Kopf%20CT%C3%BC.nii.gz").json()["name"] == "Kopf CTü.nii.gz"


def test_slice_images(client, dicom_zip):
    s = _upload(client, dicom_zip, "s.zip").json()
    url = f"/api/studies/{s['id']}/slices"
    k = 2
    imgs = {w: _png(client.get(f"{url}/{k}", params={"window": w})) for w in WINDOWS}
    for w, img in imgs.items():
        assert img.shape == (64, 64) and img.dtype == np.uint8, w
    assert np.array_equal(imgs["40/80"], imgs["brain"])  # the preset's own values
    assert np.array_equal(_png(client.get(f"{url}/{k}")), imgs["brain"])  # brain is the default
    for a in ("brain", "subdural", "bone", "50/150"):
        for b in ("brain", "subdural", "bone", "50/150"):
            assert a == b or not np.array_equal(imgs[a], imgs[b]), (a, b)
    skull = imgs["brain"] == 255  # above 80 HU: bone (and bright blood)
    assert skull.any() and (imgs["bone"][skull] < 255).all()
    assert len(np.unique(imgs["bone"][skull])) > 3  # bone has grey levels in the bone window only
    # display slices follow the model: every one of them, 0..n_slices-1, is a PNG; others are 404
    for j in range(s["n_slices"]):
        _png(client.get(f"{url}/{j}", params={"window": "bone"}))


def test_overlay(client, dicom_zip):
    s = _upload(client, dicom_zip, "s.zip").json()
    url = f"/api/studies/{s['id']}/slices"
    differs = []
    for k in range(s["n_slices"]):
        plain = _png(client.get(f"{url}/{k}"))
        over = _png(client.get(f"{url}/{k}", params={"overlay": "true"}))
        assert over.shape == (64, 64, 3)
        differs.append(not np.array_equal(over, np.repeat(plain[..., None], 3, axis=2)))
    assert any(differs)
    study = client.app.state.server.store.get(s["id"])
    assert sorted(study.cams) == list(range(s["n_slices"])) and study.cam_jobs == {}  # cached
    from ichdet.server.scans import slice_cams

    alone = slice_cams(client.app.state.server.predictor, study, [1])[1]  # maps are computed in blocks
    np.testing.assert_allclose(alone, study.cams[1], atol=1e-5)
    again = _png(client.get(f"{url}/0", params={"overlay": "true", "window": "bone"}))
    assert again.shape == (64, 64, 3)


def test_concurrent_overlays_share_one_gradcam(make_app, png_path):
    import asyncio

    import httpx

    app = make_app()
    server = app.state.server
    release = threading.Event()

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            s = (await ac.post("/api/studies", content=png_path.read_bytes())).json()
            started = threading.Event()

            def hold() -> None:
                started.set()
                release.wait(30)

            blocker = server.queue.submit(hold)
            assert started.wait(10)  # the worker is busy before the overlays arrive (they would jump the queue)
            tasks = [asyncio.create_task(ac.get(f"/api/studies/{s['id']}/slices/0?overlay=true")) for _ in range(3)]
            for _ in range(100):
                await asyncio.sleep(0.02)
                if all(t.done() for t in tasks) or server.queue.pending == 1:
                    break
            assert server.queue.pending == 1  # three requests, one Grad-CAM job waiting
            release.set()
            rs = await asyncio.gather(*tasks)
            await asyncio.wrap_future(blocker)
            pngs = [_png(r) for r in rs]
            assert all(np.array_equal(p, pngs[0]) for p in pngs)

    try:
        asyncio.run(main())
    finally:
        release.set()
        server.queue.stop()
        server.store.close_all()
        server.space.remove()


@pytest.mark.parametrize("window", ["lung", "soft_tissue", "Brain", "40/0", "40/-80", "abc/80", "40", "40/80/2", ""])
def test_bad_window_is_400(client, png_path, window):
    s = _upload(client, png_path).json()
    r = client.get(f"/api/studies/{s['id']}/slices/0", params={"window": window})
    assert r.status_code == 400 and "window must be" in r.json()["detail"]


def test_slice_out_of_range_and_unknown_study(client, nifti_path):
    s = _upload(client, nifti_path).json()
    for k in (4, 99, -1):
        r = client.get(f"/api/studies/{s['id']}/slices/{k}")
        assert r.status_code == 404 and "outside 0..3" in r.json()["detail"]
    assert client.get(f"/api/studies/{s['id']}/slices/x").status_code == 400
    assert client.get(f"/api/studies/{s['id']}/slices/0", params={"overlay": "perhaps"}).status_code == 400
    for r in (client.get("/api/studies/nope"), client.get("/api/studies/nope/slices/0"),
              client.delete("/api/studies/nope")):
        assert r.status_code == 404 and r.json()["detail"].startswith("no such study")


def test_predict_equals_cli_json(client, nifti_path, dicom_zip, scan_bundle, capsys):
    for path in (nifti_path, dicom_zip):
        r = _upload(client, path, "scan-x", url="/api/predict")
        assert r.status_code == 200, r.text
        got = r.json()
        capsys.readouterr()
        assert cli.run(["predict", str(path), "--model", str(scan_bundle), "--json", "--quiet"]) == 0
        want = json.loads(capsys.readouterr().out)["scans"][0]
        assert got["input"] == "scan-x"
        for key in ("input", "seconds"):
            got.pop(key), want.pop(key)
        assert got == want
    assert client.get("/api/health").json()["studies_open"] == 0  # nothing kept
    assert _study_dirs(client.app) == []


def test_subtype_bundle(subtype_bundle, nifti_path, dicom_zip, tmp_path, capsys):
    """A subtype bundle: /api/predict and the Study JSON carry the six label probabilities the
    library gives ("any" = the probability), and the overlay explains the "any" logit."""
    from ichdet.inference.heatmaps import body_overlay, gradcam
    from ichdet.metrics import SUBTYPE_LABELS
    from ichdet.server import create_app

    predictor = ichdet.load_predictor(subtype_bundle)
    bundle = predictor.bundle
    want = predictor.predict(nifti_path).subtypes
    assert list(want) == list(SUBTYPE_LABELS) and len(set(want.values())) == 6
    with TestClient(create_app(subtype_bundle, tmp_root=tmp_path / "serve-tmp")) as c:
        r = _upload(c, nifti_path, "scan-x", url="/api/predict")
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["subtypes"] == want and got["subtypes"]["any"] == got["probability"]
        assert list(got["subtypes"]) == list(SUBTYPE_LABELS)  # JSON keeps the order
        assert cli.run(["predict", str(nifti_path), "--model", str(subtype_bundle), "--json", "--quiet"]) == 0
        assert json.loads(capsys.readouterr().out)["scans"][0]["subtypes"] == got["subtypes"]
        s = _upload(c, nifti_path, "scan-x").json()
        assert set(s) == STUDY_KEYS and s["subtypes"] == want and s["probability"] == want["any"]
        assert c.get(f"/api/studies/{s['id']}").json()["subtypes"] == want
        z = _upload(c, dicom_zip, "s.zip").json()
        assert z["subtypes"] == predictor.predict(dicom_zip).subtypes
        study = c.app.state.server.store.get(s["id"])
        over = _png(c.get(f"/api/studies/{s['id']}/slices/1", params={"overlay": "true"}))
        gray = _png(c.get(f"/api/studies/{s['id']}/slices/1"))
        seq = c.app.state.server.predictor.sequence(study.image)[:4]  # slice 1's block, as the server computes it
        cam = gradcam(bundle.model, "scan", seq, class_index=5)[1]
        np.testing.assert_array_equal(over, body_overlay(gray / 255.0, cam))
        other = body_overlay(gray / 255.0, gradcam(bundle.model, "scan", seq, class_index=0)[1])
        assert not np.array_equal(over, other)


def test_studies_folder(client, make_app, reference, studies_dir):
    listed = client.get("/api/studies/available").json()
    assert listed == {"studies": [{"name": "case_a", "type": "dicom"}, {"name": "case_b.nii.gz", "type": "nifti"},
                                  {"name": "case_c.png", "type": "image"}]}
    for entry in listed["studies"]:
        r = client.post("/api/studies/open", json={"name": entry["name"]})
        assert r.status_code == 201, r.text
        s = r.json()
        assert s["name"] == entry["name"] and set(s) == STUDY_KEYS
        assert s["probability"] == pytest.approx(reference(studies_dir / entry["name"]).probability, abs=1e-6)
        _png(client.get(f"/api/studies/{s['id']}/slices/0"))
    for name in ("nope", "../case_b.nii.gz", str(studies_dir / "case_b.nii.gz"), "/etc/passwd", "."):
        r = client.post("/api/studies/open", json={"name": name})
        assert r.status_code == 404 and "no study named" in r.json()["detail"]
    assert client.post("/api/studies/open", json={}).status_code == 400
    with TestClient(make_app()) as c:  # without --studies
        assert c.get("/api/studies/available").json() == {"studies": []}
        assert c.post("/api/studies/open", json={"name": "case_b.nii.gz"}).status_code == 404


def test_upload_limit(make_app, nifti_path):
    body = nifti_path.read_bytes()
    assert len(body) > 12 * 1024
    with TestClient(make_app(max_upload_mb=0.01)) as c:
        r = c.post("/api/studies", content=body)  # Content-Length says too much: refused before reading
        assert r.status_code == 413 and r.json() == {"detail": "upload is larger than the limit of 0.01 MB"}

        def chunks():  # no Content-Length: counted while streaming
            for i in range(0, len(body), 4096):
                yield body[i:i + 4096]

        r = c.post("/api/predict", content=chunks())
        assert r.status_code == 413 and r.json() == {"detail": "upload is larger than the limit of 0.01 MB"}
        assert _study_dirs(c.app) == []
        assert c.post("/api/studies", content=b"").status_code == 400


@pytest.mark.parametrize("entry, reason", [("../evil.dcm", "outside its folder"), ("/abs.dcm", "absolute path"),
                                           ("a/../../evil.dcm", "outside its folder"), ("link", "symbolic link")])
def test_unsafe_zip_entries(client, tmp_path, dicom_file, entry, reason):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(dicom_file, "ok/IM1.dcm")
        if entry == "link":
            info = zipfile.ZipInfo("link.dcm")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
        else:
            zf.writestr(zipfile.ZipInfo(entry), b"x")
    r = _upload(client, archive, "bad.zip")
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert detail.startswith("bad.zip: zip entry") and reason in detail and "refusing" in detail
    assert _study_dirs(client.app) == []


def test_not_a_scan(client, tmp_path, dicom_file):
    for body in (b"garbage bytes " * 100, b"GIF89a" + bytes(400), b"%PDF-1.4\n" + bytes(400)):
        r = client.post("/api/studies", content=body)
        assert r.status_code == 400 and r.json() == {"detail": NOT_A_SCAN}
    root = str(client.app.state.server.space.root)
    cases = {"truncated.dcm": dicom_file.read_bytes()[:600],  # DICM magic, then cut off
             "junk.zip": b"PK\x03\x04" + bytes(300),
             "text.zip": _zip_of({"readme.txt": b"no scans here"}),
             "half.nii.gz": b"\x1f\x8b\x08\x00" + bytes(300),
             "fake.png": b"\x89PNG\r\n\x1a\n" + bytes(300),
             "fake.jpg": b"\xff\xd8\xff\xe0" + bytes(300)}
    for name, body in cases.items():
        r = client.post("/api/studies", content=body, headers={"X-Filename": name})
        assert r.status_code == 400, (name, r.text)
        detail = r.json()["detail"]
        assert detail.startswith(name), (name, detail)
        assert root not in detail and "upload." not in detail and "/tmp" not in detail and "\n" not in detail
    assert _study_dirs(client.app) == []


def test_a_corrupt_file_is_400_and_our_own_error_500(make_app, tmp_path, nifti_path, monkeypatch):
    from ctfactory import JPEG_LS_REASON, write_corrupt_jpeg_ls

    from ichdet.inference.predictor import Predictor

    jls = write_corrupt_jpeg_ls(tmp_path / "jls.dcm")
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        r = _upload(c, jls, "head.dcm")
        assert r.status_code == 400 and r.json() == {"detail": "head.dcm: pixel data cannot be decoded (JPEG-LS "
                                                     f"Lossless Image Compression 1.2.840.10008.1.2.4.80): {JPEG_LS_REASON}"}

        def prepare(self, x, series_uid=None):
            raise ValueError("a bug in a transform")  # not the upload's fault

        monkeypatch.setattr(Predictor, "prepare", prepare)
        assert _upload(c, nifti_path, "head.nii.gz").status_code == 500
        assert _study_dirs(c.app) == []


def _zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_queue_full_is_503(make_app, png_path):
    app = make_app(queue_capacity=2)
    with TestClient(app) as c:
        s = _upload(c, png_path).json()
        q = app.state.server.queue
        started, release = threading.Event(), threading.Event()

        def block():
            started.set()
            release.wait(30)

        try:
            jobs = [q.submit(block)]
            assert started.wait(10)  # the worker is busy ...
            jobs += [q.submit(release.wait, 30) for _ in range(2)]  # ... and two wait: full
            full = {"detail": "inference queue is full (2 waiting); try again shortly"}
            r = _upload(c, png_path)
            assert r.status_code == 503 and r.json() == full
            r = c.get(f"/api/studies/{s['id']}/slices/0", params={"overlay": "true"})  # Grad-CAM needs the queue
            assert r.status_code == 503 and r.json() == full
            assert c.get("/api/health").json()["queue"] == {"pending": 2, "capacity": 2}
            _png(c.get(f"/api/studies/{s['id']}/slices/0"))  # plain slices do not
            with pytest.raises(QueueFull):
                q.submit(print)
        finally:
            release.set()
        for j in jobs:
            j.result(10)
        assert _upload(c, png_path).status_code == 201
        assert len(_study_dirs(app)) == 2


def test_delete_removes_temp_files(client, dicom_zip):
    s = _upload(client, dicom_zip).json()
    study = client.app.state.server.store.get(s["id"])
    assert study.tmp_dir.is_dir() and (study.tmp_dir / "upload.zip").is_file()
    r = client.delete(f"/api/studies/{s['id']}")
    assert r.status_code == 204 and r.content == b""
    assert not study.tmp_dir.exists()
    assert client.get(f"/api/studies/{s['id']}").status_code == 404
    assert client.get(f"/api/studies/{s['id']}/slices/0").status_code == 404


def test_expiry_removes_temp_files(make_app, png_path, monkeypatch):
    import ichdet.server.app as server_app

    app = make_app(ttl_s=0.3)
    with TestClient(app) as c:  # checked on every request
        s = _upload(c, png_path).json()
        assert s["expires_in_s"] == 0 and len(_study_dirs(app)) == 1
        time.sleep(0.4)
        assert c.get("/api/health").json()["studies_open"] == 0
        assert _study_dirs(app) == [] and c.get(f"/api/studies/{s['id']}").status_code == 404
    monkeypatch.setattr(server_app, "SWEEP_EVERY_S", 0.05)
    app = make_app(ttl_s=0.3)
    with TestClient(app) as c:  # ... and in the background, with no request coming
        assert _upload(c, png_path).status_code == 201 and len(_study_dirs(app)) == 1
        deadline = time.monotonic() + 5
        while _study_dirs(app) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _study_dirs(app) == [] and len(app.state.server.store) == 0


def test_max_studies_evicts_least_recently_used(make_app, png_path):
    app = make_app(max_studies=2)
    with TestClient(app) as c:
        ids = [_upload(c, png_path).json()["id"] for _ in range(2)]
        first_dir = app.state.server.store.get(ids[0]).tmp_dir  # ids[0] is now the most recently used
        c.get(f"/api/studies/{ids[1]}")  # ... and now ids[1]
        third = _upload(c, png_path).json()["id"]
        assert c.get(f"/api/studies/{ids[0]}").status_code == 404 and not first_dir.exists()
        assert c.get(f"/api/studies/{ids[1]}").status_code == 200 and c.get(f"/api/studies/{third}").status_code == 200
        assert c.get("/api/health").json()["studies_open"] == 2 and len(_study_dirs(app)) == 2
        root = app.state.server.space.root
    assert not root.exists()  # shutdown closes every study and removes the server's temp folder


def test_openapi(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) >= {"/api/health", "/api/studies/available", "/api/studies", "/api/studies/open",
                          "/api/studies/{study_id}", "/api/studies/{study_id}/slices/{k}", "/api/predict"}
    assert set(paths["/api/studies/{study_id}"]) == {"get", "delete"}
    for p in ("/api/studies", "/api/predict"):
        body = paths[p]["post"]["requestBody"]
        assert body["required"] and list(body["content"]) == ["application/octet-stream"]
        assert any(par["name"].lower() == "x-filename" for par in paths[p]["post"]["parameters"])
    assert "201" in paths["/api/studies"]["post"]["responses"] and "413" in paths["/api/studies"]["post"]["responses"]
    params = {p["name"] for p in paths["/api/studies/{study_id}/slices/{k}"]["get"]["parameters"]}
    assert params == {"study_id", "k", "window", "overlay", "mask"}
    assert "image/png" in paths["/api/studies/{study_id}/slices/{k}"]["get"]["responses"]["200"]["content"]
    assert "StudyOut" in spec["components"]["schemas"]


def test_page_and_static(client):
    from ichdet.server.app import STATIC

    r = client.get("/")
    if (STATIC / "index.html").is_file():
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    else:
        assert r.status_code == 404
    if (STATIC / "viewer.js").is_file():
        assert client.get("/static/viewer.js").status_code == 200
    assert client.get("/static/nope.js").status_code == 404
    assert client.get("/static/../app.py").status_code == 404


def test_logs_hold_no_names(client, caplog, nifti_path, tmp_path):
    from ichdet.io import read_volume, write_dicom_series
    from ichdet.io.volume import Volume

    vol = read_volume(nifti_path)
    one = Volume(vol.hu[3:4], vol.spacing, vol.affine, patient_id="PID-DOE-77")
    dcm = write_dicom_series(one, tmp_path / "doe", patient_name="Doe^Jane")[0]
    caplog.set_level(logging.DEBUG, logger="ichdet")
    caplog.set_level(logging.INFO)
    s = _upload(client, dcm, "jane_doe_head.dcm").json()
    assert s["name"] == "jane_doe_head.dcm"
    _png(client.get(f"/api/studies/{s['id']}/slices/0", params={"overlay": "true"}))
    assert _upload(client, dcm, "jane_doe_head.dcm", url="/api/predict").status_code == 200
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(dcm.read_bytes()[:700])
    r = _upload(client, broken, "jane_doe_head.dcm")
    assert r.status_code == 400 and r.json()["detail"].startswith("jane_doe_head.dcm")
    client.delete(f"/api/studies/{s['id']}")
    messages = [rec.getMessage() for rec in caplog.records]
    assert any(s["id"] in m and "opened" in m for m in messages)
    assert any("refused: 400" in m for m in messages)
    for m in messages:
        assert "Doe" not in m and "DOE" not in m and "jane" not in m.lower() and "head.dcm" not in m, m


def test_helpers():
    assert sniff(b"PK\x03\x04rest") == ".zip" and sniff(b"\x1f\x8b\x08") == ".nii.gz"
    assert sniff(bytes(344) + b"n+1\x00") == ".nii" and sniff(bytes(344) + b"ni1\x00") == ".nii"
    assert sniff(b"\x89PNG\r\n") == ".png" and sniff(b"\xff\xd8\xff\xdb") == ".jpg"
    assert sniff(bytes(128) + b"DICM") == ".dcm" and sniff(b"hello") is None and sniff(b"") is None
    assert display_name(None, ".zip") == "upload.zip" and display_name("", ".png") == "upload.png"
    assert display_name("C:\\Users\\x\\scan.zip", ".zip") == "scan.zip"
    assert display_name("a/b\x00\x07c.nii", ".nii") == "bc.nii"


# ---- the CLI command --------------------------------------------------------------------------
def test_cli_serve_defaults_and_announce(monkeypatch, capsys, scan_bundle, studies_dir):
    import uvicorn

    args = cli.build_parser().parse_args(["serve", "--model", "b"])
    assert (args.host, args.port, args.studies, args.max_upload_mb, args.queue, args.ttl_minutes) == (
        "127.0.0.1", 8000, None, 512, 4, 30)
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    assert cli.run(["serve", "--model", str(scan_bundle), "--port", "8123", "--studies", str(studies_dir)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "ichdet serve: http://127.0.0.1:8123/ (Ctrl-C to stop)" and err == ""
    assert calls[0][1]["host"] == "127.0.0.1" and calls[0][1]["port"] == 8123 and calls[0][1]["log_level"] == "info"
    assert cli.run(["serve", "--model", str(scan_bundle), "--host", "0.0.0.0"]) == 0
    out, err = capsys.readouterr()
    assert "http://0.0.0.0:8000/" in out
    assert err.strip() == ("ichdet: warning: --host 0.0.0.0: the viewer is reachable from the network and has no "
                           "authentication")


@pytest.mark.parametrize("extra", [["--studies", "MISSING"], ["--max-upload-mb", "0"], ["--queue", "0"],
                                   ["--ttl-minutes", "-1"], ["--port", "70000"]])
def test_cli_serve_bad_input_exits_2(monkeypatch, capsys, scan_bundle, tmp_path, extra):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("must not start"))
    extra = [str(tmp_path / "missing") if e == "MISSING" else e for e in extra]
    assert cli.run(["serve", "--model", str(scan_bundle), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ichdet: error:") and err.count("\n") == 1


def test_cli_serve_bad_bundle_exits_2(capsys, tmp_path):
    assert cli.run(["serve", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"ichdet: error: {tmp_path}: not a model bundle (no bundle.json)"

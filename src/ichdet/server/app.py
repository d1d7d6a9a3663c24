"""The FastAPI app of `ichdet serve`: the viewer page and the JSON API of docs/serve-api.md.

`create_app` builds the app (pure: nothing listens; the tests drive it with TestClient); `serve`
runs it under uvicorn. Everything heavy - reading an upload, the model, Grad-CAM - runs on the
one worker of the bounded inference queue (queue.py) and is awaited, so no thread waits per
request; a full queue answers 503. Logs (logger "ichdet.server") carry study ids, slice counts,
probabilities and seconds, never a display name, a file name or anything read from a file.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

import ichdet
from ichdet.engine.bundle import load_bundle
from ichdet.errors import InputError
from ichdet.inference.predictor import Predictor
from ichdet.inference.result import ScanPrediction
from ichdet.server.catalog import StudyCatalog, study_type
from ichdet.server.overlays import mask_overlay, parse_labels
from ichdet.server.queue import InferenceQueue, QueueFull, QueueStopped
from ichdet.server.scans import PRESETS, open_scan, parse_display_window, png_bytes, predict_scan, slice_cams, slice_gray
from ichdet.server.store import OpenStudy, StudyStore, remove_dir
from ichdet.server.uploads import TempSpace, UploadError, check_declared_size, display_name, save_body

log = logging.getLogger("ichdet.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
STATIC = Path(__file__).parent / "static"
SWEEP_EVERY_S = 30.0  # the background check for expired studies
CAM_BLOCK = 4  # display slices whose Grad-CAM is computed together (slice k // CAM_BLOCK's block)
SLICE_MAX_AGE_S = 300  # a study's slice images never change: let the browser keep them a while
RAW_BODY = {"requestBody": {"required": True, "description": "the scan file itself: a zip of a DICOM series, "
                            "a NIfTI (.nii or .nii.gz), a PNG/JPEG or a single DICOM file (type sniffed from "
                            "the bytes)", "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                              "format": "binary"}}}}}


# ---- schemas (for /openapi.json; the handlers build the JSON themselves) ------------------------
class Error(BaseModel):
    detail: str


class ModelInfo(BaseModel):
    name: str
    kind: str
    threshold: float


class QueueInfo(BaseModel):
    pending: int
    capacity: int


class Health(BaseModel):
    status: str
    model: ModelInfo
    queue: QueueInfo
    studies_open: int


class AvailableStudy(BaseModel):
    name: str
    type: str


class AvailableStudies(BaseModel):
    studies: list[AvailableStudy]


class OpenRequest(BaseModel):
    name: str


class StudyOut(BaseModel):
    id: str
    name: str
    shape: list[int]
    n_slices: int
    size: int
    slice_labels: list[str]
    slice_probabilities: list[float]
    probability: float
    threshold: float
    decision: bool
    top_slices: list[int]
    subtypes: dict[str, float] | None
    volumes: dict[str, Any] | None = None
    segments: list[dict[str, Any]] | None = None
    windows: list[str]
    warnings: list[str]
    seconds: float
    expires_in_s: int


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": Error} for c in codes}


# ---- the server's parts ------------------------------------------------------------------------
@dataclass
class Server:
    """What the handlers share (app.state.server)."""

    predictor: Predictor
    queue: InferenceQueue
    store: StudyStore
    catalog: StudyCatalog | None
    space: TempSpace
    max_upload_mb: float

    @property
    def limit_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` on the inference worker, awaited (QueueFull when the queue is full)."""
        return await asyncio.wrap_future(self.queue.submit(fn, *args, **kwargs))

    async def cam(self, study: OpenStudy, k: int) -> Any:
        """Grad-CAM of display slice k: cached, else computed on the worker together with the
        other uncached slices of its block of CAM_BLOCK (one Grad-CAM pass over a few slices costs
        little more than over one, and a viewer scrolls to the neighbours next), once however many
        requests ask meanwhile, ahead of waiting whole-scan predictions; a request that goes away
        does not cancel it."""
        if k in study.cams:
            return study.cams[k]
        block = k // CAM_BLOCK
        job = study.cam_jobs.get(block)
        if job is None:
            ks = [j for j in range(block * CAM_BLOCK, min(study.n_slices, (block + 1) * CAM_BLOCK))
                  if j not in study.cams]
            job = asyncio.wrap_future(self.queue.submit_first(slice_cams, self.predictor, study, ks))
            study.cam_jobs[block] = job

            def done(f: asyncio.Future) -> None:
                study.cam_jobs.pop(block, None)
                if not f.cancelled() and f.exception() is None:
                    study.cams.update(f.result())

            job.add_done_callback(done)
        return (await asyncio.shield(job))[k]

    def study_json(self, study: OpenStudy) -> dict[str, Any]:
        return study.to_json(list(PRESETS), self.store.expires_in(study))

    def study(self, study_id: str) -> OpenStudy:
        study = self.store.get(study_id)
        if study is None:
            raise HTTPException(404, "no such study (unknown, closed or expired)")
        return study

    async def receive(self, request: Request, x_filename: str | None) -> tuple[Path, Path, str]:
        """The request body streamed to a new temp folder -> (folder, file, display name)."""
        if self.queue.full():  # refuse before reading what could not be processed
            raise QueueFull(self.queue.pending)
        check_declared_size(request.headers.get("content-length"), self.limit_bytes, self.max_upload_mb)
        folder = self.space.new_dir()
        try:
            path = await save_body(request.stream(), folder, self.limit_bytes, self.max_upload_mb)
        except BaseException:
            remove_dir(folder)
            raise
        return folder, path, display_name(x_filename, path.name[len("upload"):])


class _SweepExpired:
    """ASGI middleware: close the expired studies before every request."""

    def __init__(self, app: Any, store: StudyStore):
        self.app, self.store = app, store

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            self.store.sweep()
        await self.app(scope, receive, send)


def create_app(bundle: str | Path, studies_dir: str | Path | None = None, max_upload_mb: float = 512,
               queue_capacity: int = 4, max_studies: int = 8, ttl_s: float = 1800,
               tmp_root: str | Path | None = None) -> FastAPI:
    """The app for one bundle. `studies_dir`: a folder whose studies the page may open by name;
    `max_upload_mb` (may be fractional): the upload limit (413 past it); `queue_capacity`: jobs that
    may wait for the inference worker (503 past it); `max_studies` / `ttl_s`: open studies kept
    (the least recently used closed first) and seconds an idle one lives; `tmp_root`: where the
    uploads' temporary folders go (default: the system's temp folder). InputError for a bad
    bundle, folder or setting."""
    if isinstance(max_upload_mb, bool) or not isinstance(max_upload_mb, (int, float)) or not max_upload_mb > 0:
        raise InputError(f"the upload limit must be a positive number of MB, got {max_upload_mb!r}")
    b = load_bundle(bundle)
    server = Server(predictor=Predictor(b), queue=InferenceQueue(queue_capacity),
                    store=StudyStore(max_studies, ttl_s), catalog=StudyCatalog(studies_dir) if studies_dir else None,
                    space=TempSpace(tmp_root), max_upload_mb=float(max_upload_mb))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def sweep_forever() -> None:
            while True:
                await asyncio.sleep(SWEEP_EVERY_S)
                server.store.sweep()

        server.queue.start()
        sweeper = asyncio.create_task(sweep_forever())
        log.info("serving bundle %s (%s)", b.name, b.kind)
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            server.queue.stop()
            server.store.close_all()
            server.space.remove()

    app = FastAPI(title="ichdet serve", version=ichdet.__version__, lifespan=lifespan,
                  description="Intracranial haemorrhage detection in head CT: upload a scan, get the model's "
                              "probability, decision, per-slice probabilities and Grad-CAM overlays. "
                              "Contract: docs/serve-api.md.")
    app.state.server = server
    app.add_middleware(_SweepExpired, store=server.store)
    _add_error_handlers(app)
    _add_routes(app, server)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    def refused(request: Request, status: int, detail: str) -> JSONResponse:
        log.info("%s %s refused: %d", request.method, request.url.path, status)  # never the detail: it names files
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(UploadError)
    async def _upload(request: Request, e: UploadError) -> JSONResponse:
        return refused(request, e.status, e.detail)

    @app.exception_handler(InputError)
    async def _input(request: Request, e: InputError) -> JSONResponse:
        return refused(request, 400, str(e))

    @app.exception_handler(QueueFull)
    async def _full(request: Request, e: QueueFull) -> JSONResponse:
        return refused(request, 503, str(e))

    @app.exception_handler(QueueStopped)
    async def _stopped(request: Request, e: QueueStopped) -> JSONResponse:
        return refused(request, 503, "the server is shutting down")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = (e.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return refused(request, 400, f"bad request: {where}: {first.get('msg', 'invalid value')}")


def _add_routes(app: FastAPI, server: Server) -> None:  # noqa: C901 - one short handler per endpoint
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            return JSONResponse({"detail": "the viewer page is not installed"}, status_code=404)
        return FileResponse(page, media_type="text/html")

    @app.get("/api/health", response_model=Health, summary="model, queue and open studies")
    async def health() -> dict[str, Any]:
        b = server.predictor.bundle
        return {"status": "ok", "model": {"name": b.name, "kind": b.kind, "threshold": b.threshold},
                "queue": {"pending": server.queue.pending, "capacity": server.queue.capacity},
                "studies_open": len(server.store)}

    @app.get("/api/studies/available", response_model=AvailableStudies, summary="the studies of --studies")
    def available() -> dict[str, Any]:  # a plain def: find_studies reads headers, so off the event loop
        return {"studies": server.catalog.refresh() if server.catalog is not None else []}

    @app.post("/api/studies", status_code=201, response_model=StudyOut, openapi_extra=RAW_BODY,
              responses=_errors(400, 413, 503), summary="upload a scan and open it as a study")
    async def upload_study(request: Request, x_filename: str | None = Header(
            default=None, description="display name of the upload (percent-encoded UTF-8 allowed; never logged)")
            ) -> JSONResponse:
        folder, path, name = await server.receive(request, x_filename)
        try:
            study = await server.run(open_scan, server.predictor, path, name, zipped=path.suffix == ".zip",
                                     hide={str(path): name, str(folder): name}, tmp_dir=folder)
        except BaseException:
            remove_dir(folder)
            raise
        return _opened(study)

    @app.post("/api/studies/open", status_code=201, response_model=StudyOut, responses=_errors(400, 404, 503),
              summary="open a study of --studies by name")
    async def open_available(req: OpenRequest) -> JSONResponse:
        source = server.catalog.source(req.name) if server.catalog is not None else None
        if source is None:
            raise HTTPException(404, f"no study named {req.name!r} in the studies folder")
        study = await server.run(open_scan, server.predictor, source, req.name,
                                 zipped=study_type(source) == "zip", hide=server.catalog.hide())
        return _opened(study)

    def _opened(study: OpenStudy) -> JSONResponse:
        server.store.add(study)
        p = study.prediction
        log.info("study %s opened: %d slices (%d shown), probability %.3f, %.2f s", study.id, p.shape[0],
                 study.n_slices, p.probability, p.seconds)
        return JSONResponse(server.study_json(study), status_code=201)

    @app.get("/api/studies/{study_id}", response_model=StudyOut, responses=_errors(404), summary="an open study")
    async def get_study(study_id: str) -> dict[str, Any]:
        return server.study_json(server.study(study_id))

    @app.delete("/api/studies/{study_id}", status_code=204, responses=_errors(404),
                summary="close a study and remove its temporary files")
    async def delete_study(study_id: str) -> Response:
        if not server.store.close(study_id):
            raise HTTPException(404, "no such study (unknown, closed or expired)")
        return Response(status_code=204)

    @app.get("/api/studies/{study_id}/slices/{k}", response_class=Response, responses={
        200: {"content": {"image/png": {}}, "description": "display slice k as PNG"}, **_errors(400, 404, 503)},
        summary="one display slice, windowed, optionally with its Grad-CAM overlay (a segmentation model: its "
                "P(bleed) map) or its bleed mask (`mask`: all, or subtype labels 1..5 such as 2,5)")
    async def slice_image(study_id: str, k: int, window: str = "brain", overlay: bool = False,
                          mask: str = "") -> Response:
        study = server.study(study_id)
        try:
            win = parse_display_window(window)
            show = parse_labels(mask)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        if show and study.labels is None:
            raise HTTPException(400, "this model does not segment: there is no bleed mask to show")
        if not 0 <= k < study.n_slices:
            raise HTTPException(404, f"slice {k} is outside 0..{study.n_slices - 1}")
        gray = slice_gray(study, win, k)
        if overlay:
            from ichdet.inference.heatmaps import body_overlay

            pixels = body_overlay(gray / 255.0, await server.cam(study, k))
        else:
            pixels = gray
        if show:
            pixels = mask_overlay(pixels, study.labels[k], show)
        return Response(png_bytes(pixels), media_type="image/png",
                        headers={"Cache-Control": f"private, max-age={SLICE_MAX_AGE_S}"})

    @app.post("/api/predict", response_model=ScanPrediction, openapi_extra=RAW_BODY,
              responses=_errors(400, 413, 503), summary="predict one scan (the `ichdet predict --json` entry); "
                                                        "nothing is kept")
    async def predict(request: Request, x_filename: str | None = Header(
            default=None, description="display name of the upload (percent-encoded UTF-8 allowed; never logged)")
            ) -> JSONResponse:
        folder, path, name = await server.receive(request, x_filename)
        try:
            _, _, result = await server.run(predict_scan, server.predictor, path, name, zipped=path.suffix == ".zip",
                                            hide={str(path): name, str(folder): name})
        finally:
            remove_dir(folder)
        log.info("prediction: %d slices, probability %.3f, %.2f s", result.shape[0], result.probability, result.seconds)
        return JSONResponse(result.to_dict())


# ---- running it --------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_for(host: str, port: int) -> str:
    h = host.strip("[]")
    return f"http://[{h}]:{port}/" if ":" in h else f"http://{h}:{port}/"


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, with the "ichdet.server" lines on its handler at INFO."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["ichdet.server"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve(bundle: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          studies_dir: str | Path | None = None, max_upload_mb: float = 512, queue_capacity: int = 4,
          max_studies: int = 8, ttl_s: float = 1800, announce: Callable[[str], None] | None = None) -> None:
    """Build the app and run it under uvicorn until interrupted; `announce(url)` is called once
    the bundle has loaded, before the server starts listening."""
    import uvicorn

    app = create_app(bundle, studies_dir=studies_dir, max_upload_mb=max_upload_mb, queue_capacity=queue_capacity,
                     max_studies=max_studies, ttl_s=ttl_s)
    if announce is not None:
        announce(url_for(host, port))
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=_log_config())

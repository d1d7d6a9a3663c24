"""`ichdet serve`: a local web viewer and JSON API for one model bundle (FastAPI under uvicorn).

    app.py      create_app (the routes of docs/serve-api.md) and serve (uvicorn)
    queue.py    the bounded inference queue: one worker thread for all model work
    uploads.py  raw request bodies -> files under a size limit, type sniffed from the bytes
    scans.py    a scan -> an open study (prediction + display stacks), slices -> PNG
    store.py    open studies, closed on request, when idle past their time or beyond the limit
    catalog.py  the --studies folder, opened by name only
    static/     the viewer page

Needs the `fastapi` and `uvicorn` packages; importing `ichdet` alone does not.
"""
from ichdet.server.app import DEFAULT_HOST, DEFAULT_PORT, create_app, serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "create_app", "serve"]

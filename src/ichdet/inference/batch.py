"""Predict on many inputs: studies found in each, read one ahead in a background thread while the
model runs, and every study that cannot be read recorded against it while the others go on.

Only input errors are recorded: an `InputError`, or an `OSError` / `MemoryError` while a study is
read and prepared (the file could not be read). Anything else, from the readers or the model, is
ours and propagates: the CLI reports it as an internal error (exit 1), not as bad input.
"""
from __future__ import annotations

import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Iterator, Sequence

from ichdet.datasets import Progress
from ichdet.errors import InputError
from ichdet.inference.predictor import Predictor
from ichdet.inference.result import ScanPrediction
from ichdet.inference.studies import FoundStudy, find_studies

UNREADABLE = (InputError, OSError, MemoryError)  # raised while reading a study: that input cannot be read


def study_slug(label: str, taken: set[str]) -> str:
    """A file-name-safe, unique folder name for a study's heatmaps and segmentation files."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", label.strip("/\\")).strip("._")[-120:] or "study"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}_{k}", k + 1
    taken.add(slug)
    return slug


def _error(label: str, e: BaseException) -> dict[str, str]:
    """{"input", "error"} for an input that cannot be read (one of `UNREADABLE`)."""
    if isinstance(e, InputError):
        msg = str(e)
        return {"input": label, "error": msg[len(label) + 2:] if msg.startswith(label + ": ") else msg}
    if isinstance(e, MemoryError):
        return {"input": label, "error": "out of memory reading the scan"}
    first = str(e).splitlines()[0] if str(e) else ""
    return {"input": label, "error": f"cannot be read ({e.__class__.__name__}: {first})" if first else
            f"cannot be read ({e.__class__.__name__})"}


def predict_inputs(predictor: Predictor, inputs: Sequence[str | Path], series_uid: str | None = None,
                   heatmaps: str | Path | None = None, progress: Progress | None = None,
                   outputs: str | Path | None = None) -> tuple[list[ScanPrediction], list[dict[str, str]]]:
    """Every study under `inputs` -> (results in study order, errors [{"input", "error"}] of the
    inputs that cannot be read); any other exception propagates. Each study's heatmaps go to
    `heatmaps`/SLUG and a segmentation bundle's mask files to `outputs`/SLUG (`study_slug`)."""
    studies: list[FoundStudy] = []
    errors: list[dict[str, str]] = []
    for inp in inputs:
        try:
            studies += find_studies(inp)
        except UNREADABLE as e:
            errors.append(_error(str(inp), e))
    results: list[ScanPrediction] = []
    taken: set[str] = set()
    with closing(_prepared(predictor, studies, series_uid)) as prepared:
        for i, (study, outcome) in enumerate(prepared):
            if isinstance(outcome, UNREADABLE):
                errors.append(_error(study.label, outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                volume, image, seconds = outcome
                slug = study_slug(study.label, taken)
                try:
                    results.append(predictor.finish(volume, image, seconds, study.label,
                                                    None if heatmaps is None else Path(heatmaps) / slug,
                                                    None if outputs is None else Path(outputs) / slug))
                except InputError as e:
                    errors.append(_error(study.label, e))
            if progress is not None:
                progress(i + 1, len(studies))
    return results, errors


def _prepared(predictor: Predictor, studies: list[FoundStudy],
              series_uid: str | None) -> Iterator[tuple[FoundStudy, object]]:
    """(study, (volume, image, seconds) or the exception) for each study, reading one ahead."""
    def load(study: FoundStudy):
        t0 = time.perf_counter()
        volume, image = predictor.prepare(study.source, series_uid)
        return volume, image, time.perf_counter() - t0

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ichdet-read") as pool:
        pending: Future | None = pool.submit(load, studies[0]) if studies else None
        try:
            for i, study in enumerate(studies):
                current = pending
                pending = pool.submit(load, studies[i + 1]) if i + 1 < len(studies) else None
                try:
                    outcome = current.result()
                except Exception as e:  # noqa: BLE001 - handed to the caller, who records or raises it
                    outcome = e
                yield study, outcome
        finally:  # the caller stopped early (an error): do not start the read queued next
            if pending is not None:
                pending.cancel()

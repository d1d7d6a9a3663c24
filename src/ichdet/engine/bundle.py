"""Model bundles: one folder holding everything `predict`, `serve`, `evaluate` and `export` need.

```
bundle/
  bundle.json   format, ichdet version, model name + kwargs, kind, preprocessing, context,
                operating point (chosen on validation data), validation metrics, data hash,
                slice_thickness_mm (the training scans' median slice spacing; null for 2D images),
                training_units ("display": trained on windowed images, PNG/JPEG; "HU": on CT)
  config.yaml   the resolved training config
  weights.pt    the network's state dict (torch.load(weights_only=True) reads it)
  svm.joblib    the SVM head, for kinds "alexnet_svm", "slice_svm" and "feature_svm" (a pickle: load bundles
                only from sources you trust, as with any pickle)
  splits.csv    scan_id -> train | val | test of the training data (`evaluate` never scores the
                scans a model was trained or validated on)
```
Kinds: "slice" (a slice classifier; a scan's score is its maximum slice probability),
"scan" (scan_lstm), "aggregate" (slice classifier + max or 95th percentile over slices),
"alexnet_svm" and "slice_svm" (slice features -> SVM), "feature_svm" (padded slice features -> SVM).
``labels`` in bundle.json lists what the bundle gives per scan: ["any"] (bleed / no bleed), or the
five subtypes then "any" for a multi-label model of kind slice, aggregate or scan.
``slice_thickness_mm``: `predict`, `serve` and `evaluate` merge a thinner series into slabs of this
thickness before the model (`Bundle.input_prep`); a bundle without it (older ones) sees slices as
they come. ``training_units`` "display": a CT slice or series reaches the model as the display
images it was trained on did, its first window in every channel (`PrepSpec.grey`).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import ichdet
from ichdet.errors import InputError
from ichdet.fileio import atomic_path
from ichdet.models.kinds import Kind, get_kind
from ichdet.preprocess.pipeline import PrepSpec

FORMAT = "ichdet-bundle"
FORMAT_VERSION = 1
TRAINING_UNITS = ("display", "HU", None)  # bundle.json "training_units" (`Volume.info["units"]`)
META, WEIGHTS, CONFIG, SVM, SPLITS = "bundle.json", "weights.pt", "config.yaml", "svm.joblib", "splits.csv"


@dataclass
class Bundle:
    """A loaded bundle: `model` in eval mode, `svm` when the kind has one, `meta` = bundle.json."""

    path: Path
    meta: dict[str, Any]
    model: torch.nn.Module
    svm: Any = None

    @property
    def kind(self) -> str:
        """The kind's name: slice, scan, aggregate, alexnet_svm or feature_svm."""
        return self.meta["kind"]

    @property
    def kind_spec(self) -> Kind:
        """The kind itself (`ichdet.models.kinds`): its scoring rule, labels, slice classifier, SVM."""
        return get_kind(self.kind)

    @property
    def prep(self) -> PrepSpec:
        """The preparation the model was trained with (the training cache's spec)."""
        return PrepSpec.from_dict(self.meta["prep"])

    @property
    def slice_thickness_mm(self) -> float | None:
        """The training scans' slice thickness (median slice spacing, mm); None for a bundle
        trained on 2D images or written before ichdet recorded it."""
        value = self.meta.get("slice_thickness_mm")
        return None if value is None else float(value)

    @property
    def training_units(self) -> str | None:
        """What the training images held: "display" (windowed PNG/JPEG images), "HU" (CT), or
        None (a mix, or a bundle written before ichdet recorded it)."""
        return self.meta.get("training_units")

    @property
    def input_prep(self) -> PrepSpec:
        """The preparation of new scans (predict, serve, evaluate): `prep`, with a thinner series
        first merged into slabs of `slice_thickness_mm` (`PrepSpec.slab_mm`), and for a model
        trained on display images a CT's first window in every channel (`PrepSpec.grey`), as a
        display image gives; `prep` itself when neither applies."""
        spec, t = self.prep, self.slice_thickness_mm
        if self.training_units == "display" and len(spec.windows) > 1:
            spec = dataclasses.replace(spec, grey=True)
        return spec if t is None else dataclasses.replace(spec, slab_mm=t)

    @property
    def context(self) -> int:
        return int(self.meta.get("context", 0))

    @property
    def threshold(self) -> float:
        return float(self.meta["operating_point"]["threshold"])

    @property
    def aggregate(self) -> str:
        return self.meta.get("aggregate", "max")

    @property
    def labels(self) -> tuple[str, ...]:
        """What the bundle scores per scan: ("any",), or the five subtypes then "any"."""
        return tuple(self.meta.get("labels", ("any",)))

    @property
    def has_subtypes(self) -> bool:
        return len(self.labels) > 1

    @property
    def name(self) -> str:
        """The experiment's name (config `experiment`), else the bundle folder's."""
        return str(self.meta.get("experiment") or (self.path.parent.name if self.path.name == "bundle" else self.path.name))

    def training_splits(self) -> dict[str, str]:
        """{scan_id: split} of the data the model was trained on: the bundle's splits.csv, or its
        run folder's (bundles written before splits.csv was kept); {} when neither exists."""
        from ichdet.datasets.splits import read_splits

        for path in (self.path / SPLITS, self.path.parent / SPLITS):
            if path.is_file():
                return read_splits(path)
        return {}


def save_bundle(out: str | Path, *, model: torch.nn.Module, model_name: str, model_kwargs: dict[str, Any],
                kind: str, prep: PrepSpec, context: int, operating_point: dict[str, Any],
                metrics: dict[str, Any], config_yaml: str, data_hash: str, aggregate: str = "max",
                svm: Any = None, extra: dict[str, Any] | None = None, splits: dict[str, str] | None = None,
                slice_thickness_mm: float | None = None, training_units: str | None = None) -> Path:
    """Write a bundle folder atomically (built beside `out`, then renamed over it).
    `slice_thickness_mm`: the training scans' median slice spacing (None: 2D images).
    `training_units`: "display" (trained on windowed PNG/JPEG images), "HU", or None (a mix, unknown)."""
    if training_units not in TRAINING_UNITS:
        raise InputError(f"training_units must be one of {TRAINING_UNITS}, got {training_units!r}")
    k = get_kind(kind)
    if (k.svm is not None) != (svm is not None):
        raise InputError(f"bundle kind {kind!r} {'needs' if svm is None else 'takes no'} SVM head")

    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "ichdet_version": ichdet.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "kind": kind, "model": {"name": model_name, "kwargs": model_kwargs}, "aggregate": aggregate,
        "labels": list(k.labels(model)), "prep": prep.to_dict(), "context": int(context), "operating_point": operating_point,
        "metrics": metrics, "data_hash": data_hash,
        "slice_thickness_mm": None if slice_thickness_mm is None else float(slice_thickness_mm),
        "training_units": training_units, **(extra or {}),
    }
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        torch.save(model.state_dict(), tmp / WEIGHTS)
        (tmp / CONFIG).write_text(config_yaml, encoding="utf-8")
        if svm is not None:
            svm.save(tmp / SVM)
        if splits:
            from ichdet.datasets.splits import write_splits

            write_splits(tmp / SPLITS, splits)
        (tmp / META).write_text(json.dumps(meta, indent=2, default=float), encoding="utf-8")
    return out


LINKED_SUFFIXES = (".pt", ".joblib", ".onnx")  # binary files ichdet only ever replaces whole (atomic writes)


def copy_bundle(src: str | Path, dst: str | Path) -> Path:
    """Copy a bundle folder to `dst` atomically (replacing what is there); returns `dst`.

    Weight files are hard links where `src` and `dst` share a filesystem (an AlexNet's weights.pt is
    228 MB, and `ichdet cv` and the demo keep a finished bundle in two or three places). ichdet never
    writes into a file in place, so a later write to either side leaves the other as it was; the
    text files (bundle.json, config.yaml, ...) are copies, so editing one by hand changes one bundle.
    """
    import os
    import shutil

    def link_or_copy(a: str, b: str) -> str:
        if a.endswith(LINKED_SUFFIXES):
            try:
                os.link(a, b)
                return b
            except OSError:  # another filesystem, or one without hard links
                pass
        return shutil.copy2(a, b)

    read_bundle_meta(src)  # only bundles are copied
    with atomic_path(dst) as tmp:
        shutil.copytree(src, tmp, copy_function=link_or_copy)
    return Path(dst)


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise InputError(f"not a model bundle (no {META})", path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"unreadable bundle metadata ({e})", meta_path) from None
    if meta.get("format") != FORMAT:
        raise InputError(f"not an ichdet bundle: format is {meta.get('format')!r}", meta_path)
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(f"bundle format version {meta['format_version']} is newer than this ichdet "
                         f"understands ({FORMAT_VERSION}); upgrade ichdet", meta_path)
    return meta


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle folder written by `save_bundle` (or `ichdet train`)."""
    from ichdet.models import create_model

    path = Path(path)
    meta = read_bundle_meta(path)
    model = create_model(meta["model"]["name"], **meta["model"]["kwargs"])
    try:
        state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError:
        raise InputError(f"bundle lacks {WEIGHTS}", path) from None
    except (RuntimeError, ValueError, OSError) as e:
        raise InputError(f"bundle weights do not load ({str(e).splitlines()[0][:160]})", path / WEIGHTS) from None
    model.eval()
    svm = None
    k = get_kind(meta["kind"])
    if k.svm is not None:
        if not (path / SVM).is_file():
            raise InputError(f"bundle of kind {k.name} lacks {SVM}", path)
        svm = k.svm.load(path / SVM)
    return Bundle(path=path, meta=meta, model=model, svm=svm)

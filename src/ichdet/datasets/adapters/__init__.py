"""Dataset adapters: public data sets -> manifest CSV (+ slice-label CSV).

Each adapter is `prepare_<name>(src, out, **options) -> Path` (the manifest path) with a matching
`add_arguments(parser)` whose argparse dest names are the function's keyword options, so a CLI is::

    sub = subparsers.add_parser("prepare")
    add_prepare_parsers(sub.add_subparsers(dest="dataset", required=True))
    ...
    prepare_from_args(args)   # -> manifest path
"""
from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Callable

from ichdet.datasets.adapters import cq500, ctich, folder, rsna
from ichdet.datasets.adapters.cq500 import prepare_cq500
from ichdet.datasets.adapters.ctich import prepare_ctich
from ichdet.datasets.adapters.folder import prepare_folder
from ichdet.datasets.adapters.rsna import prepare_rsna
from ichdet.errors import InputError

ADAPTERS: dict[str, Callable[..., Path]] = {
    "rsna": prepare_rsna,
    "cq500": prepare_cq500,
    "ctich": prepare_ctich,
    "folder": prepare_folder,
}
ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "rsna": rsna.add_arguments,
    "cq500": cq500.add_arguments,
    "ctich": ctich.add_arguments,
    "folder": folder.add_arguments,
}
DESCRIPTIONS = {
    "rsna": "RSNA 2019: stage_2_train.csv + stage_2_train/ID_<sop>.dcm",
    "cq500": "CQ500: CQ500-CT-<n> folders or zips + reads.csv (majority of 3 readers)",
    "ctich": "PhysioNet CT-ICH: ct_scans/*.nii + hemorrhage_diagnosis_raw_ct.csv",
    "folder": "a folder of PNG/JPEG/DICOM images + a labels CSV (e.g. Kaggle head_ct)",
}


def add_prepare_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add one sub-command per adapter: `SRC --out CSV [options]`, with `dataset` set to its name."""
    for name in ADAPTERS:
        p = subparsers.add_parser(name, help=DESCRIPTIONS[name], description=DESCRIPTIONS[name])
        p.add_argument("src", type=Path, metavar="SRC", help="the data set's folder")
        p.add_argument("--out", type=Path, default=Path("manifest.csv"),
                       help="manifest CSV to write (default: manifest.csv); slice labels go beside it")
        ARGUMENTS[name](p)
        p.set_defaults(dataset=name)


def options_from_args(name: str, args: argparse.Namespace) -> dict[str, object]:
    """The keyword options of adapter `name` found on `args`."""
    params = inspect.signature(ADAPTERS[name]).parameters
    return {k: getattr(args, k) for k, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and hasattr(args, k)}


def prepare(name: str, src: str | Path, out: str | Path, **options: object) -> Path:
    """Run adapter `name` (an unknown name is an InputError listing the known ones)."""
    if name not in ADAPTERS:
        raise InputError(f"unknown data set {name!r}; choose one of {', '.join(ADAPTERS)}")
    return ADAPTERS[name](src, out, **options)


def prepare_from_args(args: argparse.Namespace) -> Path:
    """Run the adapter chosen by `add_prepare_parsers` (args.dataset, args.src, args.out)."""
    return prepare(args.dataset, args.src, args.out, **options_from_args(args.dataset, args))


__all__ = ["ADAPTERS", "ARGUMENTS", "DESCRIPTIONS", "add_prepare_parsers", "options_from_args", "prepare",
           "prepare_from_args", "prepare_cq500", "prepare_ctich", "prepare_folder", "prepare_rsna"]

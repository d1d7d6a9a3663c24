"""The adapter registry and its argparse glue, as the `ichdet prepare` CLI uses them."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ichdet.datasets.adapters import ADAPTERS, ARGUMENTS, add_prepare_parsers, options_from_args, prepare_from_args
from ichdet.datasets.manifest import read_manifest
from ichdet.errors import InputError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ichdet prepare")
    add_prepare_parsers(p.add_subparsers(dest="dataset", required=True))
    return p


def test_every_adapter_has_arguments_matching_its_options() -> None:
    assert set(ADAPTERS) == set(ARGUMENTS) == {"rsna", "cq500", "ctich", "folder"}
    for name in ADAPTERS:
        args = parser().parse_args([name, "SRC", "--out", "m.csv"])
        opts = options_from_args(name, args)
        assert set(opts) == set(ADAPTERS[name].__kwdefaults__), name
    args = parser().parse_args(["cq500", "SRC", "--prefer-thickness", "2.5", "--reads", "r.csv"])
    assert options_from_args("cq500", args)["prefer_thickness"] == 2.5
    assert args.out == Path("manifest.csv")


def test_prepare_from_args_runs_folder(tmp_path: Path) -> None:
    src = tmp_path / "set"
    src.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(src / "01.png")
    (src / "labels.csv").write_text("id,label\n1,1\n")
    out = tmp_path / "m.csv"
    args = parser().parse_args(["folder", str(src), "--out", str(out), "--label-column", "label"])
    assert prepare_from_args(args) == out and read_manifest(out)[0].scan_id == "01"
    with pytest.raises(InputError, match="source folder not found"):
        prepare_from_args(parser().parse_args(["ctich", str(tmp_path / "no"), "--out", str(out)]))

"""The adapter registry and its argparse glue, as the `ichdet prepare` CLI uses them."""
from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ichdet.datasets.adapters import ADAPTERS, ARGUMENTS, add_prepare_parsers, options_from_args, prepare_from_args
from ichdet.cli import build_parser
from ichdet.cli import run as cli
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


def test_every_cli_option_of_an_adapter_is_a_keyword_option() -> None:
    """What `add_arguments` adds is exactly the function's keyword-only options, so `options_from_args`
    loses nothing the user typed."""
    for name in ADAPTERS:
        p = argparse.ArgumentParser()
        ARGUMENTS[name](p)
        assert {a.dest for a in p._actions} - {"help"} == set(ADAPTERS[name].__kwdefaults__), name
        args = build_parser().parse_args(["prepare", name, "SRC", "--out", "m.csv"])
        assert set(options_from_args(name, args)) == set(ADAPTERS[name].__kwdefaults__), name


def test_cli_prepare_flags_after_the_subcommand_do_not_reach_the_adapter(tmp_path: Path, monkeypatch,
                                                                           capsys) -> None:
    src = tmp_path / "set"
    src.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(src / "01.png")
    (src / "labels.csv").write_text("id,patient,label\n1,P1,1\n")
    seen: dict[str, object] = {}
    adapter = ADAPTERS["folder"]

    @functools.wraps(adapter)  # the same signature, so options_from_args sees the same options
    def spy(src: Path, out: Path, **options: object) -> Path:
        seen.update(options)
        return adapter(src, out, **options)

    monkeypatch.setitem(ADAPTERS, "folder", spy)
    out = tmp_path / "m.csv"
    assert cli(["prepare", "folder", str(src), "--out", str(out), "--debug", "-v", "--label-column", "label"]) == 0
    assert seen == {"labels": None, "images": None, "label_column": "label", "id_column": None, "patient_column": None}
    assert capsys.readouterr().out == f"manifest: {out}\n"
    assert [(r.scan_id, r.patient_id) for r in read_manifest(out)] == [("01", "P1")]

"""Internal errors are not input errors: exit 1 and one line naming the exception (exit 2 is bad
input only); --debug and -v/--verbose before or after the subcommand; ICHDET_DEBUG."""
from __future__ import annotations

import pytest

import ichdet.io.describe
from ichdet.cli import build_parser, run

HINT = "(run with --debug for the traceback)"


@pytest.fixture
def broken_info(monkeypatch):
    """`ichdet info` whose reader fails with `error` (set it before the call), as a bug would."""
    raised: list[BaseException] = []

    def describe_input(path, series_uid=None):
        raise raised[0]

    monkeypatch.setattr(ichdet.io.describe, "describe_input", describe_input)
    monkeypatch.delenv("ICHDET_DEBUG", raising=False)
    return raised


@pytest.mark.parametrize("error, line", [
    (RuntimeError("could not create a primitive"), "RuntimeError: could not create a primitive"),
    (ValueError("first line\n  second line"), "ValueError: first line"),
    (KeyError("x"), "KeyError: 'x'"),
    (MemoryError(), "MemoryError"),
])
def test_internal_error_is_exit_1_and_one_line(capsys, tmp_path, broken_info, error, line):
    broken_info.append(error)
    assert run(["info", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"ichdet: internal error: {line} {HINT}\n"


@pytest.mark.parametrize("argv", [["--debug", "info", "X"], ["info", "--debug", "X"], ["info", "X", "--debug"]])
def test_debug_before_or_after_the_subcommand_shows_the_traceback(tmp_path, broken_info, argv):
    broken_info.append(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        run([str(tmp_path) if a == "X" else a for a in argv])


def test_ichdet_debug_environment_variable(tmp_path, broken_info, monkeypatch):
    broken_info.append(RuntimeError("boom"))
    monkeypatch.setenv("ICHDET_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        run(["info", str(tmp_path)])


@pytest.mark.parametrize("argv, debug, verbose", [
    (["info", "x"], False, False),
    (["--debug", "-v", "info", "x"], True, True),
    (["info", "--debug", "x"], True, False),  # was: unrecognized arguments
    (["-v", "info", "x"], False, True),  # a flag before the subcommand is not reset by the subcommand's default
    (["predict", "x", "--model", "B", "-v"], False, True),
    (["--debug", "predict", "x", "--model", "B", "--verbose"], True, True),
    (["prepare", "folder", "src", "--out", "m.csv", "--debug"], True, False),
    (["serve", "--model", "B", "-v"], False, True),
])
def test_flags_anywhere(argv, debug, verbose):
    args = build_parser().parse_args(argv)
    assert (args.debug, args.verbose) == (debug, verbose)


@pytest.mark.parametrize("command", ["info", "synth", "prepare", "train", "evaluate", "cv", "demo", "predict",
                                     "export", "serve"])
def test_every_subcommand_lists_the_flags(capsys, command):
    with pytest.raises(SystemExit) as e:
        run([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--debug" in out and "-v, --verbose" in out

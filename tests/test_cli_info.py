"""`ichdet info` on real and written data, text and JSON."""
from __future__ import annotations

import json

import pytest

from ichdet.cli import run

from ctfactory import head_like_volume, write_series


def test_info_json_on_cq500(capsys, cq500_dir):
    assert run(["info", str(cq500_dir), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["shape"] == [238, 512, 512]
    assert d["gantry_tilt_deg"] == pytest.approx(8.5, abs=0.05)
    assert d["gantry_tilt_tag_deg"] == 8.5
    assert len(d["series_found"]) == 2
    picked = [s for s in d["series_found"] if s["series_uid"] == d["series_uid"]]
    assert picked[0]["n_files"] == 238 and picked[0]["description"] == "4cc sec 150cc D3D on"
    assert d["gaps"] == [{"after_slice": 235, "step_mm": pytest.approx(1.2363, abs=1e-3)}]
    assert d["hu_min"] == -1024.0 and d["hu_max"] == 3071.0
    assert d["orientation"] == "LPS"


def test_info_text_on_written_series(capsys, tmp_path):
    write_series(tmp_path / "s", head_like_volume(z=4, tilt_deg=10.0))
    assert run(["info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "shape:        4 x 32 x 32 (slices x rows x columns)" in out
    assert "gantry tilt:  10.00 deg (header says 10.0)" in out
    assert "HU range:     -1000 .. 1000" in out
    assert "gaps:         0" in out

"""The segmentation section: tables with the computed numbers and a Bland-Altman PNG."""
from __future__ import annotations

from pathlib import Path

import matplotlib.image

from ichdet.report import write_report
from ichdet.report.segmentation import bland_altman_figure, segmentation_report_section, segmentation_section

SEG = {
    "n_scans": 3, "level": 0.95,
    "labels": {"any": {
        "scans_with_bleed": 2,
        "dice": {"n": 3, "median": 0.875, "median_ci": [0.61, 0.93], "q1": 0.7, "q3": 0.9, "iqr": 0.2,
                 "level": 0.95},
        "dice_large": {"min_true_ml": 5.0, "n": 1, "median": 0.93},
        "volume_error_ml": {"n": 2, "mean": -0.25, "mean_abs": 0.75, "median_abs": 0.75,
                            "bland_altman": {"n": 2, "bias": -0.25, "sd": 1.06, "loa": [-2.33, 1.83],
                                             "bias_ci": [-9.78, 9.28], "loa_ci": [[-20, 15], [-15, 20]],
                                             "level": 0.95}},
        "false_positive_ml": {"n": 1, "scans_with_volume": 1, "median": 0.4, "max": 0.4}}},
    "total": {"n": 2,
              "model": {"n": 2, "mean": -0.25, "mean_abs": 0.75, "median_abs": 0.75,
                        "bland_altman": {"n": 2, "bias": -0.25, "sd": 1.06, "loa": [-2.33, 1.83],
                                         "bias_ci": [-9.78, 9.28], "loa_ci": [[-20, 15], [-15, 20]], "level": 0.95}},
              "abc2_truth": {"n": 2, "mean": -3.0, "mean_abs": 3.0, "median_abs": 3.0,
                             "bland_altman": {"n": 2, "bias": -3.0, "sd": 1.41, "loa": [-5.77, -0.23],
                                              "bias_ci": [None, None], "loa_ci": [[None, None], [None, None]],
                                              "level": 0.95}},
              "median_abs_error_ml": {"model": 0.75, "abc2": 3.0}, "closer_to_truth": "model"},
    "scans": [{"scan_id": "a", "true_ml": 12.0, "model_ml": 11.5, "abc2_ml": 10.0, "abc2_model_ml": None},
              {"scan_id": "b", "true_ml": 3.0, "model_ml": 3.0, "abc2_ml": 1.0, "abc2_model_ml": None},
              {"scan_id": "c", "true_ml": 0.0, "model_ml": 0.4, "abc2_ml": 0.0, "abc2_model_ml": None}],
}


def test_segmentation_section_renders_the_numbers_and_draws_the_figure(tmp_path: Path):
    md = segmentation_section({"segmentation": SEG}, tmp_path / "bland_altman.png")
    assert md.startswith("## Segmentation: Dice and bleed volume\n")
    assert "| any | 3 | 0.875 (0.610–0.930) | 0.700 to 0.900 | 0.930 (n=1) |" in md
    assert "| any | 2 | -0.25 | 0.75 | 0.75 | -2.33 to 1.83 | 1 of 1, max 0.40 |" in md
    assert "| model (mask volume) | 2 | -0.25 (-9.78 to 9.28) | 0.75 | 0.75 | -2.33 to 1.83 |" in md
    assert "| ABC/2 (true outline) | 2 | -3.00 | 3.00 | 3.00 | -5.77 to -0.23 |" in md
    assert "ABC/2 (model outline)" not in md
    assert ("The model's volume is closer to the truth than ABC/2: median absolute error 0.75 mL against "
            "3.00 mL, over 2 scans with a bleed.") in md
    assert "![Bland-Altman plots](bland_altman.png)" in md
    img = matplotlib.image.imread(tmp_path / "bland_altman.png")
    assert img.shape[:2] == (552, 1200)  # 10 x 4.6 in at 120 dpi


def test_section_goes_into_a_report_and_draws_without_bleeds(tmp_path: Path):
    bland_altman_figure(SEG, tmp_path / "figs" / "ba.png")
    md, _ = write_report(tmp_path, "eval", [segmentation_report_section(SEG, "figs/ba.png")])
    text = md.read_text()
    assert "### Total bleed volume: model and ABC/2 against the truth (mL)" in text and "(figs/ba.png)" in text
    empty = {**SEG, "scans": [SEG["scans"][2]], "total": {**SEG["total"], "n": 0}}
    bland_altman_figure(empty, tmp_path / "empty.png")
    assert matplotlib.image.imread(tmp_path / "empty.png").shape[:2] == (552, 1200)

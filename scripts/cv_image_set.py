"""A 2D image set shaped like the public 200-image head-CT set (Kaggle "Head CT - hemorrhage"):
N PNG images of about 700 px (each its own size, RGB or grey), `labels.csv` with an `id` column
matching the zero-padded file stems and a ` hemorrhage` column whose header has a stray space.

    python scripts/cv_image_set.py OUT [--images 200] [--side 700] [--seed 0] [--difficulty 0.3]

It is the input on which `ichdet cv`'s timing is measured (README): synthetic scans (ichdet.synth)
-> one slice per scan (`export_image_set`) -> resized so the canvas is side +- 15%.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ichdet.fileio import write_text_atomic
from ichdet.synth import make_cohort
from ichdet.synth.images import export_image_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--side", type=int, default=700, help="typical canvas side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--difficulty", type=float, default=0.3,
                    help="0 (large, bright bleeds, few mimics) .. 1 (small, faint bleeds, many mimics)")
    a = ap.parse_args()
    manifest = make_cohort(a.out / "cohort", n_scans=a.images, seed=a.seed, size=512, n_slices=16, difficulty=a.difficulty)
    labels = export_image_set(manifest, a.out / "export", seed=a.seed)
    images = a.out / "head_ct"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    rows = ["id, hemorrhage"]
    with open(labels, newline="") as fh:
        for k, r in enumerate(csv.DictReader(fh)):
            img = Image.open(a.out / "export" / "images" / f"{r['id']}.png")
            scale = a.side * rng.uniform(0.85, 1.15) / max(img.size)
            img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR).save(images / f"{k:03d}.png")
            rows.append(f"{k:03d},{r['hemorrhage']}")
    write_text_atomic(a.out / "labels.csv", "\n".join(rows) + "\n")
    print(f"{a.images} images in {images}; labels: {a.out / 'labels.csv'}")


if __name__ == "__main__":
    main()

"""Make docs/synthetic_scan.png: axial slices of one synthetic positive head CT (brain window),
each haemorrhage outlined in red and named.

    .venv/bin/python docs/make_synthetic_figure.py [--seed 4] [--out docs/synthetic_scan.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ichdet.datasets.manifest import SUBTYPES  # noqa: E402
from ichdet.preprocess import BRAIN_WINDOW, window  # noqa: E402
from ichdet.synth.scan import synthesize  # noqa: E402

SHOWN = ("subdural", "intraparenchymal", "intraventricular", "subarachnoid")


def pick_slices(mask: np.ndarray, n: int) -> list[int]:
    """The slice where each subtype is largest, then the largest remaining bleed slices."""
    chosen: list[int] = []
    for i in range(len(SUBTYPES)):
        area = (mask == i + 1).sum(axis=(1, 2))
        if area.max() > 0 and int(area.argmax()) not in chosen:
            chosen.append(int(area.argmax()))
    for k in np.argsort((mask > 0).sum(axis=(1, 2)))[::-1]:
        if len(chosen) >= n:
            break
        if all(abs(int(k) - c) > 1 for c in chosen):
            chosen.append(int(k))
    return sorted(chosen[:n])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("synthetic_scan.png"))
    args = ap.parse_args()
    scan = synthesize(args.seed, size=512, slice_thickness=5.0, difficulty=0.25, subtypes=list(SHOWN))
    hu, mask = scan.volume.hu, scan.mask
    slices = pick_slices(mask, 6)
    rows, cols = np.nonzero((hu > -500).any(axis=0))
    crop = (slice(max(0, rows.min() - 8), rows.max() + 9), slice(max(0, cols.min() - 8), cols.max() + 9))
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.6), facecolor="black")
    for ax, k in zip(axes.ravel(), slices):
        ax.imshow(window(hu[k], BRAIN_WINDOW)[crop], cmap="gray", vmin=0, vmax=1, interpolation="lanczos")
        names = [s for i, s in enumerate(SUBTYPES) if (mask[k] == i + 1).any()]
        for i, s in enumerate(SUBTYPES):
            m = (mask[k] == i + 1)[crop]
            if m.any():
                ax.contour(m, levels=[0.5], colors="red", linewidths=0.9)
        ax.set_title(f"slice {k}\n" + (", ".join(names) or "no bleed"), color="white", fontsize=10)
        ax.axis("off")
    for ax in axes.ravel()[len(slices):]:
        ax.axis("off")
    fig.suptitle("ichdet synthetic head CT (brain window 40/80), haemorrhages outlined", color="white", fontsize=12)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80, facecolor="black")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

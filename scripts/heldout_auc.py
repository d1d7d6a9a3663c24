"""Held-out (test split) scan AUC of every bundle in a runs folder, as a markdown table.

    python scripts/heldout_auc.py RUNS [--manifest MANIFEST] [--json OUT.json]

Each run's own splits.csv names its test scans (never used for training or selection). The
full evaluation with CIs and DeLong tests is `ichdet evaluate`; this is the quick check that the
training stages did what they should.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from ichdet.engine.bundle import load_bundle
from ichdet.datasets.cache import PreparedCache
from ichdet.datasets.prepared import PreparedCohort
from ichdet.datasets.splits import read_splits
from ichdet.engine.scoring import score_scans
from ichdet.metrics import SUBTYPE_LABELS, roc_auc, subtype_aucs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--manifest", help="default: each run's data.manifest")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    for run in sorted(p.parent for p in args.runs.glob("*/bundle")):
        b = load_bundle(run / "bundle")
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        manifest = args.manifest or cfg["data"]["manifest"]
        cohort = PreparedCohort(manifest, b.prep, cache=PreparedCache(cfg["data"].get("cache") or None))
        ids = cohort.scan_ids("test", read_splits(run / "splits.csv"))
        t0 = time.perf_counter()
        scores, labels = score_scans(b.kind, b.model, cohort, ids, b.context, b.aggregate, b.svm)
        sec = (time.perf_counter() - t0) / max(len(ids), 1)
        y = cohort.labels(ids)
        rows.append({"run": run.name, "kind": b.kind, "test_auc": roc_auc(y, scores), "n_pos": int(y.sum()),
                     "n_neg": int((y == 0).sum()), "val_auc": b.meta["operating_point"]["validation"]["auc"],
                     "seconds_per_scan_prepared": sec,
                     "subtypes": None if labels is None else subtype_aucs(cohort.label_targets(ids), labels)})
    print("| run | kind | test AUC | val AUC | test pos/neg | s/scan (prepared input) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['kind']} | {r['test_auc']:.3f} | {r['val_auc']:.3f} | {r['n_pos']}/{r['n_neg']} "
              f"| {r['seconds_per_scan_prepared']:.3f} |")
    subtype_rows = [r for r in rows if r["subtypes"]]
    if subtype_rows:
        print("\n| run | " + " | ".join(SUBTYPE_LABELS) + " |\n|---|" + "---|" * len(SUBTYPE_LABELS))
        for r in subtype_rows:
            cells = [f"{v['auc']:.3f} ({v['n_pos']})" if v else "-" for v in r["subtypes"].values()]
            print(f"| {r['run']} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""`ichdet` command line: thin commands over the library.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 internal error.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from ichdet import __version__
from ichdet.errors import InputError, error_summary

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")  # ichdet.engine.precision.PRECISIONS (not imported: keeps --help fast)
CV_ARCHS = ("cnn", "alexnet", "alexnet-svm", "efficientnet", "efficientnet-svm", "cnn-subtypes", "alexnet-subtypes",
            "all")  # ichdet.evaluation.cv.MODELS
TRAIN_PRECISION_HELP = ("autocast of the slice encoder (the config's precision): auto = bf16 where the CPU has "
                        "AMX/AVX-512 BF16 or the GPU has bf16, else fp32 on a CPU and fp16 with a gradient scaler "
                        "on a GPU; bf16 where it would be emulated warns and runs fp32")


class _NotHere(argparse.Action):
    """An option that only explains where its meaning went: using it is an InputError with `hint`."""

    def __init__(self, option_strings: list[str], dest: str, hint: str, **kwargs: object):
        super().__init__(option_strings, dest, **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        raise InputError(self.hint)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"ichdet: warning: {message}", file=sys.stderr)


def _add_flags(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the traceback of an internal error (also: environment variable ICHDET_DEBUG=1)")
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log progress, and the libraries' own log messages")


def _flags() -> argparse.ArgumentParser:
    """--debug and -v/--verbose for a subcommand, so they work after it too; their default is
    SUPPRESS, so a flag given before the subcommand is not overwritten by the subcommand's default."""
    parent = argparse.ArgumentParser(add_help=False)
    _add_flags(parent, argparse.SUPPRESS)
    return parent


def _configure_logging(verbose: bool) -> None:
    """ichdet's log messages on stderr (INFO with -v, else WARNING and up); the libraries' (pydicom,
    pylibjpeg, PIL, nibabel, ...) only with -v. A program that set up logging itself keeps its own."""
    root = logging.getLogger()
    ours = not root.handlers
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="ichdet: %(message)s")
    if ours and not verbose:
        for handler in root.handlers:
            handler.addFilter(logging.Filter("ichdet"))
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # its notes on odd values are not the user's errors


def _overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides of a training command: its --set values, then --precision when given."""
    return list(args.set or []) + ([f"precision={args.precision}"] if args.precision else [])


def cmd_info(args: argparse.Namespace) -> int:
    from ichdet.io.describe import describe_input, format_description

    with warnings.catch_warnings():  # the report lists the warnings itself
        warnings.simplefilter("ignore")
        report = describe_input(args.path, series_uid=args.series)
    print(json.dumps(report, indent=2) if args.json else format_description(report))
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ichdet.synth import make_cohort
    from ichdet.workers import job_count

    with tqdm(total=args.scans, unit="scan", desc="synth", disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        manifest = make_cohort(args.out, n_scans=args.scans, seed=args.seed, positive_fraction=args.positive_fraction,
                               fmt=args.format, slice_thickness=args.slice_thickness, difficulty=args.difficulty,
                               size=args.size, n_slices=args.slices, progress=progress,
                               workers=job_count(args.jobs, args.scans))
    print(f"wrote {args.scans} synthetic scans; manifest: {manifest}")
    return EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    from ichdet.datasets.adapters import prepare_from_args

    logging.getLogger("ichdet.datasets").setLevel(logging.INFO)  # the adapters' one-line summary
    manifest = prepare_from_args(args)  # the adapter's keyword options, nothing else from args
    print(f"manifest: {manifest}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from ichdet.engine import load_config, train

    overrides = _overrides(args)
    if args.data:
        overrides.append(f"data.manifest={args.data}")
    cfg = load_config(args.config, overrides)
    bundle = train(cfg, args.out, resume=args.resume, show_progress=not args.quiet)
    print(f"bundle: {bundle}")
    return EXIT_OK


def _summary_line(name: str, m: dict, what: str, where: str) -> str:
    """One model's metrics entry as one line: AUC with its CI, then the figures at a threshold."""
    lo, hi = m["auc_ci"]
    return (f"{name}: {what} {m['auc']:.3f} (95% CI {lo:.3f}-{hi:.3f}), {where}sensitivity {m['sensitivity']:.3f}, "
            f"specificity {m['specificity']:.3f}, accuracy {m['accuracy']:.3f}")


def _subtype_lines(m: dict) -> list[str]:
    """A metrics entry's per-label AUCs (95% CI) and RSNA log loss, one line each; [] without subtypes."""
    if "subtypes" not in m:
        return []
    lines = []
    for label, e in m["subtypes"].items():
        if e["auc"] is None:
            lines.append(f"  {label}: no AUC ({e['n_pos']} positive, {e['n_neg']} negative cases)")
        else:
            ci = "no CI" if e["auc_ci"] is None else f"95% CI {e['auc_ci'][0]:.3f}-{e['auc_ci'][1]:.3f}"
            lines.append(f"  {label}: AUC {e['auc']:.3f} ({ci}), {e['n_pos']} positive, {e['n_neg']} negative")
    return lines + [f"  RSNA weighted log loss: {m['rsna_log_loss']:.4f}"]


def _fmt(x: float | None) -> str:
    """A metric to 3 decimals; "-" for an undefined one (None in metrics.json)."""
    return "-" if x is None or x != x else f"{x:.3f}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ichdet.evaluation.evaluate import evaluate_bundle, evaluate_images

    if bool(args.data) == bool(args.images):
        raise InputError("give --data MANIFEST, or --images DIR with --labels CSV")
    if args.images and not args.labels:
        raise InputError("--images needs --labels CSV")
    with tqdm(unit="scan", desc="evaluate", disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        if args.data:
            result = evaluate_bundle(args.model, args.data, args.out, split=args.split, progress=progress)
        else:
            result = evaluate_images(args.model, args.images, args.labels, args.out, progress=progress)
    for name, m in result["models"].items():
        print(_summary_line(name, m, "AUC", f"at threshold {m['threshold']:.4g}: ")
              + f" ({m['n_pos']} positive, {m['n_neg']} negative cases)")
        for line in _subtype_lines(m):
            print(line)
    if "segmentation" in result:
        from ichdet.report.segmentation import verdict

        seg = result["segmentation"]
        d, large = seg["labels"]["any"]["dice"], seg["labels"]["any"]["dice_large"]
        print(f"segmentation: median Dice {_fmt(d.get('median'))} (95% CI {_fmt(d['median_ci'][0])}-{_fmt(d['median_ci'][1])}, "
              f"{d.get('n', 0)} scans); bleeds of {large['min_true_ml']:g} mL or more {_fmt(large['median'])} "
              f"({large['n']} scans)")
        print(verdict(seg))
    print(f"wrote {args.out}/metrics.json, predictions.csv, roc.png, confusion.png"
          + (", segmentation.md, bland_altman.png" if "segmentation" in result else ""))
    return EXIT_OK


def cmd_cv(args: argparse.Namespace) -> int:
    from ichdet.evaluation.cv import BINARY_MODELS, CVOptions, cross_validate

    models = list(BINARY_MODELS) if args.arch == "all" else [args.arch]
    opts = CVOptions(models=models, subtypes=args.subtypes, folds=args.folds, seed=args.seed, weights=args.weights or "", epochs=args.epochs,
                     size=args.size, quick=args.quick, final=not args.no_final, jobs=args.jobs,
                     overrides=_overrides(args),
                     show_progress=not args.quiet, label_column=args.label_column, id_column=args.id_column,
                     patient_column=args.patient_column)
    result = cross_validate(args.images, args.labels, args.out, opts)
    for name, m in result["models"].items():
        print(_summary_line(name, m, "pooled out-of-fold AUC", "at the classifier's decision: "))
        for line in _subtype_lines(m):
            print(line)
    print(f"wrote {args.out}/metrics.json, report.md, roc.png" + ("" if args.no_final else f"; bundles in {args.out}/bundles/"))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ichdet.demo import run_demo

    result = run_demo(args.out, quick=args.quick, seed=args.seed, data=args.data, show_progress=not args.quiet,
                      overrides=_overrides(args), jobs=args.jobs)
    for name, m in result["models"].items():
        print(_summary_line(name, m, "test AUC", "at the operating point: ") + f", {m['seconds_per_scan']:.2f} s/scan")
    for name, m in (result.get("subtypes") or {}).get("models", {}).items():
        print(f"{name}: test AUC per label")
        for line in _subtype_lines(m):
            print(line)
    print(f"report: {Path(args.out) / 'report' / 'index.html'}  bundles: {Path(args.out) / 'bundles'}")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ichdet.engine.bundle import load_bundle
    from ichdet.inference import Predictor, format_table, predict_inputs
    from ichdet.inference.predictor import SEGMENTATION
    from ichdet.inference.result import results_document, write_results

    if args.heatmaps and not args.out:
        raise InputError("--heatmaps needs --out DIR (the overlays and contact sheets go there)")
    bundle = load_bundle(args.model)
    predictor = Predictor(bundle, runtime=args.runtime, precision=args.precision, onnx_path=args.onnx, top_k=args.top)
    with tqdm(unit="scan", desc="predict", disable=True if args.quiet else None, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        segmenting = bundle.kind == SEGMENTATION and args.out
        results, errors = predict_inputs(predictor, args.inputs, series_uid=args.series,
                                         heatmaps=Path(args.out) / "heatmaps" if args.heatmaps else None,
                                         progress=progress,
                                         outputs=Path(args.out) / "segmentation" if segmenting else None)
    model = {"bundle": str(bundle.path), "name": bundle.name, "kind": bundle.kind, "threshold": bundle.threshold,
             "runtime": predictor.runtime.describe()}
    document = results_document(results, errors, model)
    if args.out:
        write_results(Path(args.out), document)
    if args.json:
        print(json.dumps(document, indent=2))
    elif results:
        print(format_table(results))
    if len(results) + len(errors) == 1 and errors:  # one input, bad: one line, exit 2
        raise InputError(errors[0]["error"], errors[0]["input"])
    for e in errors:
        print(f"ichdet: error: {e['input']}: {e['error']}", file=sys.stderr)
    if args.out:
        print(f"wrote {Path(args.out) / 'predictions.json'} and predictions.csv"
              + (f"; heatmaps in {Path(args.out) / 'heatmaps'}" if args.heatmaps else "")
              + (f"; masks (NIfTI; DICOM SEG and SR for DICOM input) in {Path(args.out) / 'segmentation'}"
                 if segmenting else ""), file=sys.stderr)
    return EXIT_INPUT if errors else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from ichdet.engine.bundle import load_bundle
    from ichdet.inference.export import export_onnx, verify_onnx

    bundle = load_bundle(args.model)
    path = export_onnx(bundle, args.onnx)
    diff = verify_onnx(bundle, path)
    size = path.stat().st_size / 1e6
    print(f"onnx: {path} ({size:.1f} MB); onnxruntime vs PyTorch on random slices: max |difference| {diff:.1e}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from ichdet.server import serve
        from ichdet.server.app import is_loopback
    except ImportError as e:
        raise InputError(f"ichdet serve needs FastAPI and uvicorn ({e}); install them with "
                         "`pip install fastapi uvicorn`") from None
    for name, value, ok in (("--port", args.port, 0 <= args.port <= 65535),
                            ("--max-upload-mb", args.max_upload_mb, args.max_upload_mb > 0),
                            ("--queue", args.queue, args.queue >= 1),
                            ("--max-studies", args.max_studies, args.max_studies >= 1),
                            ("--ttl-minutes", args.ttl_minutes, args.ttl_minutes > 0)):
        if not ok:
            raise InputError(f"{name} {value} is out of range")

    def announce(url: str) -> None:
        print(f"ichdet serve: {url} (Ctrl-C to stop)", flush=True)
        if not is_loopback(args.host):
            print(f"ichdet: warning: --host {args.host}: the viewer is reachable from the network and has no "
                  "authentication", file=sys.stderr, flush=True)

    serve(args.model, host=args.host, port=args.port, studies_dir=args.studies, max_upload_mb=args.max_upload_mb,
          queue_capacity=args.queue, max_studies=args.max_studies, ttl_s=args.ttl_minutes * 60.0, announce=announce)
    return EXIT_OK


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", parents=[_flags()], help="a local web viewer and JSON API: upload a scan, scroll it, see verdict and heatmaps",
                       description="Serve a bundle over HTTP (FastAPI under uvicorn): a viewer page to upload a study "
                                   "(zip of a DICOM series, NIfTI, PNG/JPEG, single DICOM) or open one from --studies, "
                                   "and a JSON API under /api (schema at /openapi.json; see docs/serve-api.md). "
                                   "Listens on 127.0.0.1 only unless --host says otherwise; it has no authentication.")
    p.add_argument("--model", required=True, help="bundle folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--studies", help="a folder of studies the viewer may open by name")
    p.add_argument("--max-upload-mb", type=float, default=512, help="upload size limit in MB (default 512)")
    p.add_argument("--queue", type=int, default=4, help="requests that may wait for the model (default 4; 503 past it)")
    p.add_argument("--max-studies", type=int, default=8,
                   help="studies kept open at once (default 8; the least recently used is closed first)")
    p.add_argument("--ttl-minutes", type=float, default=30,
                   help="an idle study is closed and its temporary files removed after this long (default 30)")
    p.set_defaults(func=cmd_serve)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", parents=[_flags()], help="run a model bundle on scans: probability, decision, suspicious slices, heatmaps",
                       description="INPUT: a DICOM series folder or zip, a NIfTI file, a PNG/JPEG or single DICOM image, "
                                   "or a folder of many studies (one result per study; a bad study is reported and "
                                   "skipped). Prints a table (or JSON with --json); a subtype bundle adds each scan's probabilities of the "
                                   "five subtypes (a line under its row, \"subtypes\" in the JSON, one CSV column each); a segmentation bundle "
                                   "adds the bleed volume in mL per subtype and in total, measured on the scan's own voxels, with the "
                                   "largest lesion's ABC/2 (\"volumes\" in the JSON). Exit 0 when every input gave a "
                                   "result, 2 when any was bad input (the others still get results).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="scan(s) or folder(s) of studies")
    p.add_argument("--model", required=True, help="bundle folder")
    p.add_argument("--out", help="write predictions.json and predictions.csv here (and heatmaps/; with a segmentation "
                                 "bundle segmentation/STUDY/ with mask.nii.gz in the scan's geometry and, for DICOM "
                                 "input, seg.dcm (DICOM SEG) and sr.dcm (DICOM SR, TID 1500))")
    p.add_argument("--heatmaps", action="store_true",
                   help="Grad-CAM overlays of the most suspicious slices and a contact sheet per scan (needs --out)")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    p.add_argument("--series", help="SeriesInstanceUID to read (default: the largest axial CT series of each study)")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help="auto (default): onnxruntime when BUNDLE/model.onnx holds this bundle's weights (the fastest "
                        "runtime with PyTorch's outputs), else PyTorch; torch; onnx")
    p.add_argument("--onnx", help="the ONNX file (default: BUNDLE/model.onnx)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="torch runtime arithmetic of the slice encoder: auto (default: bf16 where the CPU has "
                        "AMX/AVX-512 BF16 or the GPU has bf16, else fp32 on a CPU, fp16 on a GPU), fp32, bf16 (where "
                        "it would be emulated: a warning and fp32), fp16 (GPUs). The LSTM always runs in fp32")
    p.add_argument("--top", type=int, default=3, help="suspicious slices to report and draw (default 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", parents=[_flags()], help="write a bundle's network as ONNX (for predict --runtime onnx)",
                       description="Export the network of a bundle to ONNX (dynamic slice count; the bundle's "
                                   "metadata embedded; a subtype bundle adds its label outputs slice_labels and/or "
                                   "scan_labels) and check onnxruntime against PyTorch on random slices.")
    p.add_argument("--model", required=True, help="bundle folder")
    p.add_argument("--onnx", required=True, help="file to write, e.g. BUNDLE/model.onnx")
    p.set_defaults(func=cmd_export)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", parents=[_flags()], help="every experiment of both papers on a synthetic cohort -> an HTML/Markdown report",
                       description="Synthetic cohort -> the 3D experiments (slice max/p95, feature SVM, 1- and 2-LSTM "
                                   "after each stage, end-to-end without staging) evaluated on held-out scans with "
                                   "AUC CIs and DeLong tests; the subtype experiments (five subtypes + any, per-label "
                                   "AUC CIs, RSNA log loss) when the cohort has subtypes -> the 2D comparison by "
                                   "cross-validation -> "
                                   "OUT/report/index.html and report.md; every model kept as OUT/bundles/NAME. "
                                   "Resumes when run again.")
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--quick", action="store_true", help="a smaller cohort and shorter training (about 10 minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="use this manifest instead of a synthetic cohort (e.g. from `ichdet prepare rsna`)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, help=TRAIN_PRECISION_HELP + " (default: auto)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config override for every model, 3D and 2D (repeatable), e.g. --set threads=2")
    p.add_argument("--jobs", type=int, default=0,
                   help="training runs at once, each in its own process (and synthetic scans); default 0: one per "
                        "core up to two, then one per two cores, at most 4")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", parents=[_flags()], help="test a model bundle on held-out scans or images",
                       description="Score a bundle on a manifest (or a labelled image folder) and write metrics.json "
                                   "(AUC with DeLong and bootstrap 95%% CIs, figures at the bundle's operating point "
                                   "with Wilson CIs, Brier score, calibration; for a subtype bundle per-subtype AUCs "
                                   "with 95%% CIs and the RSNA weighted log loss), predictions.csv, roc.png and "
                                   "confusion.png. Scans the bundle was trained or validated on are never scored.")
    p.add_argument("--model", required=True, help="bundle folder (RUN/bundle or a cv bundle)")
    p.add_argument("--data", help="manifest CSV")
    p.add_argument("--images", help="image folder (with --labels), for 2D bundles")
    p.add_argument("--labels", help="labels CSV of --images (id column matching file stems, a 0/1 label column)")
    p.add_argument("--split", choices=["auto", "test", "all"], default="auto",
                   help="auto (default): every scan not used in training or validation; test: the bundle's test "
                        "split (or the manifest's split column); all: every scan, training ones included")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_evaluate)


def _cv_epochs(text: str) -> int | dict[str, int]:
    """`ichdet cv --epochs`: "16" (every network) or "cnn=16,alexnet=8" (those networks; the rest keep their configs')."""
    from ichdet.evaluation.cv import MODELS

    def count(value: str) -> int:
        if not value.strip().isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"passes must be a positive integer, got {value.strip()!r} in {text!r}")
        return int(value)

    if "=" not in text:
        return count(text)
    out: dict[str, int] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in MODELS or name.endswith("-svm"):
            choices = ", ".join(m for m in MODELS if not m.endswith("-svm"))
            raise argparse.ArgumentTypeError(f"{item.strip()!r} in {text!r} is not NAME=N with NAME one of {choices} "
                                             "(an SVM trains no passes)")
        out[name] = count(value)
    return out


def _add_cv(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cv", parents=[_flags()], help="the 2D paper's comparison by k-fold cross-validation on an image folder",
                       description="CNN from scratch vs fine-tuned AlexNet vs AlexNet-SVM vs ImageNet EfficientNet-Lite0 (fine-tuned; "
                                   "frozen + SVM) on a labelled image folder "
                                   "(PNG/JPEG/DICOM of any size): stratified folds grouped by patient, model selection "
                                   "inside the training folds, pooled out-of-fold AUC with CI, DeLong tests, report.md, "
                                   "roc.png; then every model trained on all images as OUT/bundles/NAME.")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--labels", required=True, help="labels CSV: id (file stem), a 0/1 label column, optional patient column")
    p.add_argument("--label-column", help="the 0/1 label column (default: the only 0/1 column besides the id)")
    p.add_argument("--id-column", help="the id column matching file stems (default: the first column)")
    p.add_argument("--patient-column", help="group folds by this column (default: a column named patient, "
                                            "patient_id, patientid, patient id, subject or subject_id, as "
                                            "`ichdet prepare folder` finds it, else each image is its own "
                                            "patient, with a warning)")
    p.add_argument("--arch", choices=CV_ARCHS, default="all",
                   help="one architecture, or all (default): the 2D paper's three (cnn, alexnet, alexnet-svm) "
                        "and ImageNet EfficientNet-Lite0 fine-tuned (efficientnet) and as frozen features + SVM "
                        "(efficientnet-svm)")
    p.add_argument("--model", action=_NotHere, nargs="?", help=argparse.SUPPRESS,
                   hint=f"cv takes no --model (a bundle folder in the other commands); choose architectures with --arch "
                        f"({', '.join(CV_ARCHS[:-1])} or all)")
    p.add_argument("--subtypes", action="store_true",
                   help="also the subtype models (cnn-subtypes, alexnet-subtypes: five subtypes + any), scored "
                        "per subtype; the labels CSV needs epidural, intraparenchymal, intraventricular, "
                        "subarachnoid and subdural columns")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (an interrupted run resumes)")
    p.add_argument("--weights", help="AlexNet's start: imagenet (downloads once) or a local state-dict file; "
                                     "default: random weights (EfficientNet starts from the ImageNet weights of "
                                     "the pretrained extra; --set model.weights=... changes that)")
    p.add_argument("--epochs", type=_cv_epochs, metavar="N|NAME=N,...",
                   help="passes over the training images: N for every network, or per network, e.g. cnn=16 or "
                        "cnn=16,alexnet=8 (a subtype model follows its network's; default: the experiment configs')")
    p.add_argument("--size", type=int, help="image side in pixels (default: the configs', 224 for every model)")
    p.add_argument("--quick", action="store_true", help="the laptop-sized configs (configs/quick)")
    p.add_argument("--no-final", action="store_true", help="skip training on all images (no bundles)")
    p.add_argument("--jobs", type=int, default=0,
                   help="training runs at once, each in its own process (folds and the final models); "
                        "default 0: one per core up to two, then one per two cores, at most 4")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every model (repeatable)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, help=TRAIN_PRECISION_HELP + " (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_cv)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", parents=[_flags()], help="train one experiment (a config in configs/) and write a model bundle",
                       description="Train one stage of an experiment from a YAML config; the run folder gets "
                                   "config.yaml, splits.csv, metrics.csv, checkpoints and bundle/. Runs unchanged "
                                   "under `torchrun --nproc_per_node N` (DDP).")
    p.add_argument("config", help="YAML config, e.g. configs/3d_slice_cnn.yaml")
    p.add_argument("--out", required=True, help="run folder (model.init_from paths are relative to its parent)")
    p.add_argument("--data", help="manifest CSV (same as --set data.manifest=...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, help=TRAIN_PRECISION_HELP + " (default: the config's, auto)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars (one line per epoch remains)")
    p.set_defaults(func=cmd_train)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", parents=[_flags()], help="write a manifest for a public data set or an image folder",
                       description="Turn RSNA 2019, CQ500, PhysioNet CT-ICH or a labelled image folder into a manifest CSV.")
    ds = p.add_subparsers(dest="dataset", required=True, metavar="{rsna,cq500,ctich,folder}")
    from ichdet.datasets import adapters

    for name in adapters.ADAPTERS:
        text = adapters.DESCRIPTIONS.get(name, f"{name} adapter")
        q = ds.add_parser(name, parents=[_flags()], help=text, description=text)
        q.add_argument("src", help="the data set's root folder")
        q.add_argument("--out", required=True, help="manifest CSV to write")
        getattr(adapters, name).add_arguments(q)
    p.set_defaults(func=cmd_prepare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ichdet", description="Intracranial haemorrhage detection in head CT.")
    parser.add_argument("--version", action="version", version=f"ichdet {__version__}")
    _add_flags(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", parents=[_flags()], help="show what the readers see in a scan, a folder or a zip",
                       description="Series found and picked, shape, spacing, orientation, gantry tilt, HU range, gaps, warnings.")
    p.add_argument("path", help="DICOM folder, zip, DICOM file, NIfTI file or image")
    p.add_argument("--series", help="SeriesInstanceUID to read (default: the largest axial CT series)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("synth", parents=[_flags()], help="generate a synthetic head-CT cohort with labelled bleeds",
                       description="Anatomical head phantoms in HU with bleeds of five subtypes and bleed-like mimics; "
                                   "writes DICOM and/or NIfTI, voxel masks, a manifest and per-slice labels.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--scans", type=int, default=20, help="number of scans (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--positive-fraction", type=float, default=0.5, help="fraction of scans with a bleed (default 0.5)")
    p.add_argument("--format", choices=["dicom", "nifti", "both"], default="dicom")
    p.add_argument("--slice-thickness", type=float, default=5.0, help="mm (default 5)")
    p.add_argument("--difficulty", type=float, default=0.5, help="0 easy .. 1 hard (default 0.5)")
    p.add_argument("--size", type=int, default=512, help="in-plane pixels (default 512)")
    p.add_argument("--slices", type=int, default=None, help="slices per scan (default: head height / thickness)")
    p.add_argument("--jobs", type=int, default=0,
                   help="scans written at once, each in its own process (default 0: one per core up to two, "
                        "then one per two cores, at most 4)")
    p.set_defaults(func=cmd_synth)

    _add_prepare(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_cv(sub)
    _add_demo(sub)
    _add_predict(sub)
    _add_export(sub)
    _add_serve(sub)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse, run, and map errors to exit codes; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except InputError as e:  # an option that explains where its meaning went (_NotHere)
        print(f"ichdet: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    _configure_logging(args.verbose)
    warnings.showwarning = _show_warning
    warnings.filterwarnings("ignore", module=r"pydicom\..*")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InputError as e:
        print(f"ichdet: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("ichdet: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence (out of memory too): one line unless --debug
        if args.debug or os.environ.get("ICHDET_DEBUG"):
            raise
        print(f"ichdet: internal error: {error_summary(e)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()

"""Inference: a bundle on scans -> probabilities, decisions, most suspicious slices, heatmaps.

`Predictor` (predictor.py) runs one bundle through a runtime (runtime.py: PyTorch or onnxruntime,
both on the graphs of ichdet.models.graph); `predict_inputs` (batch.py) finds the studies in folders
(studies.py) and keeps going past bad ones; `export_onnx` (export.py) writes the ONNX file;
heatmaps.py draws Grad-CAM overlays; result.py is the result object, its JSON and its table.
"""
from ichdet.inference.batch import predict_inputs
from ichdet.inference.predictor import Predictor, load_volume
from ichdet.inference.result import ScanPrediction, format_table
from ichdet.inference.runtime import ModelOutputs, OnnxRuntime, TorchRuntime
from ichdet.inference.studies import FoundStudy, find_studies

__all__ = ["FoundStudy", "ModelOutputs", "OnnxRuntime", "Predictor", "ScanPrediction", "TorchRuntime", "find_studies",
           "format_table", "load_volume", "predict_inputs"]

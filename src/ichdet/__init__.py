"""ichdet: intracranial haemorrhage detection in non-contrast head CT.

    import ichdet
    predictor = ichdet.load_predictor("bundle/")          # a bundle folder -> ichdet.inference.Predictor
    result = predictor.predict("scan_folder/")            # -> ichdet.inference.ScanPrediction
    bundle = ichdet.load_bundle("bundle/")                # the bundle itself: model, operating point, meta
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {"load_bundle": "ichdet.engine.bundle", "load_predictor": "ichdet.inference.predictor",
         "Predictor": "ichdet.inference.predictor"}


def __getattr__(name: str):  # the public API without importing torch at `import ichdet`
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ichdet' has no attribute {name!r}")

"""ichdet: intracranial haemorrhage detection in non-contrast head CT.

    import ichdet
    result = ichdet.load_bundle("bundle/").predict("scan_folder/")  # -> ichdet.inference.ScanPrediction
"""
from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):  # load_bundle without importing torch at `import ichdet`
    if name == "load_bundle":
        from ichdet.bundle import load_bundle

        return load_bundle
    raise AttributeError(f"module 'ichdet' has no attribute {name!r}")

"""Manifests, dataset adapters and (later) torch Datasets."""

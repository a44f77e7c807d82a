"""Shared library of the anomaly-detection bundles (data, volumes, attention, flows, backbones, scoring, metrics)."""

"""The detectors, one MONAI bundle per folder: intensity (the yardstick), ms_nf, dnfad, skip_ts, anomalypro.

Each folder holds ``configs/`` (``train.json``, ``inference.json``, ``evaluate.json``, ``metadata.json``, ...),
``scripts/`` (the detector's own network code, imported as ``scripts`` by its configs: MONAI's bundle runner puts the
bundle's folder on ``sys.path``), ``docs/README.md`` and ``LICENSE``. The package exists so that an installed wheel
carries the bundles and :func:`tools.bundles.bundle_dir` finds them; nothing here is imported by the configs.
"""

"""One benchmark for all detectors: train each bundle, run its inference and evaluation, compare them.

``python -m tools.compare DATASET --bundles ms_nf,skip_ts --seeds 0 1 2 --output-dir OUT`` (console script
``uad-compare``) trains every bundle through its own ``train.json`` (or loads a given ``model.pt``), runs its
``inference.json`` over ``DATASET/test`` and its ``evaluate.json`` against ``DATASET/ground_truth``, repeats this
for every seed, benchmarks the network with :func:`tools.benchmark.run_benchmark`, and writes into ``OUT``:

- ``results.json`` and ``results.md``: one row per bundle, mean ± sample standard deviation over the seeds;
- ``roc_image.png``, ``roc_pixel.png``, ``score_histograms.png`` and ``overlays.png``.

Modules: :mod:`tools.compare.cli` (command line), :mod:`tools.compare.runner` (the runs),
:mod:`tools.compare.predictions` (reading the written maps back), :mod:`tools.compare.report` (aggregation and
tables), :mod:`tools.compare.figures` (the comparison figures) and :mod:`tools.compare.peers` (optional anomalib
reference models).
"""

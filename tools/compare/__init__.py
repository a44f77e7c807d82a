"""One benchmark for all detectors: train each bundle, run its inference and evaluation, compare them.

``python -m tools.compare DATASET --bundles ms_nf,skip_ts --seeds 0 1 2 --output-dir OUT`` (console script
``uad-compare``) trains every bundle through its own ``train.json`` (or loads a given ``model.pt``), runs its
``inference.json`` over ``DATASET/test`` and its ``evaluate.json`` against ``DATASET/ground_truth``, repeats this
for every seed, benchmarks the network with :func:`tools.benchmark.run_benchmark`, and writes into ``OUT``:

- ``results.json`` and ``results.md``: one row per bundle, mean ± sample standard deviation over the seeds;
- ``roc_image.png``, ``roc_pixel.png``, ``score_histograms.png`` and ``overlays.png``.

``results.json`` holds ``command``, ``date``, ``wall_s``, ``settings`` (every option, with ``seeds`` and the
``budget``: image size, epochs, batch size, overrides, checkpoints), ``environment`` (device, device name, CPU count,
torch threads and software versions), ``test_set`` (files, 2D/3D, slices, abnormal slices), ``benchmark_volume_shape``,
``figures`` and ``rows``: one per bundle (then per peer) with ``name``, ``kind``, ``status`` (``ok``/``failed``),
``error`` (one line), ``input_size``, ``runs`` (per seed: ``seed``, ``checkpoint``, ``train_s``, ``inference_s``,
``evaluate_s`` and the bundle's ``metrics.json``), ``metrics`` (every numeric ``metrics.json`` key as ``{"mean",
"std", "n"}``: ``image_auroc``, ``image_ap``, ``image_f1``, ``image_accuracy``, ``image_recall``, ``pixel_auroc``,
``pixel_auroc_foreground``, ``aupro``, ``aupro_foreground``, ``best_dice``, ``dice``, ``volume_auroc``, ...),
``cost`` (the same stats for ``train_s``, ``slices_per_s``, ``volume_s``, ``peak_memory_mib``, ``parameters``,
``gflops_per_slice``) and ``benchmark`` (the full :func:`tools.benchmark.run_benchmark` result). A peer's row
(``--peers``, :mod:`tools.compare.peers`) has the same keys: its runs hold ``seed``, ``train_s`` and ``metrics``
(including the ``_foreground`` ones, inside the foreground the bundles' evaluation uses), its ``benchmark`` is the
:func:`tools.benchmark.benchmark_network` result of its first seed's torch model, and its ``volume_s`` is empty.

A test set with several anomaly classes (``test/<kind>/`` besides ``test/good``, e.g. the suite of
``python -m tools.anomaly_suite``) is also scored per kind (:mod:`tools.compare.kinds`): ``test_set["kinds"]`` holds
each kind's slice counts (``test/good`` + ``test/<kind>``), every run ``kinds`` (``{kind: metrics}``, the bundle's
metric keys on those slices alone, from the stored predictions, same foreground and calibrated thresholds) and
``mean_over_kinds`` (the unweighted mean of each figure over kinds), and every row ``kinds`` and ``mean_over_kinds``
as ``{"mean", "std", "n"}`` stats over the seeds. ``results.md`` then has a ``Per kind`` section.

Modules: :mod:`tools.compare.cli` (command line), :mod:`tools.compare.settings` (what to compare),
:mod:`tools.compare.runner` (the runs), :mod:`tools.compare.predictions` (reading the written maps back),
:mod:`tools.compare.kinds` (per-kind figures), :mod:`tools.compare.report` (aggregation, tables and one-line errors),
:mod:`tools.compare.figures` (the comparison figures) and :mod:`tools.compare.peers` (optional anomalib reference
models).
"""

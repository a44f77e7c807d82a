"""Benchmark one bundle on the current device: model throughput, peak memory, one volume end to end, FLOPs.

The network, the scorer and the slice settings are built from the bundle's own ``configs/inference.json`` (with
``--override key=value`` applied), so the numbers always describe the configuration the bundle ships. With
``--checkpoint`` the config reads the architecture from that ``model.pt`` (:mod:`common.checkpoint`), as the bundle's
inference does: a model trained with overrides is benchmarked without repeating them, and an override that
contradicts the checkpoint is a one-line error. Without it, the config's architecture is used (that of the bundle's
own ``models/model.pt`` when one exists) with random weights. The report has seven parts:

1. model-alone inference throughput (slices/s) at the network input size: inputs already on the device,
   ``torch.inference_mode()``, warm-up iterations first, then timed iterations. ``--precision`` picks fp32 or bf16
   autocast (``auto``, the default: bf16 on CUDA when the config's ``amp`` is on, else fp32; bf16 on the CPU is
   ``torch.autocast("cpu", dtype=torch.bfloat16)``), ``--channels-last/--no-channels-last`` the memory format (default:
   ``channels_last`` on CUDA only) and ``--compile`` wraps the network in ``torch.compile`` (inductor) for this part
   only: its first call, which compiles, is timed apart (``compile_first_call_s``) before the warm-up iterations. So
   one tool reports fp32 eager, bf16 + ``channels_last`` and the same with ``torch.compile``;
2. the fraction of the device's peak: achieved FLOP/s (FLOPs per slice x slices/s) over the peak FLOP/s, and the
   compute-bound rate peak / FLOPs per slice (``floor_slices_per_s``). On CUDA the peak is the datasheet dense peak of
   :data:`GPU_PEAK_TFLOPS` for the timed precision (bf16 with autocast, else fp32 without tensor cores; cuDNN may run
   fp32 convolutions in TF32, so an fp32 fraction can exceed 1); a GPU not in the table gets no peak. On the CPU it is
   the measured rate of a square ``torch.mm`` in the timed precision (:func:`measured_matmul_flops`);
3. peak memory of the timed sections: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the peak resident set
   size (``ru_maxrss``, whose high-water mark is reset before each section where Linux allows it) and its increase
   over the resident size at the start of the section;
4. brain extraction: the seconds per volume of :class:`common.brain.ExtractBrainMaskd` with the bundle's
   ``brain_extraction`` setting (``--brain-extraction`` to change it) on the benchmark volume, timed after one warm-up
   call that loads the networks (deepbet runs on CUDA when it is available, whatever ``--device`` says). A volume the
   extractor rejects as implausible (a synthetic one may be) is reported as not measured, with the reason;
5. end-to-end time for one float32 NIfTI volume, a real one (``--volume``) or a synthetic one (default
   240 x 240 x 155, the BraTS grid): read, extract the brain, strip and normalise
   (:func:`common.volumes.load_record`), maps and scores (:func:`common.inference.predict_volume`), write
   (:func:`common.volumes.write_map`), the same calls the bundle's batch inference makes (with the bundle's own
   precision: the switches of part 1 do not apply). The brain extraction of part 4 is included (in "read +
   normalise") when it was measured; when the extractor rejected the volume, the volume runs without extraction;
6. trainable and total parameter counts and the FLOPs of one slice at the network input size, counted by
   :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products; one multiply-add = 2 FLOPs);
7. the device and the software versions.

Without ``--checkpoint`` the weights are random: the timings do not depend on them. Speed is measured here, never
asserted in tests.

The package, one module per job: :mod:`~tools.benchmark.peaks` (the device's peak FLOP/s),
:mod:`~tools.benchmark.memory` (peak memory of a section), :mod:`~tools.benchmark.model` (parameters, FLOPs and the
model-alone timing of any network), :mod:`~tools.benchmark.volume` (brain extraction and one volume end to end),
:mod:`~tools.benchmark.environment` (device and versions), :mod:`~tools.benchmark.bundle` (:func:`run_benchmark`,
all of it for one bundle), :mod:`~tools.benchmark.tables` (the printed report) and :mod:`~tools.benchmark.cli` (the
command line); :mod:`~tools.benchmark.checks` and :mod:`~tools.benchmark.clock` hold the argument checks and the
device synchronisation they share. The bundle's components come from :func:`tools.components.build_components`.

Example:
    The paper configuration of MS-NF on the default device, with a JSON copy of the results::

        python -m tools.benchmark ms_nf --output bench_ms_nf.json
        python -m tools.benchmark ms_nf --batch-size 32 --override n_blocks=8 --override hidden_channels=64
        python -m tools.benchmark ms_nf --image-size 128 --volume scans/sub-01_T1w.nii.gz

    fp32 eager, then bf16 with ``channels_last``, then the same through ``torch.compile``::

        python -m tools.benchmark ms_nf --precision fp32 --no-channels-last
        python -m tools.benchmark ms_nf --precision bf16 --channels-last
        python -m tools.benchmark ms_nf --precision bf16 --channels-last --compile
"""

from __future__ import annotations

from tools.benchmark.bundle import run_benchmark
from tools.benchmark.cli import main
from tools.benchmark.environment import environment_info
from tools.benchmark.memory import PeakMemory
from tools.benchmark.model import PRECISIONS, CompileError, benchmark_network, count_flops, count_parameters
from tools.benchmark.peaks import (
    GPU_PEAK_TFLOPS,
    device_peak_flops,
    gpu_peak_flops,
    measured_matmul_flops,
    peak_fraction,
)
from tools.benchmark.tables import format_table
from tools.benchmark.volume import DEFAULT_VOLUME_SHAPE

__all__ = [
    "DEFAULT_VOLUME_SHAPE",
    "GPU_PEAK_TFLOPS",
    "PRECISIONS",
    "CompileError",
    "PeakMemory",
    "benchmark_network",
    "count_flops",
    "count_parameters",
    "device_peak_flops",
    "environment_info",
    "format_table",
    "gpu_peak_flops",
    "main",
    "measured_matmul_flops",
    "peak_fraction",
    "run_benchmark",
]

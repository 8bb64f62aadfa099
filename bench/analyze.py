"""Per-stage latency of `cxr analyze` on the CPU (or CUDA): decode, each model stage, the writers.

    python bench/analyze.py --size 2048 --images 5
    python bench/analyze.py --size 2048 --images 3 --profile   # plus the top functions (cProfile)
    python bench/analyze.py --size 2048 --images 3 --json      # one JSON object, nothing else

Renders PhantomCXR frontal chest radiographs at ``--size`` x ``--size``, writes them as DICOM,
then for each image times ingest (file read, decode, display transform), the model stages (one
image per study, so nothing is amortised) and the four DICOM writers, and prints the mean and
p95 milliseconds per stage and the total per image. The target is <= 1500 ms per 2k x 2k image
on a 2-core CPU, decode included.

``--json`` prints one JSON object instead of the table: ``stages`` (per stage, ``mean_ms`` and
``p95_ms``), ``models_ms`` (mean of the model stages together), ``total_ms`` (mean per image:
decode + ingest, models, writers) and ``overhead`` = ``total_ms`` / ``models_ms`` (the issue's
goal is <= 1.3), plus what was measured (size, images, device, threads). ``cpu_ms`` and
``cpu_overhead`` are the same from the process's CPU time, which other processes on the cores do
not inflate (run with ``--threads 1`` for them to equal the wall time of an idle machine).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxr_models.inference.pipeline import Analyzer
from cxr_models.phantom.dicom_io import write_dicom
from cxr_models.phantom.study import render_study
from cxr_service.analysis import algorithm_info, analyze_study
from cxr_service.ingest import ingest_file
from cxr_service.writers import write_gsps, write_sc, write_seg, write_sr
from cxr_service.writers.sources import writable_sources


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Per-stage latency of the analysis pipeline")
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels")
    parser.add_argument("--images", type=int, default=5, help="timed images (after one warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object (stages, models_ms, total_ms, overhead) instead of the table")
    parser.add_argument(
        "--profile", action="store_true", help="also print the top functions by cumulative time (cProfile)"
    )
    return parser


def frontal_files(folder: Path, *, count: int, size: int) -> list[Path]:
    files: list[Path] = []
    index = 0
    while len(files) < count:
        study = render_study(seed=2024, study_index=index, size_range=(size, size), other_fraction=0.0, label="typical")
        index += 1
        for image in study.images:
            if image.view == "frontal":
                files.append(write_dicom(folder / f"{len(files):03d}.dcm", study, image))
                break
    return files


def time_writers(study, cpu: dict[str, float] | None = None) -> dict[str, float]:
    """Milliseconds of each DICOM writer on its own (the profile's breakdown of "writers");
    ``cpu`` gets the process CPU milliseconds of each."""
    out = {}
    checked: dict = {}
    for name, write in (
        # As in cxr_service.writers.write_all: the source headers are checked once, for every writer.
        ("  source checks", lambda: checked.update(writable_sources(study.sources))),
        ("  writer SR", lambda: write_sr(study.result, checked)),
        ("  writer GSPS", lambda: write_gsps(study.result, checked)),
        ("  writer SEG", lambda: write_seg(study.result, checked)),
        ("  writer SC", lambda: write_sc(study.result, checked, study.displays)),
    ):
        start, start_cpu = time.perf_counter(), time.process_time()
        write()
        out[name] = (time.perf_counter() - start) * 1000.0
        if cpu is not None:
            cpu[name] = (time.process_time() - start_cpu) * 1000.0
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    analyzer = Analyzer.load(weights_dir=args.weights, device=args.device)
    algorithm = algorithm_info(analyzer.manifest)
    stages: dict[str, list[float]] = {}
    cpu_stages: dict[str, list[float]] = {}
    profiler = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory() as tmp:
        files = frontal_files(Path(tmp), count=args.images + 1, size=args.size)
        for n, path in enumerate(files):
            start, start_cpu = time.perf_counter(), time.process_time()
            item = ingest_file(path)
            ingest_ms = (time.perf_counter() - start) * 1000.0
            cpu = {"decode+ingest": (time.process_time() - start_cpu) * 1000.0}
            start_cpu = time.process_time()
            study = analyze_study([item], study_instance_uid=item.study_instance_uid, analyzer=analyzer, algorithm=algorithm)
            cpu["models"] = (time.process_time() - start_cpu) * 1000.0
            writer_cpu: dict[str, float] = {}
            writer_ms = time_writers(study, writer_cpu)
            writers_ms = sum(writer_ms.values())
            cpu.update(writers=sum(writer_cpu.values()), **writer_cpu)
            cpu["total"] = cpu["decode+ingest"] + cpu["models"] + cpu["writers"]
            if n == 0:
                if profiler is not None:
                    profiler.enable()
                continue  # warm-up
            timings = {"decode+ingest": ingest_ms, **{k: v for k, v in study.result.timings_ms.items() if k not in ("ingest", "models_total")}, "writers": writers_ms, **writer_ms}
            timings["models"] = study.result.timings_ms["models_total"]
            timings["total"] = ingest_ms + timings["models"] + writers_ms
            for k, v in timings.items():
                stages.setdefault(k, []).append(v)
            for k, v in cpu.items():
                cpu_stages.setdefault(k, []).append(v)
    if profiler is not None:
        profiler.disable()
    if args.json:
        print(json.dumps(summary(stages, cpu_stages, args), sort_keys=False))
        if profiler is not None:
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
        return
    print(f"cxr analyze latency, {args.size}x{args.size} frontal CR, device {args.device}, "
          f"{torch.get_num_threads()} threads, {args.images} images (after 1 warm-up)")
    print(f"{'stage':<16}{'mean ms':>10}{'p95 ms':>10}")
    for k, v in stages.items():
        print(f"{k:<16}{statistics.fmean(v):>10.1f}{percentile(v, 95):>10.1f}")
    models, total = statistics.fmean(stages["models"]), statistics.fmean(stages["total"])
    print(f"overhead (total / models): {total / models:.2f}")
    cpu = {k: statistics.fmean(v) for k, v in cpu_stages.items()}
    print("process CPU ms per image (wall time without other processes, with 1 torch thread): "
          + ", ".join(f"{k.strip()} {v:.1f}" for k, v in cpu.items())
          + f"; overhead {cpu['total'] / cpu['models']:.2f}")
    if profiler is not None:
        print("\ntop functions by cumulative time (all timed images):")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def summary(stages: dict[str, list[float]], cpu_stages: dict[str, list[float]], args: argparse.Namespace) -> dict:
    """The JSON document of ``--json``."""
    cpu = {k.strip(): statistics.fmean(v) for k, v in cpu_stages.items()}
    models, total = statistics.fmean(stages["models"]), statistics.fmean(stages["total"])
    return {
        "size": args.size,
        "images": args.images,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "stages": {
            k.strip(): {"mean_ms": round(statistics.fmean(v), 1), "p95_ms": round(percentile(v, 95), 1)}
            for k, v in stages.items()
        },
        "models_ms": round(models, 1),
        "total_ms": round(total, 1),
        "overhead": round(total / models, 3),
        # Process CPU time of the same stages: what the wall time is without other processes on
        # the cores (with one torch thread; with more, "models" adds up the threads' time).
        "cpu_ms": {k: round(v, 1) for k, v in cpu.items()},
        "cpu_overhead": round(cpu["total"] / cpu["models"], 3),
    }


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""Throughput of the worker path: images per hour from files on disk, and the peak RSS per worker.

    python bench/throughput.py --workers 2 --images 40            # 2 processes, 1 study in flight each
    python bench/throughput.py --workers 1 --images 20 --jobs 2   # 1 process, 2 studies in flight
    python bench/throughput.py --workers 2 --images 40 --json     # one JSON object
    python bench/throughput.py --workers 1 --images 64 --jobs 8 --batch-images 16 --device cuda --half
                                                                  # a GPU: 8 studies in flight, batched

Writes ``--images`` one-image studies (PhantomCXR frontal CRs, ``--size`` square; a few rendered,
the rest copies under new UIDs) to a temporary folder, then starts ``--workers`` processes. Each
loads the models, analyses one warm-up study (not timed) and waits; then all take studies from
one queue and run each the way a job's instances are run (:func:`cxr_service.pipeline.ingest_instance`
per file, then :func:`cxr_service.pipeline.run_study` with the outputs written to a
:class:`~cxr_service.pipeline.Folder`: analysis, SR, GSPS, SEG, SC and result.json; STOW-RS
excluded). Throughput is images / wall time from the start signal to the last study written.

``--jobs J`` runs J studies at once in each process (threads sharing one model set, as
``cxr worker --threads J``: inference is serialised by the engine's lock, so one study's ingest
and writers run while another's models do). ``--batch-images N`` (> 1) runs the studies in flight
together instead, up to N images per model pass, each waiting up to ``--batch-wait-ms`` for the
others (``CXR_BATCH_MAX_IMAGES``, ``CXR_BATCH_MAX_WAIT_MS``); ``--half`` runs the models under
float16 autocast (``CXR_HALF_PRECISION``). The summary then gives the batches' mean size and
``images_per_second``. ``--torch-threads`` is the torch intra-op threads
per process (default: the cores divided by the workers). The peak RSS is each process's
``ru_maxrss`` (models, warm-up and every study included). The workers' CPU time per image, and the
throughput it allows on cores nobody else uses, are printed too: other processes inflate the
wall time, hardly the CPU time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

_DONE = None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Images/hour of the worker path from files on disk")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--images", type=int, default=20, help="timed one-image studies (plus one warm-up per worker)")
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels")
    parser.add_argument("--jobs", type=int, default=1, help="studies in flight per worker (threads sharing its models)")
    parser.add_argument("--batch-images", type=int, default=1, help="images per model pass across the studies in flight (1: off)")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a study waits for others to share its batch")
    parser.add_argument("--half", action="store_true", help="float16 autocast (for a GPU)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads per worker (default: cores / workers)")
    parser.add_argument("--distinct", type=int, default=4, help="images rendered; the others are copies under new UIDs")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the lines")
    parser.add_argument("--keep", type=Path, default=None, help="write the outputs here and keep them")
    return parser


# --- inputs ------------------------------------------------------------------------------------


def make_studies(folder: Path, *, count: int, size: int, distinct: int) -> list[Path]:
    """``count`` one-image study folders under ``folder``; ``distinct`` rendered, the rest copies
    of them with new Study, Series and SOP Instance UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    from cxr_models.phantom.dicom_io import write_dicom
    from cxr_models.phantom.study import render_study

    rendered: list[Path] = []
    index = 0
    while len(rendered) < min(distinct, count):
        study = render_study(seed=2025, study_index=index, size_range=(size, size), other_fraction=0.0, label="typical")
        index += 1
        frontal = next((image for image in study.images if image.view == "frontal"), None)
        if frontal is not None:
            rendered.append(write_dicom(folder / f"study-{len(rendered):04d}" / "image.dcm", study, frontal))
    studies = [path.parent for path in rendered]
    for n in range(len(rendered), count):
        ds = pydicom.dcmread(rendered[n % len(rendered)])
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, generate_uid(entropy_srcs=[f"bench-throughput-{n}-{keyword}"]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = folder / f"study-{n:04d}"
        target.mkdir(parents=True)
        ds.save_as(target / "image.dcm", enforce_file_format=True)
        studies.append(target)
    return studies


# --- one worker process --------------------------------------------------------------------------


def run_one(folder: Path, *, engine, out: Path) -> int:
    """One study folder through the worker path; returns the number of images analysed."""
    from cxr_service.pipeline import Folder, InstanceSource, Requester, StudyRequest, ingest_instance, run_study

    instances = [
        ingest_instance(InstanceSource(label=path.name, path=path), limits=engine.limits) for path in sorted(folder.glob("*.dcm"))
    ]
    uid = next(i.item.study_instance_uid for i in instances if i.item.study_instance_uid)
    run = run_study(StudyRequest(study_instance_uid=uid, requester=Requester.CLI, destination=Folder(out)), instances, engine=engine)
    return run.analysed


def worker_main(rank: int, args: dict, warmup: str, tasks: mp.Queue, ready: mp.Queue, start, results: mp.Queue) -> None:
    import resource

    import torch

    torch.set_num_threads(args["torch_threads"])
    from cxr_service.engine import AnalysisEngine
    from cxr_service.logs import configure_logging

    configure_logging("ERROR")
    engine = AnalysisEngine.create(
        weights_dir=args["weights"], device=args["device"], min_score=None, max_pixels=64_000_000,
        half_precision=args["half"], batch_max_images=args["batch_images"], batch_max_wait_ms=args["batch_wait_ms"],
    )  # fmt: skip
    out = Path(args["out"]) / f"worker-{rank}"
    run_one(Path(warmup), engine=engine, out=out / "warmup")
    ready.put(rank)
    start.wait()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    analysed = 0
    lock = threading.Lock()
    errors: list[str] = []

    def loop() -> None:
        nonlocal analysed
        while True:
            folder = tasks.get()
            if folder is _DONE:
                return
            try:
                n = run_one(Path(folder), engine=engine, out=out)
            except Exception as exc:  # noqa: BLE001 - reported, the benchmark goes on
                errors.append(f"{folder}: {type(exc).__name__}: {exc}")
                n = 0
            with lock:
                analysed += n

    threads = [threading.Thread(target=loop, name=f"job-{j}") for j in range(args["jobs"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    batches = [] if engine.batcher is None else [(b.studies, b.images) for b in engine.batcher.history]
    engine.close()
    results.put(
        {
            "rank": rank,
            "analysed": analysed,
            "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
            "cpu_s": usage.ru_utime + usage.ru_stime - cpu_start,
            "errors": errors,
            "batches": batches,
            "end": time.time(),
        }
    )


# --- the run -----------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict:
    cores = os.cpu_count() or 1
    torch_threads = args.torch_threads or max(1, cores // args.workers)
    os.environ["OMP_NUM_THREADS"] = str(torch_threads)  # children read it at torch import
    tmp = Path(tempfile.mkdtemp(prefix="cxr-bench-throughput-"))
    out = args.keep or tmp / "out"
    try:
        studies = make_studies(tmp / "in", count=args.images + args.workers, size=args.size, distinct=args.distinct)
        warmups, timed = studies[: args.workers], studies[args.workers :]
        ctx = mp.get_context("spawn")
        tasks, ready, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
        start = ctx.Event()
        shared = {
            "torch_threads": torch_threads, "jobs": args.jobs, "weights": args.weights, "device": args.device,
            "out": str(out), "batch_images": args.batch_images, "batch_wait_ms": args.batch_wait_ms, "half": args.half,
        }  # fmt: skip
        procs = [
            ctx.Process(target=worker_main, args=(rank, shared, str(warmups[rank]), tasks, ready, start, results), daemon=True)
            for rank in range(args.workers)
        ]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.get(timeout=900)
        for folder in timed:
            tasks.put(str(folder))
        for _ in range(args.workers * args.jobs):
            tasks.put(_DONE)
        began = time.time()
        start.set()
        reports = []
        for _ in procs:
            try:
                reports.append(results.get(timeout=3600))
            except queue.Empty:
                break
        for proc in procs:
            proc.join(timeout=60)
        ended = max(r["end"] for r in reports)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = ended - began
    analysed = sum(r["analysed"] for r in reports)
    cpu_ms = sum(r["cpu_s"] for r in reports) * 1000.0 / len(timed)
    batches = [b for r in reports for b in r["batches"]]
    summary = {
        "workers": args.workers,
        "jobs_per_worker": args.jobs,
        "torch_threads_per_worker": torch_threads,
        "cores": cores,
        "size": args.size,
        "images": len(timed),
        "analysed": analysed,
        "elapsed_s": round(elapsed, 2),
        "images_per_hour": round(len(timed) / elapsed * 3600.0, 0),
        "images_per_second": round(len(timed) / elapsed, 2),
        "device": args.device,
        "half_precision": args.half,
        "batch_max_images": args.batch_images,
        "batch_max_wait_ms": args.batch_wait_ms,
        # The last batches of each worker (its history keeps 64): mean studies and images per model pass.
        "batch_mean_studies": round(statistics.fmean(b[0] for b in batches), 2) if batches else None,
        "batch_mean_images": round(statistics.fmean(b[1] for b in batches), 2) if batches else None,
        "ms_per_image_per_worker": round(elapsed * 1000.0 * args.workers / len(timed), 1),
        "peak_rss_mb": [r["peak_rss_mb"] for r in sorted(reports, key=lambda r: r["rank"])],
        # CPU time the workers spent per image, and the throughput it allows when the cores are
        # the benchmark's alone (other processes on the machine inflate the wall time, not this).
        "cpu_ms_per_image": round(cpu_ms, 1),
        "cpu_bound_images_per_hour": round(3600e3 * min(cores, args.workers * args.jobs * torch_threads) / cpu_ms, 0),
        "errors": [e for r in reports for e in r["errors"]],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{summary['images']} images ({args.size}x{args.size}) on {args.workers} worker(s) x {args.jobs} job(s), "
            f"{torch_threads} torch thread(s) each, {cores} cores: {elapsed:.1f} s, "
            f"{summary['images_per_hour']:.0f} images/h ({analysed} analysed)"
        )
        if batches:
            print(
                f"batches of up to {args.batch_images} images: {summary['batch_mean_studies']} studies, "
                f"{summary['batch_mean_images']} images on average"
            )
        print(f"peak RSS per worker: {', '.join(f'{mb:.0f} MB' for mb in summary['peak_rss_mb'])} (max {max(summary['peak_rss_mb']):.0f} MB)")
        print(
            f"CPU per image {cpu_ms:.0f} ms: {summary['cpu_bound_images_per_hour']:.0f} images/h when the cores are the "
            "benchmark's alone"
        )
        for error in summary["errors"]:
            print(f"error: {error}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())

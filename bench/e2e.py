"""Arrival-to-results latency and throughput inside the PACS, with real processes.

Starts Orthanc (with the cxr plugin) and the service (embedded SQLite queue by default, or
Redis with N `cxr worker` processes), C-STOREs N PhantomCXR studies into Orthanc one after the
other, and for each study measures the time from the end of its C-STORE to Orthanc's metadata
``cxr-status = done`` (this includes Orthanc's StableAge). Prints p50/p95 latency and
throughput.

    .venv/bin/python bench/e2e.py --studies 20
    .venv/bin/python bench/e2e.py --studies 20 --backend redis --workers 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.service.conftest import studies_in  # noqa: E402
from tests.service.procs import (  # noqa: E402
    c_store,
    free_port,
    start_orthanc,
    start_redis,
    start_service,
    start_worker,
    wait_until,
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def get_args_parser(*, studies: int = 20, size: tuple[int, int] = (1024, 1536)) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=studies)
    parser.add_argument("--size", type=int, nargs=2, default=size, metavar=("MIN", "MAX"))
    parser.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--workers", type=int, default=1, help="redis backend: cxr worker processes")
    parser.add_argument("--stable-age", type=int, default=2)
    parser.add_argument("--seed", type=int, default=31337)
    return parser


def main() -> None:
    run(get_args_parser().parse_args())


def run(args: argparse.Namespace) -> dict[str, float]:
    from cxr_models.phantom.generate import generate_dataset

    with tempfile.TemporaryDirectory(prefix="cxr-bench-e2e-") as tmp:
        root = Path(tmp)
        studies = studies_in(
            generate_dataset(root / "data", n_studies=args.studies + 1, seed=args.seed, size_range=tuple(args.size), other_fraction=0.0)
        )
        service_port = free_port()
        orthanc = start_orthanc(root / "orthanc", plugin_service_url=f"http://127.0.0.1:{service_port}", stable_age=args.stable_age)
        settings = orthanc.source_settings()
        extra = []
        if args.backend == "redis":
            redis_proc, url = start_redis(root / "redis")
            settings.update(queue_backend="redis", redis_url=url)
            extra = [redis_proc] + [start_worker(root / f"w{i}", name=f"worker{i}", **settings) for i in range(args.workers)]
        service = start_service(root / "service", port=service_port, worker=args.backend == "sqlite", **settings)
        try:
            items = list(studies.items())
            warm_uid, warm_paths = items[0]
            c_store(warm_paths, port=orthanc.dicom_port)
            done_at(orthanc, warm_uid, timeout=300)  # models loaded, caches warm

            sent: dict[str, float] = {}
            start = time.monotonic()
            for uid, paths in items[1:]:
                c_store(paths, port=orthanc.dicom_port)
                sent[uid] = time.monotonic()
            finished: dict[str, float] = {}
            deadline = time.monotonic() + 60 * args.studies
            while len(finished) < len(sent) and time.monotonic() < deadline:
                for uid in sent:
                    if uid not in finished and status(orthanc, uid) == "done":
                        finished[uid] = time.monotonic()
                time.sleep(0.2)
            latencies = [finished[u] - sent[u] for u in finished]
            images = sum(len(studies[u]) for u in finished)
            total = max(finished.values()) - start if finished else float("nan")
            workers = f"{args.workers} cxr worker process(es)" if args.backend == "redis" else "1 embedded worker"
            print(f"backend {args.backend}, {workers}, "
                  f"StableAge {args.stable_age} s, image size {args.size[0]}-{args.size[1]} px")  # fmt: skip
            print(f"studies analysed: {len(finished)}/{len(sent)} ({images} images)")
            print(f"arrival-to-results latency: p50 {percentile(latencies, 0.5):.1f} s, p95 {percentile(latencies, 0.95):.1f} s, "
                  f"mean {statistics.mean(latencies):.1f} s")  # fmt: skip
            print(f"throughput: {len(finished) / total * 60:.1f} studies/min, {images / total:.2f} images/s (burst of {len(sent)})")
            rss = {"service": peak_rss_mb(service.proc.popen.pid)}
            rss.update({p.name: peak_rss_mb(p.popen.pid) for p in extra if p.name.startswith("worker")})
            print("peak RSS: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in rss.items()))
            return {
                "analysed": len(finished), "sent": len(sent), "p50_s": percentile(latencies, 0.5),
                "p95_s": percentile(latencies, 0.95), "studies_per_min": len(finished) / total * 60,
                **{f"peak_rss_mb_{k}": v for k, v in rss.items()},
            }  # fmt: skip
        finally:
            service.stop()
            for proc in extra:
                proc.stop()
            orthanc.stop()


def status(orthanc, study_uid: str) -> str | None:
    orthanc_id = orthanc.study_id(study_uid)
    return orthanc.metadata(orthanc_id).get("cxr-status") if orthanc_id else None


def done_at(orthanc, study_uid: str, *, timeout: float) -> None:
    wait_until(lambda: status(orthanc, study_uid) == "done", timeout=timeout, interval=0.2, what=f"study {study_uid}")


if __name__ == "__main__":
    main()

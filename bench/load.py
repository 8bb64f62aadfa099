"""Load: a burst of studies C-STOREd into Orthanc (with the cxr plugin), all of which must be
analysed (0 lost). Prints p50/p95 arrival-to-results latency, throughput and the peak RSS of
the service (and workers). Same machinery as bench/e2e.py, with load defaults.

    .venv/bin/python bench/load.py                                  # 200 studies, embedded SQLite queue
    .venv/bin/python bench/load.py --backend redis --workers 2      # the same on 2 Redis workers
    .venv/bin/python bench/load.py --uploads 30 --large 8000        # memory: uploads to POST /v1/analyze

With ``--uploads N`` (and/or ``--large SIDE``) no Orthanc is started: ``cxr serve`` alone gets
N simultaneous uploads of one small study, then one upload of a SIDE x SIDE image, and the
service's RSS is printed after each step: the peak (VmHWM) and what it holds once idle again
(VmRSS, ``--settle`` seconds later), next to the answers' status codes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e import get_args_parser, run  # noqa: E402


def rss_mb(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident set size of a live process, in MB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values


def run_uploads(args: argparse.Namespace) -> dict[str, float]:
    """Memory under uploads to ``POST /v1/analyze`` (no Orthanc): see the module docstring."""
    from cxr_models.phantom.generate import generate_dataset
    from tests.service.conftest import studies_in
    from tests.service.procs import start_service

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-uploads-") as tmp:
        root = Path(tmp)
        small = studies_in(generate_dataset(root / "small", n_studies=2, seed=args.seed, size_range=(512, 640), other_fraction=0.0, workers=1))
        service = start_service(root / "service", max_pixels=max(64_000_000, (args.large or 0) ** 2))
        pid = service.proc.popen.pid
        try:
            warm_uid, warm_paths = next(iter(small.items()))
            payload = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in warm_paths]
            with service.client() as c:
                assert c.post("/v1/analyze", files=payload).status_code == 200  # models warm
            base = rss_mb(pid)
            print(f"idle after one upload: RSS {base['VmRSS']:.0f} MB, peak {base['VmHWM']:.0f} MB")
            results.update(rss_warm_mb=base["VmRSS"], peak_warm_mb=base["VmHWM"])
            if args.uploads:

                def upload(_: int) -> tuple[int, str | None]:
                    with service.client() as c:
                        r = c.post("/v1/analyze", files=payload)
                        return r.status_code, r.headers.get("retry-after")

                start = time.monotonic()
                with ThreadPoolExecutor(max_workers=args.uploads) as pool:
                    answers = list(pool.map(upload, range(args.uploads)))
                elapsed = time.monotonic() - start
                codes = Counter(code for code, _ in answers)
                peak = rss_mb(pid)["VmHWM"]
                time.sleep(args.settle)
                settled = rss_mb(pid)["VmRSS"]
                retry = sorted({r for code, r in answers if code == 503 and r})
                print(f"{args.uploads} simultaneous uploads in {elapsed:.1f} s: answers {dict(sorted(codes.items()))}"
                      f"{f' (503 with Retry-After {retry})' if retry else ''}; "
                      f"peak RSS {peak:.0f} MB, {settled:.0f} MB {args.settle:.0f} s later")  # fmt: skip
                results.update(uploads_peak_mb=peak, uploads_settled_mb=settled, uploads_ok=codes.get(200, 0), uploads_busy=codes.get(503, 0))
            if args.large:
                path = large_image(root / "large", side=args.large, seed=args.seed)
                with service.client() as c:
                    start = time.monotonic()
                    r = c.post("/v1/analyze", files=[("files", (path.name, path.read_bytes(), "application/dicom"))])
                    elapsed = time.monotonic() - start
                peak = rss_mb(pid)["VmHWM"]
                time.sleep(args.settle)
                settled = rss_mb(pid)["VmRSS"]
                analysed = r.status_code == 200 and r.json()["images"][0]["analysed"]
                print(f"one {args.large} x {args.large} upload in {elapsed:.1f} s: answer {r.status_code} (analysed: {analysed}); "
                      f"peak RSS {peak:.0f} MB, {settled:.0f} MB {args.settle:.0f} s later")  # fmt: skip
                results.update(large_peak_mb=peak, large_settled_mb=settled)
        finally:
            service.stop()
    return results


def large_image(folder: Path, *, side: int, seed: int) -> Path:
    """One PhantomCXR frontal chest image of ``side`` x ``side`` pixels (16-bit)."""
    from cxr_models.phantom.generate import generate_dataset
    from tests.service.conftest import studies_in

    studies = studies_in(generate_dataset(folder, n_studies=1, seed=seed + 1, size_range=(side, side), other_fraction=0.0, workers=1))
    return next(iter(studies.values()))[0]


def main() -> None:
    parser = get_args_parser(studies=200, size=(512, 768))
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--uploads", type=int, default=0, help="simultaneous uploads to POST /v1/analyze (no Orthanc)")
    parser.add_argument("--large", type=int, default=0, metavar="SIDE", help="then one upload of a SIDE x SIDE image")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before the settled RSS is read")
    args = parser.parse_args()
    if args.uploads or args.large:
        print(run_uploads(args))
        return
    result = run(args)
    lost = result["sent"] - result["analysed"]
    print(f"lost: {lost}")
    if lost:
        sys.exit(1)


if __name__ == "__main__":
    main()

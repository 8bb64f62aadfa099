"""PhantomCXR throughput: images per second, rendering plus writing the dataset files.

``python bench/phantom.py --n-studies 40 --size 512`` writes a dataset of square ``--size``
images into a temporary folder with ``--workers`` processes (default: all cores) and prints the
images per second, then the single-process in-memory rendering rate for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from cxr_models.phantom.generate import MANIFEST, generate_dataset
from cxr_models.phantom.study import render_study


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PhantomCXR generation throughput")
    parser.add_argument("--n-studies", type=int, default=40, help="studies to generate")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--memory-studies", type=int, default=10, help="studies for the in-memory single-process rate")
    return parser


def main(args: argparse.Namespace) -> None:
    workers = args.workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="phantom_bench_") as tmp:
        out = Path(tmp) / "data"
        start = time.perf_counter()
        generate_dataset(out, n_studies=args.n_studies, seed=args.seed, size_range=(args.size, args.size),
                         workers=workers)
        elapsed = time.perf_counter() - start
        n_images = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["n_images"]
    print(f"dataset: {n_images} images of {args.size}x{args.size} in {elapsed:.2f} s with {workers} worker(s): "
          f"{n_images / elapsed:.1f} images/s (rendering + DICOM/PNG/CSV writing, process start-up included)")
    start = time.perf_counter()
    cpu = time.process_time()
    count = 0
    for index in range(args.memory_studies):
        study = render_study(seed=args.seed + 1, study_index=index, size_range=(args.size, args.size))
        count += len(study.images)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    # CPU time is what a free core would need: the wall rate drops when other jobs share the cores
    print(f"in memory, 1 process: {count} images in {elapsed:.2f} s wall, {cpu:.2f} s CPU: "
          f"{count / elapsed:.1f} images/s wall, {count / cpu:.1f} images per CPU-second")


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""Preprocessed-array caches under ``OUT/cache/`` so trainers decode every DICOM only once.

A cache is a folder of ``.npy`` files named by a hash of the trainer name, its preprocessing
version and parameters, and the ordered record ids; a run (or ``--resume``) with the same inputs
reuses it. Arrays come back memory-mapped, stacked along axis 0 in record order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cxr_models.train.common import progress

logger = logging.getLogger(__name__)
T = TypeVar("T")

_DONE = "done.json"


def cache_key(*, name: str, version: int, params: dict[str, Any], ids: Sequence[str]) -> str:
    """A short stable hash of everything that determines the cached arrays."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"name": name, "version": version, "params": params}, sort_keys=True).encode())
    for item in ids:
        digest.update(item.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _load(folder: Path) -> dict[str, np.ndarray]:
    meta = json.loads((folder / _DONE).read_text())
    return {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}


def cached_arrays(
    cache_dir: Path,
    *,
    name: str,
    version: int,
    params: dict[str, Any],
    items: Sequence[T],
    ids: Sequence[str],
    build: Callable[[T], dict[str, np.ndarray]],
    workers: int = 0,
    disable_progress: bool = False,
) -> dict[str, np.ndarray]:
    """Arrays ``build(item)`` stacked over ``items``, built once and then read from the cache.

    ``build`` must be a picklable module-level function (or ``functools.partial`` of one) when
    ``workers > 0``; every call must return the same names with the same shapes and dtypes.
    """
    if len(items) != len(ids):
        raise ValueError(f"items ({len(items)}) and ids ({len(ids)}) must have the same length")
    if not items:
        raise ValueError(f"cache {name!r}: items is empty, nothing to preprocess")
    key = cache_key(name=name, version=version, params=params, ids=ids)
    folder = Path(cache_dir) / f"{name}-{key}"
    if (folder / _DONE).is_file():
        logger.info("reusing cache %s (%d items)", folder, len(items))
        return _load(folder)
    if folder.exists():
        shutil.rmtree(folder)
    partial_folder = folder.with_name(folder.name + ".partial")
    if partial_folder.exists():
        shutil.rmtree(partial_folder)
    partial_folder.mkdir(parents=True)
    logger.info("building cache %s (%d items)", folder, len(items))

    arrays: dict[str, np.ndarray] = {}

    def store(index: int, result: dict[str, np.ndarray]) -> None:
        if not arrays:
            for array_name, value in result.items():
                arrays[array_name] = np.lib.format.open_memmap(
                    partial_folder / f"{array_name}.npy",
                    mode="w+",
                    dtype=value.dtype,
                    shape=(len(items), *value.shape),
                )
        if set(result) != set(arrays):
            raise ValueError(
                f"cache {name!r}: item {ids[index]!r} returned arrays {sorted(result)}, expected {sorted(arrays)}"
            )
        for array_name, value in result.items():
            arrays[array_name][index] = value

    if workers > 0:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.imap(build, items, chunksize=4)
            bar = progress(results, desc=f"cache {name}", total=len(items), disable=disable_progress)
            for index, result in enumerate(bar):
                store(index, result)
    else:
        bar = progress(items, desc=f"cache {name}", total=len(items), disable=disable_progress)
        for index, item in enumerate(bar):
            store(index, build(item))
    names = sorted(arrays)
    for value in arrays.values():
        value.flush()
    arrays.clear()
    (partial_folder / _DONE).write_text(json.dumps({"arrays": names, "items": len(items)}))
    partial_folder.rename(folder)
    return _load(folder)

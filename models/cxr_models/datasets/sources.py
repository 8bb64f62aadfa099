"""Several data sources at once: ``PATH[,format=F][,weight=W][,name=N]`` specs.

Trainers and ``cxr evaluate`` take ``--data`` one or more times, so real datasets and PhantomCXR
can be mixed::

    --data ../shared/realcxr/chestxray14,weight=2 --data data/train

``format`` is a layout of :data:`cxr_models.datasets.FORMATS` (default: detected), ``weight``
the source's sampling weight in training (a record of weight 2 is drawn twice as often as one
of weight 1; 0 keeps the source for validation only), and ``name`` the source name recorded
on each record (default: the folder name). Every record comes back with ``source`` and
``weight`` set.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr_models.records import ImageRecord

logger = logging.getLogger(__name__)

_KEYS = ("format", "weight", "name")


@dataclass(frozen=True)
class DataSource:
    """One dataset root and how to use it."""

    root: Path
    format: str = "auto"
    weight: float = 1.0
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.weight >= 0.0:
            raise ValueError(f"weight must be >= 0, got {self.weight!r} for {self.root}")

    @property
    def label(self) -> str:
        return self.name or self.root.name

    def spec(self) -> str:
        """The spec this source parses from (``PATH`` plus the non-default options)."""
        parts = [str(self.root)]
        if self.format != "auto":
            parts.append(f"format={self.format}")
        if self.weight != 1.0:
            parts.append(f"weight={self.weight:g}")
        if self.name is not None:
            parts.append(f"name={self.name}")
        return ",".join(parts)


def parse_source(text: str | Path, *, default_format: str = "auto") -> DataSource:
    """A :class:`DataSource` from ``PATH[,format=F][,weight=W][,name=N]``."""
    if isinstance(text, Path):
        return DataSource(root=text, format=default_format)
    path, *options = str(text).split(",")
    if not path:
        raise ValueError(f"data source {text!r}: the path is empty")
    values: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if not sep or key not in _KEYS or not value.strip():
            raise ValueError(f"data source {text!r}: option {option!r} is not one of {', '.join(k + '=...' for k in _KEYS)}")
        values[key] = value.strip()
    try:
        weight = float(values.get("weight", 1.0))
    except ValueError:
        raise ValueError(f"data source {text!r}: weight {values['weight']!r} is not a number") from None
    return DataSource(root=Path(path), format=values.get("format", default_format), weight=weight, name=values.get("name"))


def source_argument(text: str) -> DataSource:
    """argparse ``type=`` for ``--data``."""
    try:
        return parse_source(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def as_sources(data: object, *, default_format: str = "auto") -> list[DataSource]:
    """``--data`` values (one or several paths or specs, or parsed sources) as a list of sources."""
    items = data if isinstance(data, (list, tuple)) else [data]
    out = []
    for item in items:
        if isinstance(item, DataSource):
            out.append(item if item.format != "auto" else dataclasses.replace(item, format=default_format))
        else:
            out.append(parse_source(item, default_format=default_format))
    if not out:
        raise ValueError("--data names no data source")
    return out


def read_sources(sources: Sequence[DataSource]) -> list[ImageRecord]:
    """Records of every source in order, each with ``source`` and ``weight`` set."""
    from cxr_models.datasets import read_dataset

    records: list[ImageRecord] = []
    for source in sources:
        found = read_dataset(source.root, format=source.format)
        logger.info("%s: %d images (weight %g)", source.label, len(found), source.weight)
        records.extend(dataclasses.replace(r, source=source.label, weight=source.weight) for r in found)
    return records


def describe(sources: Sequence[DataSource]) -> str:
    """The sources as command-line arguments (``--data SPEC ...``)."""
    return " ".join(f"--data {s.spec()}" for s in sources)

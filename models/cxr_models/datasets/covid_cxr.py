"""Reader for the COVID-19 image data collection (ieee8023/covid-chestxray-dataset) layout.

Layout::

    ROOT/metadata.csv                             patientid,offset,...,finding,...,view,modality,
                                                  ...,folder,filename,...,license,...
    ROOT/<folder>/<filename>                      PNG/JPEG, RGB, RGBA, grey or palette
                                                  (``folder`` defaults to ``images``)
    ROOT/masks_v7labs/<filename>.png              V7 Labs lung masks            (optional)
    ROOT/annotations/covid-severity-scores.csv    ``##`` comment lines, then
                                                  filename,geographic_mean,opacity_mean (optional)

Only X-ray rows (``modality`` "X-ray") whose image file exists become records. View: PA, AP
and their variants ("AP Supine", "AP Erect", "AP semi erect", ...) are ``frontal``, "L" is
``lateral``; any other value (Axial, Coronal, empty, ...) is skipped with one warning giving
the count per value.

Some images are listed under two patient ids. Patient ids that share any filename are grouped
(union-find) and every image of a group gets the group's smallest id as ``patient_id``, so a
patient-disjoint split keeps them together; rows repeating a filename give one record (the
first row). ``study_id`` is ``<group>_<offset>`` (offset: days since symptom onset, so images of
one day form one study) or ``<group>_<filename>`` when the offset is empty.

``abnormal``: False for finding "No Finding", None for an empty, "todo" or "Unknown" finding,
True for any other finding. ``licence`` is the row's ``license`` cell (None when empty; many
images have none). ``severity`` is ``geographic_mean`` of the severity scores (extent of lung
involvement, 0-8, mean of three raters). The collection has no opacity boxes: ``boxes`` is None
(the COCO lung-box json is not read).

Lung masks are V7 Labs' (``masks_v7labs/<filename>.png``, 8-bit grey of the image's size,
255 = lung, both lungs in one mask, for frontal and lateral views). V7's convention includes the
lung behind the heart, so they are larger than masks that leave out the heart shadow; do not
mix them with such masks in one evaluation without saying so.

Malformed rows (an empty patientid or filename, a severity score outside 0-8 or repeated with
another value) raise a ValueError naming the file, line and value.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from cxr_models.datasets.csvio import Row, header, read_rows
from cxr_models.records import ImageRecord

logger = logging.getLogger(__name__)

METADATA_CSV = "metadata.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("patientid", "finding", "view", "modality", "filename")
DEFAULT_FOLDER = "images"
MASKS_DIR = "masks_v7labs"
SEVERITY_CSV = Path("annotations") / "covid-severity-scores.csv"
X_RAY = "x-ray"
NO_FINDING = "No Finding"
UNKNOWN_FINDINGS = frozenset({"", "todo", "unknown"})
SEVERITY_RANGE = (0.0, 8.0)


def is_covid_cxr(root: Path) -> bool:
    """Whether ``root/metadata.csv`` has the collection's columns."""
    path = Path(root) / METADATA_CSV
    return path.is_file() and all(column in header(path) for column in REQUIRED_COLUMNS)


def covid_view(view: str) -> str | None:
    """View of a ``view`` cell: PA/AP variants frontal, L lateral, None for anything else."""
    tokens = view.strip().upper().replace("_", " ").split()
    if not tokens:
        return None
    if tokens[0] in ("PA", "AP"):
        return "frontal"
    if tokens == ["L"] or tokens == ["LATERAL"]:
        return "lateral"
    return None


def _abnormal(finding: str) -> bool | None:
    if finding.strip().lower() in UNKNOWN_FINDINGS:
        return None
    return finding.strip() != NO_FINDING


def _id_key(patient: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then the others as text."""
    return (0, int(patient), patient) if patient.isdigit() else (1, 0, patient)


def patient_groups(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """patient id -> group id for ``(patient, filename)`` pairs: ids sharing a file are one group.

    The group id is the group's smallest patient id (numeric order where numeric).
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_owner: dict[str, str] = {}
    for patient, filename in pairs:
        find(patient)
        owner = first_owner.setdefault(filename, patient)
        a, b = find(owner), find(patient)
        if a != b:
            # Keep the smaller id as the root so the root is the group id.
            if _id_key(b) < _id_key(a):
                a, b = b, a
            parent[b] = a
    return {patient: find(patient) for patient in parent}


def read_severity(path: Path) -> dict[str, float]:
    """filename -> geographic_mean of ``covid-severity-scores.csv`` (leading ``##`` lines skipped)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        lines = fh.readlines()
    skipped = 0
    while skipped < len(lines) and (lines[skipped].lstrip().startswith("##") or not lines[skipped].strip()):
        skipped += 1
    reader = csv.reader(lines[skipped:])
    names = [name.strip() for name in next(reader, [])]
    missing = [name for name in ("filename", "geographic_mean") if name not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found columns {names}")
    scores: dict[str, float] = {}
    lines_of: dict[str, int] = {}
    for cells in reader:
        values = [cell.strip() for cell in cells]
        if not any(values):
            continue
        values = (values + [""] * len(names))[: len(names)]
        row = Row(path=path, line=skipped + reader.line_num, cells=dict(zip(names, values, strict=True)))
        filename = row.require("filename")
        score = row.float_or_none("geographic_mean")
        if score is None:
            continue
        lo, hi = SEVERITY_RANGE
        if not lo <= score <= hi:
            raise row.error("geographic_mean", row.get("geographic_mean"), f"is outside {lo:g}-{hi:g}")
        if filename in scores and scores[filename] != score:
            raise row.error(
                "geographic_mean", row.get("geographic_mean"),
                f"differs from {scores[filename]:g} given for {filename} on line {lines_of[filename]}",
            )  # fmt: skip
        scores[filename], lines_of[filename] = score, row.line
    return scores


def read_covid_cxr(root: Path) -> list[ImageRecord]:
    """Records of a covid-chestxray-dataset folder (X-ray images on disk), sorted by study id."""
    root = Path(root)
    metadata_path = root / METADATA_CSV
    if not metadata_path.is_file():
        raise ValueError(f"root {root} has no {METADATA_CSV}; not a covid-chestxray-dataset layout")
    rows: list[Row] = []
    for row in read_rows(metadata_path, required=REQUIRED_COLUMNS):
        row.require("patientid")
        row.require("filename")
        rows.append(row)
    groups = patient_groups((row.get("patientid"), row.get("filename")) for row in rows)
    masks_dir = root / MASKS_DIR
    masks = frozenset(p.name for p in masks_dir.iterdir()) if masks_dir.is_dir() else frozenset()
    severity_path = root / SEVERITY_CSV
    severity = read_severity(severity_path) if severity_path.is_file() else {}

    records: list[ImageRecord] = []
    seen: set[str] = set()
    repeated = 0
    modalities: Counter[str] = Counter()
    other_views: Counter[str] = Counter()
    missing = 0
    for row in rows:
        filename = row.get("filename")
        if filename in seen:
            repeated += 1
            continue
        seen.add(filename)
        if row.get("modality").lower() != X_RAY:
            modalities[row.get("modality")] += 1
            continue
        view = covid_view(row.get("view"))
        if view is None:
            other_views[row.get("view")] += 1
            continue
        path = root / (row.get("folder") or DEFAULT_FOLDER) / filename
        if not path.is_file():
            logger.debug("%s, line %d: no image file %s", metadata_path, row.line, path)
            missing += 1
            continue
        group = groups[row.get("patientid")]
        offset = row.get("offset")
        mask = f"{filename}.png"
        records.append(
            ImageRecord(
                image_id=filename,
                path=path,
                study_id=f"{group}_{offset}" if offset else f"{group}_{filename}",
                view=view,
                boxes=None,
                lung_mask=(masks_dir / mask,) if mask in masks else None,
                patient_id=group,
                abnormal=_abnormal(row.get("finding")),
                severity=severity.get(filename),
                licence=row.get("license") or None,
            )
        )
    merged = sum(1 for patient, group in groups.items() if patient != group)
    if repeated or merged:
        logger.info(
            "%s: %d row(s) repeat an image listed earlier (one record per image); %d patient id(s) merged "
            "into another id that shares an image", root, repeated, merged,
        )  # fmt: skip
    if modalities:
        logger.info(
            "%s: skipped %d non-X-ray row(s): %s", root, sum(modalities.values()), dict(sorted(modalities.items()))
        )
    if other_views:
        logger.warning(
            "%s: skipped %d X-ray image(s) whose view is not PA/AP/L: %s",
            root, sum(other_views.values()), dict(sorted(other_views.items())),
        )  # fmt: skip
    if missing:
        logger.warning("%s: skipped %d image(s) whose file is missing", root, missing)
    records.sort(key=lambda r: (r.study_id or "", r.image_id))
    logger.info("%s: %d covid-chestxray-dataset image(s)", root, len(records))
    return records

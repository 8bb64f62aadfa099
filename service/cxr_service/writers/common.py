"""Pieces shared by the DICOM writers: series identity, deterministic dates, equipment, codes.

Every output identifies the algorithm the way the IHE AI Results (AIR) profile asks: an item of
the Contributing Equipment Sequence per algorithm and per model, with Manufacturer, Manufacturer's
Model Name, Software Versions, Device UID and the purpose (DCM 109102 "Processing Equipment").
Dates and times that highdicom fills with "now" are replaced by one deterministic timestamp so
that analysing a study twice gives byte-identical objects.
"""

from __future__ import annotations

import datetime
import functools
import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
import pydicom
from cxr_models.records import Box
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataelem import DataElement
from pydicom.valuerep import DA, DT, TM

from cxr_service import codes
from cxr_service.results import AlgorithmInfo, ImageResult
from cxr_service.uids import KIND_GSPS, KIND_SC, KIND_SEG, KIND_SR, device_uid
from cxr_service.writers.sources import checked_copy

logger = logging.getLogger(__name__)


def _memoize_iod_lookups() -> None:
    """Memoize highdicom's ``is_attribute_in_iod`` where highdicom looks it up.

    highdicom's constructors ask whether an attribute belongs to a SOP class's IOD about 20
    times for a study's outputs, and each answer scans every attribute of every module of the
    IOD: about 10 ms of the writers' 90 ms a study. The answer depends only on the standard's
    tables highdicom ships, so it is kept once computed (errors, e.g. an unknown SOP class, are
    raised as before and not kept).
    """
    import highdicom._standard_utils as standard
    import highdicom.base
    import highdicom.sr.content

    original = standard.is_attribute_in_iod
    if getattr(original, "cxr_memoized", False):
        return
    answers: dict[tuple, bool] = {}

    @functools.wraps(original)
    def is_attribute_in_iod(attribute, sop_class_uid, exclude_path_elements=None):  # noqa: ANN001, ANN202
        key = (attribute, str(sop_class_uid), None if exclude_path_elements is None else tuple(exclude_path_elements))
        if key not in answers:
            answers[key] = original(attribute, sop_class_uid, exclude_path_elements)
        return answers[key]

    is_attribute_in_iod.cxr_memoized = True  # type: ignore[attr-defined]
    for module in (standard, highdicom.base, highdicom.sr.content):
        if getattr(module, "is_attribute_in_iod", None) is original:
            module.is_attribute_in_iod = is_attribute_in_iod


_memoize_iod_lookups()

SERIES_NUMBERS: Mapping[str, int] = {KIND_SR: 9901, KIND_GSPS: 9902, KIND_SEG: 9903, KIND_SC: 9904}
SERIES_DESCRIPTIONS: Mapping[str, str] = {
    KIND_SR: "CXR AI SR",
    KIND_GSPS: "CXR AI GSPS",
    KIND_SEG: "CXR AI SEG",
    KIND_SC: "CXR AI SC",
}
DEMO_SUFFIX = " - DEMO WEIGHTS"
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE - results of demo weights"
AI_RESULT_NOTICE = "AI RESULT - NOT FOR DIAGNOSIS"
# Used when the source study carries no usable date (keeps outputs deterministic).
FALLBACK_CREATED = datetime.datetime(2000, 1, 1, 0, 0, 0)

# Type 2 Patient/Study attributes highdicom reads from a source header; absent ones become empty.
_TYPE2_SOURCE_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
# What a writer raises when a source header or result cannot be written: caught per image by
# :func:`cxr_service.writers.write_all`, so one image never breaks the others' outputs.
WRITER_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    ArithmeticError,
)
# (date, time) attribute pairs that highdicom sets from the clock.
_DATE_TIME_PAIRS = (
    ("InstanceCreationDate", "InstanceCreationTime"),
    ("ContentDate", "ContentTime"),
    ("SeriesDate", "SeriesTime"),
    ("PresentationCreationDate", "PresentationCreationTime"),
    ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"),
)


def series_description(kind: str, *, demo_weights: bool) -> str:
    """SeriesDescription of an output kind, marked when the weights are demo weights."""
    if kind not in SERIES_DESCRIPTIONS:
        raise ValueError(f"kind must be one of {sorted(SERIES_DESCRIPTIONS)}, got {kind!r}")
    return SERIES_DESCRIPTIONS[kind] + (DEMO_SUFFIX if demo_weights else "")


def source_header(sources: Mapping[str, pydicom.Dataset], sop_instance_uid: str) -> pydicom.Dataset:
    """The source header of an image, fit to copy into an output, with the Type 2 patient/study
    attributes highdicom needs.

    Returns a checked copy without pixel data (:func:`cxr_service.writers.sources.writable_source`:
    invalid attributes left out or repaired; a header :func:`~cxr_service.writers.write_all`
    already checked is only copied); the caller's dataset is not modified.
    """
    try:
        ds = sources[sop_instance_uid]
    except KeyError:
        raise KeyError(f"no source header for SOP Instance UID {sop_instance_uid!r}") from None
    checked = checked_copy(ds)
    for repair in checked.repairs:
        logger.debug("source image %s: %s", sop_instance_uid, repair)
    header = checked.dataset
    for keyword in _TYPE2_SOURCE_ATTRIBUTES:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


# What the SR keeps of a source header when the full header cannot be written (the fallback of
# :func:`cxr_service.writers.write_all`): identification, the patient and study, the matrix.
_IDENTIFYING_ATTRIBUTES = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "Rows",
    "Columns",
    *_TYPE2_SOURCE_ATTRIBUTES,
)


def identifying_header(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Only the identifying attributes of a (checked) source header; see ``_IDENTIFYING_ATTRIBUTES``."""
    header = pydicom.Dataset()
    for keyword in _IDENTIFYING_ATTRIBUTES:
        if keyword in ds:
            header[keyword] = ds[keyword]
    return header


def creation_datetime(sources: Mapping[str, pydicom.Dataset]) -> datetime.datetime:
    """Deterministic creation timestamp for outputs: the source study's date and time.

    Falls back to series/acquisition/content dates of the sources and finally to
    :data:`FALLBACK_CREATED`, so the same sources always give the same timestamp.
    """
    for date_kw, time_kw in (
        ("StudyDate", "StudyTime"),
        ("SeriesDate", "SeriesTime"),
        ("AcquisitionDate", "AcquisitionTime"),
        ("ContentDate", "ContentTime"),
    ):
        for uid in sorted(sources):
            ds = sources[uid]
            date_value = str(ds.get(date_kw, "") or "").strip()
            if not date_value:
                continue
            try:
                date = DA(date_value)
            except ValueError:
                logger.debug("ignoring unparseable %s %r of %s", date_kw, date_value, uid)
                continue
            time_value = str(ds.get(time_kw, "") or "").strip()
            time = datetime.time(0, 0, 0)
            if time_value:
                try:
                    parsed = TM(time_value)
                except ValueError:
                    logger.debug("ignoring unparseable %s %r of %s", time_kw, time_value, uid)
                else:
                    time = datetime.time(parsed.hour, parsed.minute, parsed.second)
            return datetime.datetime.combine(datetime.date(date.year, date.month, date.day), time)
    return FALLBACK_CREATED


def cxr_coding_scheme() -> CodingSchemeIdentificationItem:
    """Declaration of the private 99CXR coding scheme (Coding Scheme Identification Sequence item)."""
    return CodingSchemeIdentificationItem(
        designator=codes.CXR_SCHEME_DESIGNATOR,
        name=codes.CXR_SCHEME_NAME,
        version=codes.CXR_SCHEME_VERSION,
        responsible_organization=codes.CXR_SCHEME_RESPONSIBLE_ORGANIZATION,
    )


def model_parameters(algorithm: AlgorithmInfo) -> dict[str, str]:
    """Stage name → model UID, sorted by stage, for algorithm identification parameters."""
    return {stage: algorithm.model_uids[stage] for stage in sorted(algorithm.model_uids)}


@functools.lru_cache(maxsize=16)
def contributing_equipment(
    algorithm: AlgorithmInfo, *, created: datetime.datetime
) -> tuple[hd.ContributingEquipment, ...]:
    """IHE AIR contributing equipment: one item for the algorithm, one per model it ran.

    The algorithm item carries the algorithm's Device UID; each model item names its model UID
    as Device Serial Number. (Device UID in this sequence is current DICOM, but the dicom3tools
    release Debian ships predates it and warns once per item; one item keeps it.)

    The items are built once per algorithm and creation time and shared, read-only, by every
    output that names them (each of a study's four or more outputs per image built its own, at
    about 1.7 ms a set), as one SR shares its coded concepts.
    """
    algorithm_uid = device_uid(algorithm_name=algorithm.name, model_version=algorithm.version)
    entries = [(algorithm.name, algorithm_uid, "AI algorithm", True)]
    entries += [
        (f"{algorithm.name} {stage}", uid, f"AI model of stage {stage}", False)
        for stage, uid in model_parameters(algorithm).items()
    ]
    items = []
    for model_name, uid, description, is_algorithm in entries:
        item = hd.ContributingEquipment(
            manufacturer=algorithm.manufacturer,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=model_name,
            software_versions=algorithm.version,
            device_serial_number=uid,
            contribution_datetime=created,
            contribution_description=description + (DEMO_SUFFIX if algorithm.demo_weights else ""),
        )
        if is_algorithm:
            item.DeviceUID = uid
        items.append(item)
    return tuple(items)


def algorithm_identification_sequence(algorithm: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification Sequence (SEG segments): name, version, family AI, model UIDs."""
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=codes.ARTIFICIAL_INTELLIGENCE,
        version=algorithm.version,
        source=algorithm.manufacturer,
        parameters=model_parameters(algorithm) or None,
    )


def finalize(ds: pydicom.Dataset, *, created: datetime.datetime) -> None:
    """Make the clock-derived attributes of a written dataset deterministic (in place)."""
    date, time = DA(created.date()), TM(created.time())
    for date_kw, time_kw in _DATE_TIME_PAIRS:
        if date_kw in ds:
            setattr(ds, date_kw, date)
        if time_kw in ds:
            setattr(ds, time_kw, time)
    stamp = DT(created)
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item and str(item.ContributionDateTime) != str(stamp):
            item.ContributionDateTime = stamp  # never the shared items of contributing_equipment
    skip_item_corrections(ds)


def skip_item_corrections(ds: pydicom.Dataset) -> None:
    """Spare pydicom's writer its per-item passes over a written dataset's sequences (in place).

    Writing a dataset created in memory, pydicom corrects the ambiguous VRs of the whole tree
    from the root (every nested item, with its ancestors), then again from every item it
    writes: an SR's content tree, a few hundred items deep in five levels, cost about 30 ms a
    document. Each nested item made of parsed elements is declared as already in the encoding it
    will be written in (explicit VR little endian, its own character set), which skips only the
    repeated passes: the root's pass still corrects every element, items added later included,
    so the bytes written are the same. Items holding raw (unparsed) elements are left as they are.
    An item shared by several sequences (the SR's algorithm identification, its coded concepts)
    is visited once.
    """
    # Dataset.values(), not elements(): the same elements, raw ones left raw, without sorting
    # the tags and looking each up again.
    stack = [ds]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        for element in node.values():
            if isinstance(element, DataElement) and element.VR == "SQ":
                for item in element.value:
                    if id(item) in seen:
                        continue
                    seen.add(id(item))
                    if all(isinstance(e, DataElement) for e in item.values()):
                        item.set_original_encoding(False, True, item._character_set)
                    stack.append(item)


# Body Part Examined defined terms (PS3.16 Annex L) a chest radiograph may carry that are not
# paired structures (a paired one would need a Laterality, which a chest image has not).
CHEST_BODY_PARTS = frozenset(
    {"CHEST", "THORAX", "CHESTABDOMEN", "CHESTABDPELVIS", "NECKCHEST", "NECKCHESTABDOMEN", "NECKCHESTABDPELV", "HEART",
     "MEDIASTINUM", "STERNUM"}
)  # fmt: skip


def body_part_examined(ds: pydicom.Dataset) -> str:
    """The source's Body Part Examined when it is an unpaired chest term, else CHEST (only chest
    radiographs are analysed, whatever the header says: PECHO, a typo, LUNG, nothing).

    GSPS and SC need it: without a defined unpaired term dciodvfy cannot tell that the body part
    is not paired and asks for the Type 2C Laterality.
    """
    value = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if value in CHEST_BODY_PARTS:
        return value
    if value:
        logger.debug("source image %s: Body Part Examined is not an unpaired chest term; CHEST written", ds.get("SOPInstanceUID"))
    return "CHEST"


def image_shape(ds: pydicom.Dataset) -> tuple[int, int]:
    """(rows, columns) of a source header."""
    return int(ds.Rows), int(ds.Columns)


def clip_box(box: Box, *, rows: int, columns: int) -> Box:
    """``box`` limited to the image area ``[0, columns] x [0, rows]`` (pixel-corner coordinates)."""
    clipped = Box(
        min(max(box.x0, 0.0), float(columns)),
        min(max(box.y0, 0.0), float(rows)),
        min(max(box.x1, 0.0), float(columns)),
        min(max(box.y1, 0.0), float(rows)),
    )
    if clipped != box:
        logger.debug("box %s clipped to the %dx%d image: %s", box, columns, rows, clipped)
    return clipped


def rectangle(box: Box) -> np.ndarray:
    """Closed 5-point polyline (column, row) around ``box``; the first point is repeated at the end.

    Box edges are pixel-corner coordinates, the convention of DICOM SCOORD and GSPS PIXEL units
    (top left corner of the top left pixel is 0.0\\0.0).
    """
    return np.array(
        [
            [box.x0, box.y0],
            [box.x1, box.y0],
            [box.x1, box.y1],
            [box.x0, box.y1],
            [box.x0, box.y0],
        ],
        dtype=np.float64,
    )


def region_box(image: ImageResult, ds: pydicom.Dataset) -> Box:
    """The lung region of an analysed image, or the whole image when no lung box was found."""
    rows, columns = image_shape(ds)
    if image.lung_box is None or image.crop_fallback:
        return Box(0.0, 0.0, float(columns), float(rows))
    return clip_box(image.lung_box, rows=rows, columns=columns)


def check_sources(images: Sequence[ImageResult], sources: Mapping[str, pydicom.Dataset]) -> None:
    """Raise ValueError when a result image has no source header."""
    missing = [image.sop_instance_uid for image in images if image.sop_instance_uid not in sources]
    if missing:
        raise ValueError(f"sources lack headers for SOP Instance UIDs {missing}")

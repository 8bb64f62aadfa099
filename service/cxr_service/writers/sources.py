"""Source headers made fit to copy into our outputs: strict when writing, tolerant when reading.

The writers copy patient, study, equipment and image attributes from the source images. A
hospital's headers hold whatever its modalities wrote: dates with dashes, a WindowWidth of 0,
``PixelSpacing`` of ``0\\0``, accession numbers longer than SH allows, person names in the
retired single-component form, a Specific Character Set whose first value is empty (usual in
Japan). :func:`writable_source` returns a copy of a header in which

- every text value is checked against its VR (length, characters, format) and its value
  multiplicity against the data dictionary;
- a few attributes get meaning-preserving repairs: dates and times written with separators lose
  them, a lower-case code string is upper-cased, a person name without ``^`` gets a trailing
  ``^`` (the whole value is the family name, as the standard reads it);
- attributes the writers interpret are checked for meaning: pixel spacings must be two values
  > 0, windows must have a width >= 1 (> 0 for LINEAR_EXACT and SIGMOID), VOI LUTs must match
  their descriptor, Patient Sex and Patient Orientation must use their defined terms;
- everything else that is invalid is left out (a Type 2 attribute then becomes empty in the
  output); private, unknown-VR and group-length elements are always left out;
- text is kept decoded, and the copy declares ``ISO_IR 192`` (UTF-8) as its Specific Character
  Set whenever a value is not ASCII, so every source character set, ISO 2022 code extensions
  included, is written in one repertoire every reader supports.

The UIDs that link our outputs to the source (SOP Class, SOP Instance, Series and Study
Instance UID) and the Patient ID are copied unchanged even when invalid: changing them would
detach the outputs from the study (Orthanc, for one, files an instance under
PatientID + StudyInstanceUID). Every change is returned as a :class:`Repair`, whose reason never
contains the value (values can be patient identifiers).
"""

from __future__ import annotations

import datetime
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pydicom
from pydicom.datadict import dictionary_VM, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from cxr_service import charsets  # noqa: F401 - corrects pydicom's ISO 2022 IR 58 decoding

logger = logging.getLogger(__name__)

UTF8_CHARACTER_SET = "ISO_IR 192"

# Attributes copied verbatim: they link the outputs to the source study and its instances.
VERBATIM_KEYWORDS: frozenset[str] = frozenset(
    {"SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID"}
)
_PIXEL_DATA_TAGS = frozenset(Tag(k) for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
_CHARSET_TAG = Tag("SpecificCharacterSet")
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_MAX_LENGTH = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240,
               "SH": 16, "ST": 1024, "TM": 14, "UI": 64}  # fmt: skip
# VRs whose value may hold several lines (and no value delimiter).
_MULTILINE_VRS = frozenset({"LT", "ST", "UT"})
_CS_PATTERN = re.compile(r"^[A-Z0-9 _]*$")
_AS_PATTERN = re.compile(r"^\d{3}[DWMY]$")
_DS_PATTERN = re.compile(r"^ *[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)? *$")
_IS_PATTERN = re.compile(r"^ *[+-]?\d+ *$")
_UID_PATTERN = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*$")
_TM_PATTERN = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
_DT_PATTERN = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
_SEPARATED_DATE = re.compile(r"^(\d{4})[-./](\d{2})[-./](\d{2})$")
_SEPARATED_TIME = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_ORIENTATION = re.compile(r"^[APLRHF]{1,3}$")
_DEFINED_TERMS: Mapping[str, frozenset[str]] = {
    "PatientSex": frozenset({"M", "F", "O"}),
    "Laterality": frozenset({"R", "L"}),
    "ImageLaterality": frozenset({"R", "L", "U", "B"}),
    "VOILUTFunction": frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"}),
    "PresentationLUTShape": frozenset({"IDENTITY", "INVERSE"}),
}
_WINDOW_KEYWORDS = ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation")


@dataclass(frozen=True)
class Repair:
    """One attribute of a source header that was changed or left out of the outputs."""

    keyword: str
    action: str  # "left out", "repaired" or "copied unchanged"
    reason: str

    def __str__(self) -> str:
        return f"{self.keyword} {self.action}: {self.reason}"


class CheckedHeader(pydicom.Dataset):
    """A header made by :func:`writable_source`. Checking it again changes nothing, so
    :func:`checked_copy` only copies it (one check per source and study, not one per writer)."""


@dataclass(frozen=True, eq=False)
class WritableSource:
    """A source header fit to copy into our outputs, and what was changed to make it so."""

    dataset: pydicom.Dataset
    repairs: tuple[Repair, ...]


def writable_source(ds: pydicom.Dataset) -> WritableSource:
    """A checked copy of ``ds`` (see the module docstring); ``ds`` itself is not modified."""
    out = CheckedHeader()
    repairs: list[Repair] = []
    for tag in list(ds.keys()):
        tag = Tag(tag)
        if tag in _PIXEL_DATA_TAGS or tag == _CHARSET_TAG or tag.is_private or tag.element == 0:
            continue
        keyword = keyword_for_tag(tag) or str(tag)
        try:
            element = ds[tag]
            checked = _checked_element(element, keyword=keyword, repairs=repairs)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, LookupError) as exc:
            # pydicom converts raw values lazily: an undecodable value fails here.
            repairs.append(Repair(keyword, "left out", f"unreadable value ({type(exc).__name__})"))
            continue
        if checked is not None:
            out.add(checked)
    _check_windows(out, repairs)
    _check_voi_luts(out, repairs)
    if any(_is_non_ascii(element) for element in out.iterall()):
        out.SpecificCharacterSet = UTF8_CHARACTER_SET
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    return WritableSource(out, tuple(repairs))


def checked_copy(ds: pydicom.Dataset) -> WritableSource:
    """A copy of ``ds`` the caller may add attributes to: a :class:`CheckedHeader` is copied
    as it is (its elements shared, as :func:`writable_source` shares them), anything else is
    checked first."""
    if not isinstance(ds, CheckedHeader):
        return writable_source(ds)
    out = CheckedHeader()
    for element in ds:
        out.add(element)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    return WritableSource(out, ())


def writable_sources(sources: Mapping[str, pydicom.Dataset]) -> dict[str, pydicom.Dataset]:
    """:func:`writable_source` of every header, logging each repair once (UIDs and keywords only)."""
    prepared = {}
    for uid, ds in sources.items():
        source = writable_source(ds)
        for repair in source.repairs:
            logger.warning("source image %s: %s", uid, repair)
        prepared[uid] = source.dataset
    return prepared


# --- one element ---------------------------------------------------------------------------


def _checked_element(element: DataElement, *, keyword: str, repairs: list[Repair]) -> DataElement | None:
    vr = element.VR
    if vr in ("UN", None):
        return None  # neither we nor highdicom can interpret it
    if vr == "SQ":
        # Items are only read by the writers that need them (VOI LUTs are checked). Their text is
        # decoded now, with the source's character set, before the copy declares its own.
        for item in element.value:
            for _ in item.iterall():
                pass
        return element
    if vr not in _TEXT_VRS:
        return element
    values = _text_values(element.value)
    if keyword in VERBATIM_KEYWORDS:
        problem = _values_problem(values, vr=vr, keyword=keyword, tag=element.tag)
        if problem is not None:
            repairs.append(Repair(keyword, "copied unchanged", f"{problem} (it links the outputs to the source)"))
        return element
    if not values:
        return DataElement(element.tag, vr, None)
    repaired, what = _repaired(values, vr=vr, keyword=keyword)
    problem = _values_problem(repaired, vr=vr, keyword=keyword, tag=element.tag)
    if problem is not None:
        repairs.append(Repair(keyword, "left out", problem))
        return None
    if what is not None:
        repairs.append(Repair(keyword, "repaired", what))
    value: object = repaired[0] if len(repaired) == 1 else repaired
    return DataElement(element.tag, vr, value)


def _text_values(value: object) -> list[str]:
    if value is None or value == "":
        return []
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    return ["" if v is None else str(v) for v in items]


def _repaired(values: list[str], *, vr: str, keyword: str) -> tuple[list[str], str | None]:
    """Meaning-preserving repairs; returns the values and what was repaired (None: nothing)."""
    fixes: list[str] = []
    out = []
    for value in values:
        new = value
        if vr in ("CS", "DA", "TM", "DT", "DS", "IS", "AS", "UI", "AE"):
            new = new.strip()
        if vr == "CS" and new != new.upper() and _CS_PATTERN.match(new.upper()):
            new, fix = new.upper(), "lower-case code string upper-cased"
            fixes.append(fix)
        elif vr == "DA" and (match := _SEPARATED_DATE.match(new)):
            new = "".join(match.groups())
            fixes.append("separators removed from the date")
        elif vr == "TM" and (match := _SEPARATED_TIME.match(new)):
            new = "".join(g for g in match.groups() if g)
            fixes.append("separators removed from the time")
        elif vr == "PN" and any(group and "^" not in group for group in new.split("=")):
            new = "=".join(group + "^" if group and "^" not in group else group for group in new.split("="))
            fixes.append("single-component person name given its component delimiter")
        out.append(new)
    return out, ("; ".join(sorted(set(fixes))) if fixes else None)


def _values_problem(values: list[str], *, vr: str, keyword: str, tag: BaseTag) -> str | None:
    """Why the values cannot be written as ``vr`` (None: they can). Never names the value."""
    vm_problem = _vm_problem(len(values), tag=tag)
    if vm_problem is not None:
        return vm_problem
    for index, value in enumerate(values, start=1):
        problem = _value_problem(value, vr=vr)
        if problem is None and keyword in _DEFINED_TERMS and value and value not in _DEFINED_TERMS[keyword]:
            problem = "not one of its defined terms"
        if problem is None and keyword == "PatientOrientation" and not _ORIENTATION.match(value):
            problem = "not a patient direction (A, P, L, R, H, F)"
        if problem is not None:
            return problem if len(values) == 1 else f"value {index}: {problem}"
    if keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        numbers = [float(v) for v in values]
        if len(numbers) != 2 or not all(math.isfinite(v) and v > 0 for v in numbers):
            return "pixel spacing must be two values greater than zero"
    return None


def _vm_problem(count: int, *, tag: BaseTag) -> str | None:
    try:
        vm = dictionary_VM(tag)
    except KeyError:
        return None
    low, high, step = _parse_vm(vm)
    if count < low or (high is not None and count > high) or (step > 1 and count % step):
        return f"{count} values where the dictionary allows {vm}"
    return None


def _parse_vm(vm: str) -> tuple[int, int | None, int]:
    """(minimum, maximum or None for n, step) of a dictionary VM such as 1, 1-3, 2-n, 2-2n."""
    if "-" not in vm:
        return int(vm), int(vm), 1
    low, high = vm.split("-", 1)
    if high.endswith("n"):
        step = int(high[:-1] or 1)
        return int(low), None, step
    return int(low), int(high), 1


def _value_problem(value: str, *, vr: str) -> str | None:
    if value == "":
        return None
    limit = _MAX_LENGTH.get(vr)
    if limit is not None and len(value) > limit:
        return f"longer than {vr} allows ({limit} characters)"
    if vr in _MULTILINE_VRS:
        return "control characters" if _CONTROL_MULTILINE.search(value) else None
    if _CONTROL.search(value) or "\\" in value:
        return "control characters or a value delimiter"
    check: Callable[[str], str | None] | None = _VALUE_CHECKS.get(vr)
    return check(value) if check is not None else None


def _cs_problem(value: str) -> str | None:
    return None if _CS_PATTERN.match(value) else "characters not allowed in a code string"


def _da_problem(value: str) -> str | None:
    if len(value) != 8 or not value.isdigit():
        return "not a date (YYYYMMDD)"
    try:
        datetime.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return "not a calendar date"
    return None


def _tm_problem(value: str) -> str | None:
    match = _TM_PATTERN.match(value)
    if match is None:
        return "not a time (HHMMSS.FFFFFF)"
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups()[:3])
    if hours > 23 or minutes > 59 or seconds > 60:
        return "not a time of day"
    return None


def _dt_problem(value: str) -> str | None:
    if not _DT_PATTERN.match(value):
        return "not a date-time"
    date = value[:8]
    return _da_problem(date) if len(date) == 8 else None


def _ds_problem(value: str) -> str | None:
    if not _DS_PATTERN.match(value) or not math.isfinite(float(value)):
        return "not a decimal number"
    return None


def _is_problem(value: str) -> str | None:
    if not _IS_PATTERN.match(value) or not -(2**31) <= int(value) < 2**31:
        return "not an integer"
    return None


def _ui_problem(value: str) -> str | None:
    return None if _UID_PATTERN.match(value) else "not a UID"


def _as_problem(value: str) -> str | None:
    return None if _AS_PATTERN.match(value) else "not an age string"


def _pn_problem(value: str) -> str | None:
    groups = value.split("=")
    if len(groups) > 3:
        return "more than three component groups"
    for group in groups:
        if len(group) > 64:
            return "a component group longer than 64 characters"
        if group.count("^") > 4:
            return "more than five name components"
        if group and "^" not in group:
            return "retired person name form (no component delimiter)"
    return None


_VALUE_CHECKS: Mapping[str, Callable[[str], str | None]] = {
    "CS": _cs_problem,
    "DA": _da_problem,
    "TM": _tm_problem,
    "DT": _dt_problem,
    "DS": _ds_problem,
    "IS": _is_problem,
    "UI": _ui_problem,
    "AS": _as_problem,
    "PN": _pn_problem,
}


# --- attributes interpreted together --------------------------------------------------------


def _check_windows(ds: pydicom.Dataset, repairs: list[Repair]) -> None:
    """Keep only the window pairs a presentation state may carry (width >= 1 for LINEAR)."""
    if "WindowCenter" not in ds and "WindowWidth" not in ds:
        return
    centers = _numbers(ds.get("WindowCenter"))
    widths = _numbers(ds.get("WindowWidth"))
    explanations = _text_values(ds.get("WindowCenterWidthExplanation"))
    function = str(ds.get("VOILUTFunction", "") or "LINEAR")
    minimum_ok: Callable[[float], bool] = (lambda w: w >= 1.0) if function == "LINEAR" else (lambda w: w > 0.0)
    if len(centers) != len(widths):
        keep: list[int] = []
        reason = "WindowCenter and WindowWidth have different numbers of values"
    else:
        keep = [i for i, (c, w) in enumerate(zip(centers, widths, strict=True)) if math.isfinite(c) and math.isfinite(w) and minimum_ok(w)]
        reason = f"window width below the minimum of {function} or not a number"
    if len(keep) == len(centers) == len(widths):
        return
    for keyword in _WINDOW_KEYWORDS:
        if keyword in ds:
            del ds[keyword]
    if keep:
        ds.WindowCenter = [_ds(centers[i]) for i in keep] if len(keep) > 1 else _ds(centers[keep[0]])
        ds.WindowWidth = [_ds(widths[i]) for i in keep] if len(keep) > 1 else _ds(widths[keep[0]])
        if len(explanations) == len(centers):
            kept = [explanations[i] for i in keep]
            ds.WindowCenterWidthExplanation = kept if len(kept) > 1 else kept[0]
        repairs.append(Repair("WindowWidth", "repaired", f"{len(centers) - len(keep)} window(s) left out: {reason}"))
    else:
        if "VOILUTFunction" in ds and "VOILUTSequence" not in ds:
            del ds["VOILUTFunction"]
        repairs.append(Repair("WindowWidth", "left out", reason))


def _numbers(value: object) -> list[float]:
    out = []
    for text in _text_values(value):
        try:
            out.append(float(text))
        except ValueError:
            out.append(math.nan)
    return out


def _ds(value: float) -> str:
    text = repr(float(value))
    text = text[:-2] if text.endswith(".0") else text
    return text if len(text) <= 16 else f"{value:.10g}"


def _check_voi_luts(ds: pydicom.Dataset, repairs: list[Repair]) -> None:
    """Keep only VOI LUT items whose data matches their descriptor."""
    items = ds.get("VOILUTSequence")
    if items is None:
        return
    usable = [item for item in items if _lut_problem(item) is None]
    if len(usable) == len(items):
        return
    problems = sorted({p for item in items if (p := _lut_problem(item)) is not None})
    if usable:
        ds.VOILUTSequence = usable
        repairs.append(Repair("VOILUTSequence", "repaired", f"{len(items) - len(usable)} item(s) left out: {', '.join(problems)}"))
    else:
        del ds["VOILUTSequence"]
        repairs.append(Repair("VOILUTSequence", "left out", ", ".join(problems) or "no item"))


def _lut_problem(item: pydicom.Dataset) -> str | None:
    try:
        descriptor = [int(v) for v in item.LUTDescriptor]
        data = item.LUTData
    except (AttributeError, TypeError, ValueError, KeyError):
        return "LUT Descriptor or LUT Data missing or unreadable"
    if len(descriptor) != 3:
        return "LUT Descriptor must have three values"
    entries = descriptor[0] or 65536
    if not 1 <= descriptor[2] <= 16:
        return "LUT bits per entry outside 1-16"
    if isinstance(data, bytes):
        matches = len(data) in (entries, 2 * entries)
    else:
        matches = len(data if isinstance(data, (list, tuple, MultiValue)) else [data]) == entries
    return None if matches else "LUT Data length does not match the LUT Descriptor"


def _is_non_ascii(element: DataElement) -> bool:
    if element.VR not in _TEXT_VRS:
        return False
    return any(not v.isascii() for v in _text_values(element.value))

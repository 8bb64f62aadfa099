"""The SR's measurement groups (TID 1410 per image and box, TID 1501 per study), built as plain
pydicom datasets.

An SR holds one TID 1410 group per analysed image (its lungs) and one per opacity box, about
110 data elements each. highdicom's template classes build and check one in about 6 ms on a
2-core CPU, most of it reading back and hashing what they have just written; an image with 20
boxes spent over 100 ms there. :class:`GroupBuilder` writes the same data elements, in the same
order, directly (well under a millisecond a group): ``tests/service/test_sr_items.py`` encodes
its groups and highdicom's ``PlanarROIMeasurementsAndQualitativeEvaluations`` for the same
inputs and compares the bytes; the same for the study's TID 1501 group against
``MeasurementsAndQualitativeEvaluations``. The document-level parts (library, observation
context, evaluations) stay highdicom's.

The groups are plain :class:`pydicom.Dataset` items, the way pydicom reads any dataset from a
file; ``highdicom.sr.Comprehensive3DSR.from_dataset`` on the written document gives typed ones.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DS

from cxr_service import codes

# Data element tags (keywords from PS3.6), set directly: Dataset.__setattr__ looks the keyword up
# on every call.
_CONCEPT_NAME_CODE_SEQUENCE = 0x0040A043
_CONCEPT_CODE_SEQUENCE = 0x0040A168
CONTENT_SEQUENCE = 0x0040A730
_CONTENT_TEMPLATE_SEQUENCE = 0x0040A504
_CONTINUITY_OF_CONTENT = 0x0040A050
_FLOATING_POINT_VALUE = 0x0040A161
_GRAPHIC_DATA = 0x00700022
_GRAPHIC_TYPE = 0x00700023
_MAPPING_RESOURCE = 0x00080105
_MEASURED_VALUE_SEQUENCE = 0x0040A300
_MEASUREMENT_UNITS_CODE_SEQUENCE = 0x004008EA
_NUMERIC_VALUE = 0x0040A30A
_REFERENCED_SOP_CLASS_UID = 0x00081150
_REFERENCED_SOP_INSTANCE_UID = 0x00081155
_REFERENCED_SOP_SEQUENCE = 0x00081199
_RELATIONSHIP_TYPE = 0x0040A010
_TEMPLATE_IDENTIFIER = 0x0040DB00
_TEXT_VALUE = 0x0040A160
_UID = 0x0040A124
_VALUE_TYPE = 0x0040A040

_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS.value
_HAS_CONCEPT_MOD = hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD.value
_HAS_OBS_CONTEXT = hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT.value
_SELECTED_FROM = hd.sr.RelationshipTypeValues.SELECTED_FROM.value


@dataclass(frozen=True)
class NumericMeasurement:
    """A TID 300 measurement without qualifiers: concept name, value and UCUM unit."""

    name: Code
    value: float
    unit: Code


@dataclass(frozen=True)
class PlanarGroup:
    """What one TID 1410 group says: a tracked, closed POLYLINE region of a source image, the
    finding there, and its measurements and coded evaluations (name, value)."""

    tracking_identifier: str
    tracking_uid: str
    finding_type: Code
    graphic_data: np.ndarray
    sop_class_uid: str
    sop_instance_uid: str
    finding_sites: tuple[Code, ...] = ()
    measurements: tuple[NumericMeasurement, ...] = ()
    qualitative_evaluations: tuple[tuple[Code, Code], ...] = ()


@dataclass(frozen=True)
class StudyGroup:
    """What one TID 1501 group says of a set of source images (SOP Class UID, SOP Instance
    UID): a tracked finding, its measurements and coded evaluations."""

    tracking_identifier: str
    tracking_uid: str
    finding_type: Code
    source_images: tuple[tuple[str, str], ...]
    measurements: tuple[NumericMeasurement, ...] = ()
    qualitative_evaluations: tuple[tuple[Code, Code], ...] = ()


def shared_concept(code: Code) -> hd.sr.CodedConcept:
    """highdicom's coded concept of ``code``, made once and shared, read-only, by every item of
    every SR that uses it (about 0.15 ms each to make, some 20 different ones per document).

    Keyed by every field: two Codes that differ only in meaning (or an SRT code and its SCT
    equivalent) are equal to pydicom, not to the document.
    """
    return _concept(code.value, code.scheme_designator, code.meaning, code.scheme_version)


@functools.lru_cache(maxsize=512)
def _concept(value: str, scheme_designator: str, meaning: str, scheme_version: str | None) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept.from_code(
        Code(value=value, scheme_designator=scheme_designator, meaning=meaning, scheme_version=scheme_version)
    )


class GroupBuilder:
    """Builds the :class:`PlanarGroup` and :class:`StudyGroup` items of one SR: each coded
    concept is a :func:`shared_concept`; ``algorithm_items`` (TID 4019) go into every group, as
    highdicom's templates put them."""

    def __init__(self, *, algorithm_items: Sequence[pydicom.Dataset]) -> None:
        self.algorithm_items = list(algorithm_items)

    @staticmethod
    def concept(code: Code) -> hd.sr.CodedConcept:
        return shared_concept(code)

    def _item(self, *, value_type: str, name: Code, relationship: str) -> pydicom.Dataset:
        item = pydicom.Dataset()
        item[_RELATIONSHIP_TYPE] = DataElement(_RELATIONSHIP_TYPE, "CS", relationship)
        item[_VALUE_TYPE] = DataElement(_VALUE_TYPE, "CS", value_type)
        item[_CONCEPT_NAME_CODE_SEQUENCE] = DataElement(_CONCEPT_NAME_CODE_SEQUENCE, "SQ", [self.concept(name)])
        return item

    def _code(self, *, name: Code, value: Code, relationship: str) -> pydicom.Dataset:
        item = self._item(value_type="CODE", name=name, relationship=relationship)
        item[_CONCEPT_CODE_SEQUENCE] = DataElement(_CONCEPT_CODE_SEQUENCE, "SQ", [self.concept(value)])
        return item

    def _num(self, measurement: NumericMeasurement) -> pydicom.Dataset:
        if not isinstance(measurement.value, float):
            raise TypeError(f"measurement {measurement.name.meaning!r}: value must be a float, got {type(measurement.value).__name__}")
        value = pydicom.Dataset()
        value[_MEASUREMENT_UNITS_CODE_SEQUENCE] = DataElement(
            _MEASUREMENT_UNITS_CODE_SEQUENCE, "SQ", [self.concept(measurement.unit)]
        )
        value[_FLOATING_POINT_VALUE] = DataElement(_FLOATING_POINT_VALUE, "FD", measurement.value)
        value[_NUMERIC_VALUE] = DataElement(_NUMERIC_VALUE, "DS", DS(measurement.value, auto_format=True))
        item = self._item(value_type="NUM", name=measurement.name, relationship=_CONTAINS)
        item[_MEASURED_VALUE_SEQUENCE] = DataElement(_MEASURED_VALUE_SEQUENCE, "SQ", [value])
        return item

    def _image(self, *, name: Code, relationship: str, sop_class_uid: str, sop_instance_uid: str) -> pydicom.Dataset:
        reference = pydicom.Dataset()
        reference[_REFERENCED_SOP_CLASS_UID] = DataElement(_REFERENCED_SOP_CLASS_UID, "UI", sop_class_uid)
        reference[_REFERENCED_SOP_INSTANCE_UID] = DataElement(_REFERENCED_SOP_INSTANCE_UID, "UI", sop_instance_uid)
        item = self._item(value_type="IMAGE", name=name, relationship=relationship)
        item[_REFERENCED_SOP_SEQUENCE] = DataElement(_REFERENCED_SOP_SEQUENCE, "SQ", [reference])
        return item

    def _region(self, group: PlanarGroup) -> pydicom.Dataset:
        source = self._image(
            name=codes.SOURCE,
            relationship=_SELECTED_FROM,
            sop_class_uid=group.sop_class_uid,
            sop_instance_uid=group.sop_instance_uid,
        )
        points = np.asarray(group.graphic_data, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
            raise ValueError(f"graphic_data of {group.tracking_identifier!r} must be (n >= 2, 2) points, got shape {points.shape}")
        item = self._item(value_type="SCOORD", name=dcm_codes.DCM.ImageRegion, relationship=_CONTAINS)
        item[CONTENT_SEQUENCE] = DataElement(CONTENT_SEQUENCE, "SQ", [source])
        item[_GRAPHIC_DATA] = DataElement(_GRAPHIC_DATA, "FL", points.ravel().tolist())
        item[_GRAPHIC_TYPE] = DataElement(_GRAPHIC_TYPE, "CS", hd.sr.GraphicTypeValues.POLYLINE.value)
        return item

    def _group(
        self, group: PlanarGroup | StudyGroup, *, template_id: str, finding_sites: Sequence[Code], last: Sequence[pydicom.Dataset]
    ) -> pydicom.Dataset:
        """A Measurement Group container in highdicom's order: tracking, finding, sites,
        algorithm, measurements, evaluations, then ``last`` (the region, or the source images)."""
        tracking = self._item(value_type="TEXT", name=dcm_codes.DCM.TrackingIdentifier, relationship=_HAS_OBS_CONTEXT)
        tracking[_TEXT_VALUE] = DataElement(_TEXT_VALUE, "UT", group.tracking_identifier)
        uid = self._item(value_type="UIDREF", name=dcm_codes.DCM.TrackingUniqueIdentifier, relationship=_HAS_OBS_CONTEXT)
        uid[_UID] = DataElement(_UID, "UI", group.tracking_uid)
        content = [
            tracking,
            uid,
            self._code(name=dcm_codes.DCM.Finding, value=group.finding_type, relationship=_CONTAINS),
            *(self._code(name=dcm_codes.SCT.FindingSite, value=site, relationship=_HAS_CONCEPT_MOD) for site in finding_sites),
            *self.algorithm_items,
            *(self._num(measurement) for measurement in group.measurements),
            *(self._code(name=name, value=value, relationship=_CONTAINS) for name, value in group.qualitative_evaluations),
            *last,
        ]
        template = pydicom.Dataset()
        template[_MAPPING_RESOURCE] = DataElement(_MAPPING_RESOURCE, "CS", "DCMR")
        template[_TEMPLATE_IDENTIFIER] = DataElement(_TEMPLATE_IDENTIFIER, "CS", template_id)
        container = self._item(value_type="CONTAINER", name=dcm_codes.DCM.MeasurementGroup, relationship=_CONTAINS)
        container[_CONTINUITY_OF_CONTENT] = DataElement(_CONTINUITY_OF_CONTENT, "CS", "CONTINUOUS")
        container[_CONTENT_TEMPLATE_SEQUENCE] = DataElement(_CONTENT_TEMPLATE_SEQUENCE, "SQ", [template])
        container[CONTENT_SEQUENCE] = DataElement(CONTENT_SEQUENCE, "SQ", content)
        return container

    def planar_group(self, group: PlanarGroup) -> pydicom.Dataset:
        """The TID 1410 Measurement Group container of ``group`` (relationship CONTAINS)."""
        return self._group(group, template_id="1410", finding_sites=group.finding_sites, last=[self._region(group)])

    def study_group(self, group: StudyGroup) -> pydicom.Dataset:
        """The TID 1501 Measurement Group container of ``group`` (relationship CONTAINS)."""
        return self._group(
            group,
            template_id="1501",
            finding_sites=(),
            last=[
                self._image(
                    name=codes.SOURCE_OF_MEASUREMENT,
                    relationship=_CONTAINS,
                    sop_class_uid=sop_class_uid,
                    sop_instance_uid=sop_instance_uid,
                )
                for sop_class_uid, sop_instance_uid in group.source_images
            ],
        )

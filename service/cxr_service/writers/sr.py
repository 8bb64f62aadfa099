"""TID 1500 Measurement Report (Comprehensive 3D SR) of a study result.

Layout, chosen so that OHIF's ``dicom-sr`` extension displays every box and never meets an item
it cannot parse (it reads only the Image Library and the Imaging Measurements container, and
expects each group there to be a planar ROI with a tracking identifier and tracking UID)::

    Imaging Measurement Report (DCM 126000, TID 1500), device observer = the algorithm
      Image Library: every CR/DX source image whose header is given
      Imaging Measurements (left out when no image was analysed)
        per analysed image, TID 1410 "lungs": closed 5-point POLYLINE around the lung box,
          Image View = frontal, view probabilities, opacity percent of lung area (UCUM %),
          out-of-distribution score (99CXR CXR011, UCUM 1) when the weights compute one
        per opacity, TID 1410: closed 5-point POLYLINE, Finding = Opacity (DCM 112001),
          Finding Site = Lung, Certainty of Finding (DCM 111012, UCUM 1)
      Derived Imaging Measurements
        TID 1501 study group: RSNA COVID-19 appearance class and its four probabilities,
          source images = the analysed images
      Qualitative Evaluations
        per skipped image: TEXT "Not analysed" = reason, INFERRED FROM the image (an instance
          whose UIDs cannot be referenced, or that has no SOP Instance UID, gets the TEXT alone)
        with demo weights: TEXT "Demo weights - not for clinical use"
        the triage: CODE Priority (SCT 260870009) = Urgent / High priority / Routine (SCT), or
          99CXR CXR012 for a study none of whose images could be analysed

Every instance of the study is in the SR, rejected ones included: their headers (when they could
be read) give the patient and study attributes, so a study whose images were all rejected still
gets an SR saying why.
"""

from __future__ import annotations

import datetime
import functools
import logging
import re
from collections.abc import Mapping

import highdicom as hd
import pydicom
from cxr_models.records import STUDY_LABELS, VIEWS
from pydicom.dataelem import DataElement
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

from cxr_service import codes
from cxr_service.results import AlgorithmInfo, ImageResult, StudyResult
from cxr_service.uids import KIND_SR, derive_uid, device_uid, instance_uid, series_uid
from cxr_service.writers.common import (
    NOT_FOR_CLINICAL_USE,
    SERIES_NUMBERS,
    check_sources,
    clip_box,
    contributing_equipment,
    creation_datetime,
    cxr_coding_scheme,
    finalize,
    image_shape,
    model_parameters,
    rectangle,
    region_box,
    series_description,
    source_header,
)
from cxr_service.writers.sr_items import CONTENT_SEQUENCE, GroupBuilder, NumericMeasurement, PlanarGroup, StudyGroup

logger = logging.getLogger(__name__)

STUDY_TRACKING_IDENTIFIER = "CXR AI study classification"
# The SOP classes the pipeline analyses; other (rejected) instances are referenced as COMPOSITE.
_IMAGE_SOP_CLASSES = frozenset(
    {
        pydicom.uid.ComputedRadiographyImageStorage,
        pydicom.uid.DigitalXRayImageStorageForPresentation,
        pydicom.uid.DigitalXRayImageStorageForProcessing,
    }
)
_MODALITY_CODES = {"CR": dcm_codes.DCM.ComputedRadiography, "DX": dcm_codes.DCM.DigitalRadiography}
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _is_uid(value: str | None) -> bool:
    return bool(value) and len(value) <= 64 and _UID_PATTERN.match(value) is not None


def _referenceable(image: ImageResult) -> bool:
    """Whether an SR can reference the instance: valid SOP Class, SOP Instance and Series UIDs."""
    return all(_is_uid(uid) for uid in (image.sop_instance_uid, image.series_instance_uid, image.sop_class_uid))


# The algorithm identification and observation context depend on the algorithm alone: built
# once per algorithm (3.2 and 2.4 ms a document) and shared, read-only, by every SR, as one SR
# shares its coded concepts.


@functools.lru_cache(maxsize=16)
def _algorithm_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[f"{stage} model UID {uid}" for stage, uid in model_parameters(algorithm).items()] or None,
        family=codes.ARTIFICIAL_INTELLIGENCE,
        manufacturer=algorithm.manufacturer,
    )


@functools.lru_cache(maxsize=16)
def _observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(algorithm_name=algorithm.name, model_version=algorithm.version),
        name=algorithm.name,
        manufacturer_name=algorithm.manufacturer,
        model_name=f"{algorithm.name} {algorithm.version}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.DCM.Device,
            observer_identifying_attributes=device,
        )
    )


def _lung_group(image: ImageResult, ds: pydicom.Dataset, *, number: int, result: StudyResult) -> PlanarGroup:
    """TID 1410 of an analysed image: its lung region, view and opacity percent."""
    measurements = []
    if image.opacity_percent is not None:
        measurements.append(
            NumericMeasurement(name=codes.OPACITY_PERCENT_OF_LUNG, value=float(image.opacity_percent), unit=codes.UCUM_PERCENT)
        )
    if image.ood_score is not None:
        measurements.append(NumericMeasurement(name=codes.OOD_SCORE, value=float(image.ood_score), unit=codes.UCUM_PROBABILITY))
    for view in VIEWS:
        if view in image.view_probabilities:
            measurements.append(
                NumericMeasurement(
                    name=codes.VIEW_CODES[view], value=float(image.view_probabilities[view]), unit=codes.UCUM_PROBABILITY
                )
            )
    return PlanarGroup(
        tracking_identifier=f"Lungs, image {number}",
        tracking_uid=derive_uid(source_uid=image.sop_instance_uid, model_version=result.algorithm.version, kind="tracking/lungs"),
        finding_type=codes.LUNG,
        graphic_data=rectangle(region_box(image, ds)),
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        measurements=tuple(measurements),
        qualitative_evaluations=((codes.IMAGE_VIEW, codes.VIEW_CODES[image.view]),),
    )


def _opacity_groups(image: ImageResult, ds: pydicom.Dataset, *, number: int, result: StudyResult) -> list[PlanarGroup]:
    """TID 1410 of each opacity box of an analysed image (clipped to the image)."""
    rows, columns = image_shape(ds)
    return [
        PlanarGroup(
            tracking_identifier=f"Opacity {index + 1}, image {number}",
            tracking_uid=derive_uid(
                source_uid=image.sop_instance_uid, model_version=result.algorithm.version, kind="tracking/opacity", index=index
            ),
            finding_type=codes.OPACITY,
            graphic_data=rectangle(clip_box(opacity.box, rows=rows, columns=columns)),
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
            finding_sites=(codes.LUNG,),
            measurements=(
                NumericMeasurement(name=codes.CERTAINTY_OF_FINDING, value=float(opacity.score), unit=codes.UCUM_PROBABILITY),
            ),
        )
        for index, opacity in enumerate(image.opacities)
    ]


def _study_group(result: StudyResult, headers: Mapping[str, pydicom.Dataset]) -> StudyGroup:
    """TID 1501 of the study: its class and the four probabilities, from the analysed images."""
    probabilities = result.study_probabilities or {}
    return StudyGroup(
        tracking_identifier=STUDY_TRACKING_IDENTIFIER,
        tracking_uid=derive_uid(source_uid=result.study_instance_uid, model_version=result.algorithm.version, kind="tracking/study"),
        finding_type=codes.PNEUMONIA,
        measurements=tuple(
            NumericMeasurement(name=codes.STUDY_LABEL_CODES[label], value=float(probabilities[label]), unit=codes.UCUM_PROBABILITY)
            for label in STUDY_LABELS
            if label in probabilities
        ),
        qualitative_evaluations=((codes.COVID_APPEARANCE, codes.STUDY_LABEL_CODES[result.study_label]),),
        source_images=tuple(
            (ds.SOPClassUID, ds.SOPInstanceUID) for ds in (headers[image.sop_instance_uid] for image in result.analysed_images)
        ),
    )


def _library_descriptors(ds: pydicom.Dataset) -> hd.sr.ContentSequence:
    """TID 1602 descriptors of a library entry; the TID 1603 projection descriptors need a
    two-valued Patient Orientation and Imager Pixel Spacing, optional in CR, so without them
    only the modality and matrix size are given."""
    orientation = ds.get("PatientOrientation")
    spacing = ds.get("ImagerPixelSpacing")
    if orientation is not None and len(orientation) == 2 and spacing is not None and len(spacing) == 2:
        return hd.sr.ImageLibraryEntryDescriptors(ds)
    modality = str(ds.get("Modality", ""))
    modality_code = _MODALITY_CODES.get(modality, Code(modality, "DCM", modality))
    acquisition = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    return hd.sr.ContentSequence(
        [
            hd.sr.CodeContentItem(name=dcm_codes.DCM.Modality, value=modality_code, relationship_type=acquisition),
            hd.sr.NumContentItem(
                name=dcm_codes.DCM.PixelDataRows,
                value=int(ds.Rows),
                unit=codes.UCUM_PIXELS,
                relationship_type=acquisition,
            ),
            hd.sr.NumContentItem(
                name=dcm_codes.DCM.PixelDataColumns,
                value=int(ds.Columns),
                unit=codes.UCUM_PIXELS,
                relationship_type=acquisition,
            ),
        ]
    )


def _is_library_image(ds: pydicom.Dataset | None) -> bool:
    return ds is not None and ds.get("SOPClassUID") in _IMAGE_SOP_CLASSES and "Rows" in ds and "Columns" in ds


def _image_library(datasets: list[pydicom.Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library with one group holding every source image."""
    entries = []
    for ds in datasets:
        entry = hd.sr.ImageContentItem(
            name=codes.SOURCE,
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        entry.ContentSequence = _library_descriptors(ds)
        entries.append(entry)
    group = _container(dcm_codes.DCM.ImageLibraryGroup, entries)
    return _container(dcm_codes.DCM.ImageLibrary, [group])


def _container(name: Code, items: list[hd.sr.ContentItem]) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(name=name, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    if items:
        container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _groups_container(name: Code, groups: list[pydicom.Dataset]) -> hd.sr.ContainerContentItem:
    """A container of measurement groups: the groups are plain datasets (sr_items), set as the
    data element, which highdicom's ContentSequence (typed items only) would refuse."""
    container = _container(name, [])
    container[CONTENT_SEQUENCE] = DataElement(CONTENT_SEQUENCE, "SQ", groups)
    return container


def _reference(image: ImageResult) -> hd.sr.ContentItem:
    """INFERRED FROM reference to a skipped instance: IMAGE for CR/DX, else COMPOSITE."""
    item_type = hd.sr.ImageContentItem if image.sop_class_uid in _IMAGE_SOP_CLASSES else hd.sr.CompositeContentItem
    return item_type(
        name=codes.SOURCE_OF_MEASUREMENT,
        referenced_sop_class_uid=image.sop_class_uid,
        referenced_sop_instance_uid=image.sop_instance_uid,
        relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
    )


def _not_analysed(reason: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=codes.NOT_ANALYSED, value=reason, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _qualitative_evaluations(result: StudyResult) -> list[hd.sr.ContentItem]:
    items: list[hd.sr.ContentItem] = []
    for image in result.skipped_images:
        if _referenceable(image):
            text = _not_analysed(str(image.reason))
            text.ContentSequence = hd.sr.ContentSequence([_reference(image)])
        else:
            where = f"instance {image.sop_instance_uid}" if _is_uid(image.sop_instance_uid) else "an instance"
            text = _not_analysed(f"{image.reason} ({where} without valid Series Instance or SOP Class UID)")
        items.append(text)
    for reason in result.unattributed:
        items.append(_not_analysed(f"{reason} (an instance without SOP Instance UID)"))
    if result.algorithm.demo_weights:
        items.append(
            hd.sr.TextContentItem(
                name=codes.DEMO_WEIGHTS,
                value=NOT_FOR_CLINICAL_USE,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    if result.triage is not None:
        items.append(
            hd.sr.CodeContentItem(
                name=codes.PRIORITY,
                value=codes.TRIAGE_CODES[str(result.triage.priority)],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return items


def _report_content(result: StudyResult, headers: Mapping[str, pydicom.Dataset]) -> hd.sr.ContentSequence:
    algorithm_id = _algorithm_id(result.algorithm)
    builder = GroupBuilder(algorithm_items=algorithm_id)
    groups: list[pydicom.Dataset] = []
    for number, image in enumerate(result.images, start=1):
        if not image.analysed:
            continue
        ds = headers[image.sop_instance_uid]
        groups.append(builder.planar_group(_lung_group(image, ds, number=number, result=result)))
        groups.extend(builder.planar_group(group) for group in _opacity_groups(image, ds, number=number, result=result))

    root = hd.sr.ContainerContentItem(name=codes.IMAGING_MEASUREMENT_REPORT, template_id="1500")
    content = hd.sr.ContentSequence()
    content.extend(hd.sr.LanguageOfContentItemAndDescendants(hd.sr.CodedConcept.from_code(codes.LANGUAGE_EN_US)))
    content.extend(_observation_context(result.algorithm))
    content.append(
        hd.sr.CodeContentItem(
            name=dcm_codes.DCM.ProcedureReported,
            value=codes.PLAIN_CHEST_XRAY,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    # The Image Library lists the images that reached the models (a view was predicted).
    library = [
        ds
        for ds in (headers.get(image.sop_instance_uid) for image in result.images if image.view is not None)
        if _is_library_image(ds)
    ]
    if library:
        content.append(_image_library(library))
    if groups:
        # TID 1500 needs one of Imaging Measurements, Derived Imaging Measurements or Qualitative
        # Evaluations, and a container without groups is not valid (highdicom cannot read it).
        content.append(_groups_container(codes.IMAGING_MEASUREMENTS, groups))
    if result.study_label is not None and result.analysed_images:
        study_group = builder.study_group(_study_group(result, headers))
        content.append(_groups_container(codes.DERIVED_IMAGING_MEASUREMENTS, [study_group]))
    evaluations = _qualitative_evaluations(result)
    if evaluations:
        content.append(_container(codes.QUALITATIVE_EVALUATIONS, evaluations))
    root.ContentSequence = content
    return hd.sr.ContentSequence([root], is_root=True)


def _evidence(result: StudyResult, headers: Mapping[str, pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Evidence for every referenced instance, headers first (highdicom takes patient and study
    from the first; analysed images come before rejected ones); a skipped instance without
    header is described by its UIDs alone."""
    referenced = [image for image in result.images if _referenceable(image)]
    order = sorted(referenced, key=lambda image: (image.view is None, image.sop_instance_uid not in headers))
    evidence = [headers[image.sop_instance_uid] for image in order if image.sop_instance_uid in headers]
    for image in referenced:
        if image.sop_instance_uid not in headers:
            ds = pydicom.Dataset()
            ds.StudyInstanceUID = result.study_instance_uid
            ds.SeriesInstanceUID = image.series_instance_uid
            ds.SOPClassUID = image.sop_class_uid
            ds.SOPInstanceUID = image.sop_instance_uid
            evidence.append(ds)
    return evidence


def _stand_in_root() -> hd.sr.ContainerContentItem:
    """The document's root container without its content: what highdicom's constructor copies,
    parses and searches. The real tree replaces it afterwards (:func:`write_sr`)."""
    root = hd.sr.ContainerContentItem(name=codes.IMAGING_MEASUREMENT_REPORT, template_id="1500")
    root.ContentSequence = hd.sr.ContentSequence([])
    return root


def _check_evidence(root: pydicom.Dataset, evidence: list[pydicom.Dataset]) -> None:
    """ValueError when the tree references an instance the evidence lacks (highdicom's check,
    on the raw tree)."""
    referenced: set[str] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        for item in node.get("ContentSequence", ()):
            if item.get("ValueType") in ("IMAGE", "COMPOSITE") and "ReferencedSOPSequence" in item:
                referenced.add(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
            stack.append(item)
    missing = referenced - {str(ds.SOPInstanceUID) for ds in evidence}
    if missing:
        raise ValueError(f"no evidence for the referenced SOP instances {sorted(missing)}")


def write_sr(
    result: StudyResult,
    sources: Mapping[str, pydicom.Dataset],
    *,
    created: datetime.datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The study's TID 1500 Measurement Report as a Comprehensive 3D SR (one per study).

    ``sources`` maps SOP Instance UID → source header (pixel data not needed); it must hold every
    analysed image and at least one header of the study; skipped images (e.g. rejected at
    ingest) may lack one, and the headers of rejected images supply the patient and study when
    no image could be analysed. ``created`` sets the creation/content date and time; by default it is
    derived from the source study so a re-run gives a byte-identical document.
    """
    check_sources(result.analysed_images, sources)
    headers = {
        image.sop_instance_uid: source_header(sources, image.sop_instance_uid)
        for image in result.images
        if image.sop_instance_uid in sources
    }
    if not headers:
        raise ValueError(f"sources hold no header of study {result.study_instance_uid} (patient data needed)")
    created = creation_datetime(sources) if created is None else created
    algorithm = result.algorithm
    evidence = _evidence(result, headers)
    content = _report_content(result, headers)
    root = content[0]
    _check_evidence(root, evidence)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=_stand_in_root(),
        series_instance_uid=series_uid(
            study_uid=result.study_instance_uid, model_version=algorithm.version, kind=KIND_SR
        ),
        series_number=SERIES_NUMBERS[KIND_SR],
        sop_instance_uid=instance_uid(
            source_uid=result.study_instance_uid, model_version=algorithm.version, kind=KIND_SR
        ),
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description(KIND_SR, demo_weights=algorithm.demo_weights),
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        coding_schemes=[cxr_coding_scheme()],
        contributing_equipment=contributing_equipment(algorithm, created=created),
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
    )
    # highdicom deep-copies and re-parses the content it is given (about two thirds of the
    # writer's time); the tree built above is already typed, so it goes in as it is.
    for element in root:
        sr[element.tag] = element
    sr._content = hd.sr.ContentSequence([root], is_root=True)
    finalize(sr, created=created)
    logger.info(
        "SR %s: %d analysed and %d skipped images of study %s",
        sr.SOPInstanceUID,
        len(result.analysed_images),
        len(result.skipped_images),
        result.study_instance_uid,
    )
    return sr

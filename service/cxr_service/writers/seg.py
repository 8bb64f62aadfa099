"""BINARY Segmentation per analysed image: the lungs and the opacity, in the source geometry.

Segments: 1 = lungs (SCT "Anatomical Structure" / "Lung"), 2 = opacity (SCT "Morphologically
Abnormal Structure" / DCM "Opacity"), each identified by the algorithm (Algorithm Identification
Sequence). The masks are the pipeline's boolean masks in the original image size; one frame per
segment, referencing the source image. A CR/DX source has no plane orientation or position, and
highdicom then derives a segmentation without a frame of reference, as for any 2-D projection
image. Empty segments are kept (a frame of zeros) so that "no opacity" is stated explicitly.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping

import highdicom as hd
import numpy as np
import pydicom

from cxr_service import codes
from cxr_service.results import AlgorithmInfo, ImageResult, StudyResult
from cxr_service.uids import KIND_SEG, derive_uid, instance_uid, series_uid
from cxr_service.writers.common import (
    DEMO_SUFFIX,
    NOT_FOR_CLINICAL_USE,
    SERIES_NUMBERS,
    algorithm_identification_sequence,
    check_sources,
    contributing_equipment,
    creation_datetime,
    finalize,
    image_shape,
    series_description,
    source_header,
)

logger = logging.getLogger(__name__)

LUNG_SEGMENT_LABEL = "Lungs"
OPACITY_SEGMENT_LABEL = "Opacity"
CONTENT_LABEL = "CXR_AI"


def _segment(
    *, number: int, label: str, category, property_type, algorithm: AlgorithmInfo, tracking_uid: str
) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=category,
        segmented_property_type=property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification_sequence(algorithm),
        tracking_uid=tracking_uid,
        tracking_id=f"{label} ({algorithm.name})",
    )


def _checked_mask(mask: np.ndarray, *, name: str, shape: tuple[int, int], uid: str) -> np.ndarray:
    if mask.shape != shape:
        raise ValueError(f"{name} of image {uid} has shape {mask.shape}, the source image {shape}")
    return mask.astype(bool, copy=False)


def _segments_and_masks(
    image: ImageResult, ds: pydicom.Dataset, *, algorithm: AlgorithmInfo
) -> tuple[list[hd.seg.SegmentDescription], list[np.ndarray]]:
    shape = image_shape(ds)
    version = algorithm.version
    descriptions, masks = [], []
    entries = (
        (image.lung_mask, "lung_mask", LUNG_SEGMENT_LABEL, codes.ANATOMICAL_STRUCTURE, codes.LUNG, "segment/lungs"),
        (
            image.opacity_mask,
            "opacity_mask",
            OPACITY_SEGMENT_LABEL,
            codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            codes.OPACITY,
            "segment/opacity",
        ),
    )
    for mask, name, label, category, property_type, kind in entries:
        if mask is None:
            continue
        descriptions.append(
            _segment(
                number=len(descriptions) + 1,
                label=label,
                category=category,
                property_type=property_type,
                algorithm=algorithm,
                tracking_uid=derive_uid(source_uid=image.sop_instance_uid, model_version=version, kind=kind),
            )
        )
        masks.append(_checked_mask(mask, name=name, shape=shape, uid=image.sop_instance_uid))
    return descriptions, masks


class _Segmentation(hd.seg.Segmentation):
    """highdicom's Segmentation with a cheaper overlap check for our two boolean masks.

    highdicom finds whether segments overlap by summing the stacked masks over the segment axis
    (an int64 array of the image size: about 65 ms for two 2048 x 2048 masks); for two boolean
    masks the answer is whether they share a pixel. The outputs are the same; the object is
    handed back as a plain :class:`highdicom.seg.Segmentation`.
    """

    @classmethod
    def _check_and_cast_pixel_array(cls, pixel_array, segment_numbers, segmentation_type, dtype):  # type: ignore[override]
        if (
            isinstance(pixel_array, np.ndarray)
            and pixel_array.dtype == np.bool_
            and pixel_array.ndim == 4
            and pixel_array.shape[-1] == 2
            and len(segment_numbers) == 2
            and segmentation_type == hd.seg.SegmentationTypeValues.BINARY
        ):
            shared = bool(np.any(pixel_array[..., 0] & pixel_array[..., 1]))
            return pixel_array, hd.seg.SegmentsOverlapValues.YES if shared else hd.seg.SegmentsOverlapValues.NO
        return super()._check_and_cast_pixel_array(pixel_array, segment_numbers, segmentation_type, dtype)

    def _encode_pixels_native(self, planes: np.ndarray) -> bytes:
        """1-bit frames packed by :func:`numpy.packbits` alone. pydicom's ``pack_bits``, which
        highdicom calls, first proves the values binary and copies them twice (about 4 ms of
        CPU a 2048 x 2048 SEG); here they are 0/1 uint8 by construction, cast from the boolean masks or
        checked binary by highdicom for BINARY. Same bytes (LSB first, no padding)."""
        if self.BitsAllocated == 1 and planes.dtype == np.uint8 and planes.ndim == 1 and planes.size % 8 == 0:
            return np.packbits(planes, bitorder="little").tobytes()
        return super()._encode_pixels_native(planes)


def _set_dimension_organization_uid(seg: hd.seg.Segmentation, uid: str) -> None:
    """Replace the random Dimension Organization UID highdicom generates (keeps re-runs identical)."""
    old = {item.DimensionOrganizationUID for item in seg.DimensionOrganizationSequence}
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = uid
    for item in seg.get("DimensionIndexSequence", []):
        if item.get("DimensionOrganizationUID") in old:
            item.DimensionOrganizationUID = uid


# OHIF 3.13 (its SEG viewport and cornerstone's SEG adapter) opens a SEG only when its Shared
# Functional Groups hold a Pixel Measures item and a Plane Orientation: without the first its
# viewport fails ("Cannot destructure property 'PixelMeasuresSequence'"), without the second the
# adapter does ("reading 'ImageOrientationPatient'"). highdicom writes neither for a CR/DX, which
# has no frame of reference; DICOM allows both there (they are required only with one).
PROJECTION_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _pixel_measures(ds: pydicom.Dataset) -> hd.PixelMeasuresSequence | None:
    """The Pixel Measures to give highdicom: None when the source has a Pixel Spacing (highdicom
    copies it), else its Imager Pixel Spacing, the spacing viewers show a CR/DX with (an invalid
    ``0\\0`` was left out of the source). A source with neither gets none: a SEG states no
    spacing its source does not (and OHIF does not open it)."""
    if "PixelSpacing" in ds or "ImagerPixelSpacing" not in ds:
        return None
    return hd.PixelMeasuresSequence(pixel_spacing=[float(v) for v in ds.ImagerPixelSpacing], slice_thickness=None)


def _add_projection_orientation(seg: hd.seg.Segmentation) -> None:
    """A SEG without a frame of reference (a projection image's) gets the orientation viewers
    give its source, the pixel grid's rows and columns (:data:`PROJECTION_ORIENTATION`): with no
    frame of reference it places nothing in the patient, but OHIF needs it (see above)."""
    if "FrameOfReferenceUID" in seg:
        return
    shared = seg.SharedFunctionalGroupsSequence
    if len(shared) == 0:
        shared.append(pydicom.Dataset())
    if "PlaneOrientationSequence" not in shared[0]:
        item = pydicom.Dataset()
        item.ImageOrientationPatient = list(PROJECTION_ORIENTATION)
        shared[0].PlaneOrientationSequence = [item]


def seg_for_image(
    result: StudyResult,
    image: ImageResult,
    sources: Mapping[str, pydicom.Dataset],
    *,
    number: int,
    created: datetime.datetime,
) -> hd.seg.Segmentation | None:
    """The SEG of one analysed image (``number``: its Instance Number); None without masks."""
    algorithm = result.algorithm
    ds = source_header(sources, image.sop_instance_uid)
    descriptions, masks = _segments_and_masks(image, ds, algorithm=algorithm)
    if not masks:
        logger.warning("no masks for analysed image %s: no SEG written", image.sop_instance_uid)
        return None
    # (1, rows, columns, segments) as highdicom wants it, laid out segment by segment: each
    # segment's frame is then a contiguous slice, encoded without another copy of the masks.
    pixel_array = np.stack(masks, axis=0).transpose(1, 2, 0)[np.newaxis]
    seg = _Segmentation(
        source_images=[ds],
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        pixel_measures=_pixel_measures(ds),
        series_instance_uid=series_uid(study_uid=result.study_instance_uid, model_version=algorithm.version, kind=KIND_SEG),
        series_number=SERIES_NUMBERS[KIND_SEG],
        sop_instance_uid=instance_uid(source_uid=image.sop_instance_uid, model_version=algorithm.version, kind=KIND_SEG),
        instance_number=number,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.version,
        content_label=CONTENT_LABEL,
        content_description=f"{algorithm.name} lungs and opacity{DEMO_SUFFIX if algorithm.demo_weights else ''}",
        omit_empty_frames=False,
        contributing_equipment=contributing_equipment(algorithm, created=created),
        series_description=series_description(KIND_SEG, demo_weights=algorithm.demo_weights),
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
    )
    seg.__class__ = hd.seg.Segmentation
    return finish_projection_seg(
        seg, source=ds, image=image, algorithm=algorithm, created=created, dimensions_kind="seg/dimensions"
    )


def finish_projection_seg(
    seg: hd.seg.Segmentation,
    *,
    source: pydicom.Dataset,
    image: ImageResult,
    algorithm: AlgorithmInfo,
    created: datetime.datetime,
    dimensions_kind: str,
) -> hd.seg.Segmentation:
    """What every SEG of a projection radiograph gets after highdicom built it: a deterministic
    Dimension Organization UID, the placing-only orientation, Patient Orientation, the demo notice."""
    _set_dimension_organization_uid(
        seg, derive_uid(source_uid=image.sop_instance_uid, model_version=algorithm.version, kind=dimensions_kind)
    )
    _add_projection_orientation(seg)
    if "PatientOrientation" not in seg:
        # Type 2C in General Image when there is no plane orientation (projection radiograph).
        seg.PatientOrientation = source.get("PatientOrientation") or None
    if algorithm.demo_weights:
        seg.ImageComments = NOT_FOR_CLINICAL_USE
    finalize(seg, created=created)
    return seg


def write_seg(
    result: StudyResult,
    sources: Mapping[str, pydicom.Dataset],
    *,
    created: datetime.datetime | None = None,
) -> list[hd.seg.Segmentation]:
    """One SEG per analysed image that has masks, in image order; raises on the first image
    that cannot be written (:func:`cxr_service.writers.write_all` does not)."""
    check_sources(result.analysed_images, sources)
    created = creation_datetime(sources) if created is None else created
    outputs: list[hd.seg.Segmentation] = []
    for image in result.analysed_images:
        seg = seg_for_image(result, image, sources, number=len(outputs) + 1, created=created)
        if seg is not None:
            outputs.append(seg)
    logger.info("%d SEG for study %s", len(outputs), result.study_instance_uid)
    return outputs

"""Grayscale Softcopy Presentation State per analysed image: opacity boxes and score labels.

Boxes are closed 5-point POLYLINE graphic objects in PIXEL units, their scores text objects just
above (or inside) them, and a header line with the study class, all on the graphic layer
:data:`GRAPHIC_LAYER` (a Code String, so ``CXR_AI``: CS allows no hyphen). The VOI comes from the
source image (its first VOI LUT, else its first window, as in ``display_array``). The
Presentation LUT Shape is INVERSE for MONOCHROME1 sources and IDENTITY for MONOCHROME2: a
presentation state ignores the source's Photometric Interpretation, so IDENTITY alone would show
a MONOCHROME1 image inverted. Body Part Examined is copied from the source (else CHEST).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping

import highdicom as hd
import numpy as np
import pydicom
from cxr_models.records import Box
from pydicom.multival import MultiValue

from cxr_service import codes
from cxr_service.results import ImageResult, StudyResult
from cxr_service.uids import KIND_GSPS, derive_uid, instance_uid, series_uid
from cxr_service.writers.common import (
    AI_RESULT_NOTICE,
    DEMO_SUFFIX,
    SERIES_NUMBERS,
    body_part_examined,
    check_sources,
    clip_box,
    contributing_equipment,
    creation_datetime,
    finalize,
    image_shape,
    rectangle,
    series_description,
    source_header,
)

logger = logging.getLogger(__name__)

GRAPHIC_LAYER = "CXR_AI"
CONTENT_LABEL = "CXR_AI"
# Size of a score label's bounding box as fractions of the image height and width.
_LABEL_HEIGHT = 0.03
_LABEL_WIDTH = 0.22


def presentation_lut_shape(ds: pydicom.Dataset) -> hd.PresentationLUTShapeValues:
    """INVERSE for a MONOCHROME1 source, IDENTITY otherwise."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "MONOCHROME1":
        return hd.PresentationLUTShapeValues.INVERSE
    if photometric == "MONOCHROME2":
        return hd.PresentationLUTShapeValues.IDENTITY
    raise ValueError(f"PhotometricInterpretation must be MONOCHROME1/2 for a GSPS, got {photometric!r}")


def _label_box(box: Box, *, rows: int, columns: int) -> tuple[float, float, float, float]:
    """Bounding box (left, top, right, bottom) of a score label: above ``box``, else inside it."""
    height = max(rows * _LABEL_HEIGHT, 4.0)
    width = max(columns * _LABEL_WIDTH, 8.0)
    left = min(box.x0, max(columns - width, 0.0))
    right = min(left + width, float(columns))
    if box.y0 >= height:
        top, bottom = box.y0 - height, box.y0
    else:
        top, bottom = box.y0, min(box.y0 + height, float(rows))
    return (left, top, right, bottom)


def _first(value: object) -> object:
    if isinstance(value, (list, tuple, MultiValue)):
        return value[0] if len(value) else None
    return value


def voi_transformation(ds: pydicom.Dataset) -> hd.pr.SoftcopyVOILUTTransformation | None:
    """The source's VOI as a Softcopy VOI LUT item: its first VOI LUT, else its first window.

    Same priority as :func:`cxr_models.imaging.display_array`. None when the source has neither.
    A presentation state allows 8 or 16 bits per LUT entry only, so a LUT of other depth (e.g. 12
    bits) is rescaled to 16 bits, which keeps its displayed output.
    """
    luts = ds.get("VOILUTSequence")
    if luts:
        item = luts[0]
        entries, first_mapped, bits = (int(v) for v in item.LUTDescriptor)
        if not 1 <= bits <= 16:
            raise ValueError(f"VOI LUT bits per entry must be 1..16, got {bits} in {ds.SOPInstanceUID}")
        data = item.LUTData
        if isinstance(data, bytes):
            values = np.frombuffer(data, dtype=np.uint8 if len(data) == entries else np.dtype("<u2"))
        else:
            values = np.asarray(data if isinstance(data, (list, tuple, MultiValue)) else [data])
        values = values.astype(np.float64)
        if bits == 8:
            lut_data = values.astype(np.uint8)
        elif bits == 16:
            lut_data = values.astype(np.uint16)
        else:
            lut_data = np.rint(values * (65535.0 / (2**bits - 1))).astype(np.uint16)
        lut = hd.VOILUT(first_mapped_value=first_mapped, lut_data=lut_data, lut_explanation=item.get("LUTExplanation"))
        return hd.pr.SoftcopyVOILUTTransformation(voi_luts=[lut])
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    explanation = _first(ds.get("WindowCenterWidthExplanation"))
    return hd.pr.SoftcopyVOILUTTransformation(
        window_center=float(center),
        window_width=float(width),
        window_explanation=str(explanation) if explanation else None,
        voi_lut_function=ds.get("VOILUTFunction") or None,
    )


def _header_text(result: StudyResult) -> str:
    label = result.study_label or "no study class"
    text = f"{AI_RESULT_NOTICE}: {label}"
    return text + (DEMO_SUFFIX if result.algorithm.demo_weights else "")


def _annotation(
    image: ImageResult, ds: pydicom.Dataset, *, result: StudyResult, layer: hd.pr.GraphicLayer
) -> hd.pr.GraphicAnnotation:
    rows, columns = image_shape(ds)
    version = result.algorithm.version
    graphic_objects = []
    text_objects = [
        hd.pr.TextObject(
            text_value=_header_text(result),
            units=hd.pr.AnnotationUnitsValues.DISPLAY,
            bounding_box=(0.01, 0.01, 0.99, 0.06),
            text_justification=hd.pr.TextJustificationValues.LEFT,
        )
    ]
    for index, opacity in enumerate(image.opacities):
        box = clip_box(opacity.box, rows=rows, columns=columns)
        tracking_uid = derive_uid(
            source_uid=image.sop_instance_uid, model_version=version, kind="tracking/opacity", index=index
        )
        graphic_objects.append(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=rectangle(box),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                tracking_id=f"Opacity {index + 1}",
                tracking_uid=tracking_uid,
            )
        )
        text_objects.append(
            hd.pr.TextObject(
                text_value=f"opacity {opacity.score:.2f}",
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=_label_box(box, rows=rows, columns=columns),
                text_justification=hd.pr.TextJustificationValues.LEFT,
            )
        )
    return hd.pr.GraphicAnnotation(
        referenced_images=[ds],
        graphic_layer=layer,
        graphic_objects=graphic_objects or None,
        text_objects=text_objects,
    )


def gsps_for_image(
    result: StudyResult,
    image: ImageResult,
    sources: Mapping[str, pydicom.Dataset],
    *,
    number: int,
    created: datetime.datetime,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The GSPS of one analysed image (``number``: its Instance Number)."""
    algorithm = result.algorithm
    layer = hd.pr.GraphicLayer(layer_name=GRAPHIC_LAYER, order=1, description="cxr AI results")
    ds = source_header(sources, image.sop_instance_uid)
    voi = voi_transformation(ds)
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[ds],
        series_instance_uid=series_uid(study_uid=result.study_instance_uid, model_version=algorithm.version, kind=KIND_GSPS),
        series_number=SERIES_NUMBERS[KIND_GSPS],
        sop_instance_uid=instance_uid(source_uid=image.sop_instance_uid, model_version=algorithm.version, kind=KIND_GSPS),
        instance_number=number,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.version,
        content_label=CONTENT_LABEL,
        content_description=_header_text(result)[:64],
        graphic_annotations=[_annotation(image, ds, result=result, layer=layer)],
        graphic_layers=[layer],
        concept_name=codes.DIAGNOSTIC_IMAGING_REPORT,
        voi_lut_transformations=[voi] if voi is not None else None,
        presentation_lut_transformation=hd.PresentationLUTTransformation(presentation_lut_shape=presentation_lut_shape(ds)),
        contributing_equipment=contributing_equipment(algorithm, created=created),
        series_description=series_description(KIND_GSPS, demo_weights=algorithm.demo_weights),
        series_date=created.date(),
        series_time=created.time(),
    )
    gsps.BodyPartExamined = body_part_examined(ds)
    finalize(gsps, created=created)
    return gsps


def write_gsps(
    result: StudyResult,
    sources: Mapping[str, pydicom.Dataset],
    *,
    created: datetime.datetime | None = None,
) -> list[hd.pr.GrayscaleSoftcopyPresentationState]:
    """One GSPS per analysed image, in image order (empty when no image was analysed); raises
    on the first image that cannot be written (:func:`cxr_service.writers.write_all` does not)."""
    check_sources(result.analysed_images, sources)
    created = creation_datetime(sources) if created is None else created
    outputs = [
        gsps_for_image(result, image, sources, number=number, created=created)
        for number, image in enumerate(result.analysed_images, start=1)
    ]
    logger.info("%d GSPS for study %s", len(outputs), result.study_instance_uid)
    return outputs

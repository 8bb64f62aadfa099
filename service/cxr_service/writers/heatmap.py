"""Heatmap Segmentations (one per analysed image and map) and the Secondary Capture colour layer.

Each heatmap of :mod:`cxr_service.heatmaps` (the opacity probability, the study class's
attribution) becomes a Segmentation of the source image whose segments are its value bands
``[0.2, 0.4)``, ``[0.4, 0.6)``, ``[0.6, 0.8)`` and ``[0.8, 1.0]`` (values under 0.2 are not shown),
each with its Recommended Display CIELab Value on a blue → cyan → yellow → red ramp, so any viewer
that shows a SEG shows the map as a colour overlay on the image. Why this encoding, measured with
OHIF 3.13.2 in front of Orthanc 1.10 (the viewer of this project):

- OHIF 3.13 displays Parametric Maps only in volume viewports and refuses a stack ("stack
  viewport PMAP is not supported yet"; a CR/DX image is a stack), and highdicom 0.28 cannot build
  a Parametric Map of a projection radiograph without a frame of reference;
- OHIF 3.13 refuses a FRACTIONAL SEG whose values are not only 0 and the maximum ("Fractional
  segmentations are not yet supported");
- Orthanc 1.10's DICOMweb plugin answers 400 ("Bad file format") to WADO-RS frame requests of
  a BINARY (1-bit) SEG; OHIF then loads the whole instance, and refuses it when the packed pixel
  data was padded to an even length (a 527 x 614 image, for one).

So the SEG is FRACTIONAL (8-bit frames, ``OCCUPANCY``) with values 0 or 255 only: each band
segment occupies a pixel entirely or not at all, which is exact. It is not compressed: Orthanc
1.10 transcodes a stored JPEG-LS SEG when OHIF retrieves the whole instance, and its GDCM plugin
crashed doing so (a segfault in libgdcmMSFF, Orthanc gone) on a 2000 x 2078 one, two times in
seven; RLE through pydicom's encoder costs 460 ms for such an image. Uncompressed, nothing
transcodes it, at 4 bytes per source pixel (the four band frames). Every heatmap SEG is in a
series of its own (OHIF shows one SEG per series, the last), with Series Number 9905 (opacity)
or 9906 (attribution).

A projection radiograph has no frame of reference. As for the lung and opacity SEG
(:mod:`cxr_service.writers.seg`, whose helpers are used), the SEG carries Pixel Measures (the
source's Pixel Spacing, else its Imager Pixel Spacing) and the pixel grid's Plane Orientation
1\\0\\0\\0\\1\\0, which OHIF 3.13 needs to open a SEG and which place nothing in the patient
without a Frame of Reference UID. The SEG's frames are the source's pixel grid (Derivation
Image Sequence, Spatial Locations Preserved YES).

The codes: the opacity map's segments are SCT "Morphologically abnormal structure" / DCM
"Opacity"; the attribution's are DCM 130401 "Visual explanation" / DCM 130404 "Saliency"
(Integrated Gradients) or DCM 130403 "Gradient-weighted class activation" (Grad-CAM), from
PS3.16 CID 217 "Visual Explanation".

:func:`colour_layer` blends a heatmap into the RGB Secondary Capture (``CXR_SC_HEATMAP``).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from cxr_service import codes
from cxr_service.heatmaps import ATTRIBUTION, OPACITY, Heatmap
from cxr_service.results import AlgorithmInfo, ImageResult, StudyResult
from cxr_service.uids import KIND_HEATMAP, derive_uid, instance_uid
from cxr_service.writers.seg import _pixel_measures, finish_projection_seg
from cxr_service.writers.common import (
    DEMO_SUFFIX,
    algorithm_identification_sequence,
    contributing_equipment,
    image_shape,
    source_header,
)

logger = logging.getLogger(__name__)

# Lower edges of the value bands (the last band includes 1.0).
BAND_EDGES: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
# sRGB display colour of each band: blue, cyan, yellow, red.
BAND_COLOURS: tuple[tuple[int, int, int], ...] = ((0, 64, 255), (0, 230, 230), (255, 230, 0), (255, 32, 0))
SERIES_NUMBERS: Mapping[str, int] = {OPACITY: 9905, ATTRIBUTION: 9906}
SERIES_DESCRIPTIONS: Mapping[str, str] = {OPACITY: "CXR AI HEATMAP OPACITY", ATTRIBUTION: "CXR AI HEATMAP ATTRIBUTION"}
LABELS: Mapping[str, str] = {OPACITY: "Opacity probability", ATTRIBUTION: "Attribution"}
CONTENT_LABEL = "CXR_HEATMAP"
MAX_FRACTIONAL_VALUE = 255
# The attribution method's PS3.16 CID 217 code.
METHOD_CODES: Mapping[str, Code] = {
    "integrated_gradients": codes.SALIENCY,
    "grad_cam": codes.GRADIENT_WEIGHTED_CLASS_ACTIVATION,
}
# How strongly the Secondary Capture shows the colour layer at a value of 1.
SC_LAYER_ALPHA = 0.55


def band_labels(values: np.ndarray) -> np.ndarray:
    """uint8 band index per pixel: 0 below the first edge, k for ``BAND_EDGES[k-1] <= v <
    BAND_EDGES[k]``, the last band up to and including 1."""
    return np.digitize(np.asarray(values, dtype=np.float32), np.asarray(BAND_EDGES, dtype=np.float32)).astype(np.uint8)


def _band_text(k: int) -> str:
    low = BAND_EDGES[k]
    return f"{low:.1f}-{BAND_EDGES[k + 1]:.1f}" if k + 1 < len(BAND_EDGES) else f"{low:.1f}-1.0"


def _property_codes(heatmap: Heatmap) -> tuple[Code, Code]:
    if heatmap.name == OPACITY:
        return codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, codes.OPACITY
    if heatmap.method not in METHOD_CODES:
        raise ValueError(f"attribution method must be one of {sorted(METHOD_CODES)}, got {heatmap.method!r}")
    return codes.VISUAL_EXPLANATION, METHOD_CODES[heatmap.method]


def _segments(heatmap: Heatmap, image: ImageResult, *, algorithm: AlgorithmInfo) -> list[hd.seg.SegmentDescription]:
    category, property_type = _property_codes(heatmap)
    label = LABELS[heatmap.name]
    segments = []
    for k, colour in enumerate(BAND_COLOURS):
        text = _band_text(k)
        segment = hd.seg.SegmentDescription(
            segment_number=k + 1,
            segment_label=f"{label} {text}",
            segmented_property_category=category,
            segmented_property_type=property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_identification_sequence(algorithm),
            tracking_uid=derive_uid(
                source_uid=image.sop_instance_uid, model_version=algorithm.version, kind=f"{KIND_HEATMAP}/{heatmap.name}/{k + 1}"
            ),
            tracking_id=f"{label} {text} ({algorithm.name})",
            display_color=hd.color.CIELabColor.from_rgb(*colour),
        )
        segment.SegmentDescription = f"{heatmap.description}: {text}"[:64]
        segments.append(segment)
    return segments


def heatmap_series_uid(image: ImageResult, name: str, *, model_version: str) -> str:
    """The Series Instance UID of an image's heatmap SEG (one series per image and map)."""
    return derive_uid(source_uid=image.sop_instance_uid, model_version=model_version, kind=f"series/{KIND_HEATMAP}/{name}")


def heatmap_seg(
    result: StudyResult,
    image: ImageResult,
    heatmap: Heatmap,
    sources: Mapping[str, pydicom.Dataset],
    *,
    created: datetime.datetime,
) -> hd.seg.Segmentation:
    """The heatmap SEG of one analysed image and one map."""
    algorithm = result.algorithm
    ds = source_header(sources, image.sop_instance_uid)
    shape = image_shape(ds)
    if heatmap.values.shape != shape:
        raise ValueError(f"heatmap {heatmap.name} of image {image.sop_instance_uid} has shape {heatmap.values.shape}, the source {shape}")
    version = algorithm.version
    seg = hd.seg.Segmentation(
        source_images=[ds],
        pixel_array=band_labels(heatmap.values),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
        max_fractional_value=MAX_FRACTIONAL_VALUE,
        segment_descriptions=_segments(heatmap, image, algorithm=algorithm),
        series_instance_uid=heatmap_series_uid(image, heatmap.name, model_version=version),
        series_number=SERIES_NUMBERS[heatmap.name],
        sop_instance_uid=instance_uid(source_uid=image.sop_instance_uid, model_version=version, kind=f"{KIND_HEATMAP}/{heatmap.name}"),
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=version,
        device_serial_number=version,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        pixel_measures=_pixel_measures(ds),
        content_label=CONTENT_LABEL,
        content_description=f"{heatmap.description}{DEMO_SUFFIX if algorithm.demo_weights else ''}"[:64],
        omit_empty_frames=False,
        contributing_equipment=contributing_equipment(algorithm, created=created),
        series_description=SERIES_DESCRIPTIONS[heatmap.name] + (DEMO_SUFFIX if algorithm.demo_weights else ""),
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
    )
    return finish_projection_seg(
        seg, source=ds, image=image, algorithm=algorithm, created=created,
        dimensions_kind=f"{KIND_HEATMAP}/{heatmap.name}/dimensions",
    )


def heatmap_segs_for_image(
    result: StudyResult,
    image: ImageResult,
    sources: Mapping[str, pydicom.Dataset],
    *,
    created: datetime.datetime,
) -> list[hd.seg.Segmentation]:
    """The heatmap SEGs of one analysed image, one per map it has (opacity first)."""
    order = {OPACITY: 0, ATTRIBUTION: 1}
    return [
        heatmap_seg(result, image, heatmap, sources, created=created)
        for heatmap in sorted(image.heatmaps, key=lambda h: order[h.name])
    ]


def colour_layer(rgb: np.ndarray, values: np.ndarray, *, alpha: float = SC_LAYER_ALPHA) -> np.ndarray:
    """``rgb`` (uint8, (rows, columns, 3)) with ``values`` (float in [0, 1], same rows and
    columns) blended in: each pixel of a band takes the band's colour with opacity ``alpha``
    times its value; pixels under the first band edge are unchanged."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be a uint8 (rows, columns, 3) array, got {rgb.dtype} {rgb.shape}")
    if values.shape != rgb.shape[:2]:
        raise ValueError(f"values have shape {values.shape}, the image {rgb.shape[:2]}")
    bands = band_labels(values)
    palette = np.asarray(((0, 0, 0), *BAND_COLOURS), dtype=np.float32)
    weight = (np.clip(values, 0.0, 1.0) * np.float32(alpha) * (bands > 0))[..., None].astype(np.float32)
    out = rgb.astype(np.float32) * (1.0 - weight) + palette[bands] * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def colour_planes(grey8: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    """The R, G and B planes (uint8) of the grey image ``grey8`` with ``values`` blended in
    (:func:`colour_layer`)."""
    if grey8.ndim != 2 or grey8.dtype != np.uint8:
        raise ValueError(f"grey8 must be a 2-D uint8 array, got {grey8.dtype} {grey8.shape}")
    rgb = colour_layer(np.repeat(grey8[:, :, np.newaxis], 3, axis=2), np.asarray(values, dtype=np.float32))
    return [np.ascontiguousarray(rgb[:, :, c]) for c in range(3)]


def sc_layer_values(image: ImageResult, name: str, shape: Sequence[int]) -> Heatmap | None:
    """``image``'s heatmap ``name`` for the SC colour layer (checked against the display's
    shape), or None without one."""
    heatmap = next((h for h in image.heatmaps if h.name == name), None)
    if heatmap is None:
        return None
    if heatmap.values.shape != tuple(shape):
        raise ValueError(f"heatmap {name} of image {image.sop_instance_uid} has shape {heatmap.values.shape}, the display {tuple(shape)}")
    return heatmap


def legend(heatmap: Heatmap) -> str:
    """The SC banner line that says what the colours are."""
    return f"colour: {LABELS[heatmap.name].lower()} {BAND_EDGES[0]:.1f}-1 (blue to red)"

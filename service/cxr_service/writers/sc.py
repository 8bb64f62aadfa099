"""RGB Secondary Capture per analysed image with the results burned in.

For viewers that show neither SR, GSPS nor SEG: the source display image (its VOI already
applied, given as the float display array of :func:`cxr_models.imaging.display_array`) with the
lung outline, the opacity boxes and their scores, and a banner "AI RESULT – NOT FOR DIAGNOSIS"
(plus "DEMO WEIGHTS" with demo weights). The longest side is capped at ``max_side`` pixels,
keeping the aspect ratio; the image is never enlarged.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from cxr_models.imaging import resize
from PIL import Image, ImageDraw, ImageFont
from pydicom.uid import ExplicitVRLittleEndian

from cxr_service.results import ImageResult, StudyResult
from cxr_service.uids import KIND_SC, instance_uid, series_uid
from cxr_service.heatmaps import Heatmap
from cxr_service.writers.heatmap import colour_planes, legend
from cxr_service.writers.common import (
    NOT_FOR_CLINICAL_USE,
    SERIES_NUMBERS,
    body_part_examined,
    check_sources,
    clip_box,
    contributing_equipment,
    creation_datetime,
    finalize,
    image_shape,
    series_description,
    source_header,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIDE = 2048
BANNER = "AI RESULT \u2013 NOT FOR DIAGNOSIS"
DEMO_BANNER = "DEMO WEIGHTS"
BOX_COLOR = (255, 64, 64)
LUNG_COLOR = (64, 224, 64)
TEXT_COLOR = (255, 255, 0)
_ORIENTATION_LETTERS = frozenset("APLRHF")


def output_shape(rows: int, columns: int, *, max_side: int) -> tuple[int, int]:
    """(rows, columns) of the SC: the source size scaled down so the longest side is <= max_side."""
    if max_side < 16:
        raise ValueError(f"max_side must be >= 16, got {max_side}")
    scale = min(1.0, max_side / max(rows, columns))
    return max(1, round(rows * scale)), max(1, round(columns * scale))


def _font_paths() -> Iterator[Path]:
    """DejaVu Sans (covers the en dash of the banner): Debian's copy, else matplotlib's."""
    yield Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    import matplotlib

    yield Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for path in _font_paths():
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    logger.warning("DejaVu Sans not found; the SC banner uses PIL's default font")
    return ImageFont.load_default(size=size)


# Rows converted at a time by _to_uint8: a block's float32 scratch stays in the CPU cache.
_BLOCK_ROWS = 128


def _to_uint8(display: np.ndarray) -> np.ndarray:
    """rint(display * 255) clipped to 0-255, as uint8, a block of rows at a time (twice as fast
    as whole-image passes on a 2048x2048 image, same values)."""
    out = np.empty(display.shape, dtype=np.uint8)
    scratch = np.empty((min(_BLOCK_ROWS, display.shape[0]), display.shape[1]), dtype=np.float32)
    for start in range(0, display.shape[0], _BLOCK_ROWS):
        block = scratch[: min(_BLOCK_ROWS, display.shape[0] - start)]
        np.multiply(display[start : start + _BLOCK_ROWS], np.float32(255.0), out=block)
        np.rint(block, out=block)
        np.clip(block, 0, 255, out=block)
        out[start : start + len(block)] = block
    return out


def _erode_packed(packed: np.ndarray) -> np.ndarray:
    """One binary erosion by the 4-connected cross of a mask packed along its rows
    (:func:`numpy.packbits`, most significant bit first, the row padded with zero bits); outside
    the array counts as background."""
    out = packed.copy()
    out[1:] &= packed[:-1]  # the pixel above
    out[:-1] &= packed[1:]  # the pixel below
    out[0] = out[-1] = 0
    # The pixel to the left: the row's bits one place towards the end; the first column has
    # none (background). The pixel to the right: one place towards the start; the last column's
    # is a zero padding bit, or the row's end (background).
    left = packed >> 1
    left[:, 1:] |= packed[:, :-1] << 7
    right = packed << 1
    right[:, :-1] |= packed[:, 1:] >> 7
    out &= left
    out &= right
    return out


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask (mask minus its erosion, twice, by the 4-connected
    cross with outside as background, as ``scipy.ndimage.binary_erosion`` does by default), two
    pixels thick. The erosions run on the mask packed eight columns to a byte."""
    packed = np.packbits(mask, axis=1)
    eroded = _erode_packed(_erode_packed(packed))
    np.bitwise_and(packed, ~eroded, out=eroded)
    return np.unpackbits(eroded, axis=1, count=mask.shape[1]).view(np.bool_)


def render(
    image: ImageResult,
    display: np.ndarray,
    *,
    result: StudyResult,
    max_side: int = DEFAULT_MAX_SIDE,
    heatmap: Heatmap | None = None,
) -> np.ndarray:
    """The burned-in RGB uint8 image (rows, columns, 3) for one analysed image; ``heatmap``
    (values the display's size) is blended in under the graphics, with a legend line
    (:func:`cxr_service.writers.heatmap.colour_planes`)."""
    return np.asarray(_canvas(image, display, result=result, max_side=max_side, heatmap=heatmap), dtype=np.uint8)


def _canvas(
    image: ImageResult,
    display: np.ndarray,
    *,
    result: StudyResult,
    max_side: int,
    heatmap: Heatmap | None,
) -> Image.Image:
    """:func:`render`'s image, as the PIL RGB image it is drawn on."""
    if display.ndim != 2:
        raise ValueError(f"display of image {image.sop_instance_uid} must be 2-D, got shape {display.shape}")
    rows, columns = display.shape
    out_rows, out_columns = output_shape(rows, columns, max_side=max_side)
    scale_y, scale_x = out_rows / rows, out_columns / columns
    resized = (out_rows, out_columns) != (rows, columns)
    grey = resize(display, height=out_rows, width=out_columns) if resized else display
    grey8 = _to_uint8(np.asarray(grey, dtype=np.float32))

    # One 8-bit plane per channel, merged by PIL: an order of magnitude faster than repeating
    # the grey plane into an (rows, columns, 3) array. Without a heatmap the three are one.
    channels = [grey8, grey8, grey8]
    if heatmap is not None:
        values = heatmap.values if not resized else resize(heatmap.values, height=out_rows, width=out_columns)
        channels = colour_planes(grey8, values)
    canvas = Image.merge("RGB", [Image.fromarray(channel, mode="L") for channel in channels])
    del channels, grey8
    if image.lung_mask is not None:
        if image.lung_mask.shape != (rows, columns):
            raise ValueError(
                f"lung_mask of image {image.sop_instance_uid} has shape {image.lung_mask.shape}, "
                f"the display {(rows, columns)}"
            )
        mask = image.lung_mask
        if resized:
            mask = resize(mask, height=out_rows, width=out_columns, nearest=True)
        rows_in, columns_in = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows_in.size:
            # The outline lies inside the mask's bounding box; what is outside it is background
            # for the erosion too, so eroding the box alone gives the same outline. It is
            # pasted in the lung colour through a 1-bit mask of the box.
            top, left = int(rows_in[0]), int(columns_in[0])
            outline = _outline(mask[top : rows_in[-1] + 1, left : columns_in[-1] + 1])
            canvas.paste(LUNG_COLOR, (left, top), Image.fromarray(outline))  # bool: mode "1"

    draw = ImageDraw.Draw(canvas)
    longest = max(out_rows, out_columns)
    line_width = max(1, round(longest / 400))
    font = _font(max(10, round(longest / 45)))
    for opacity in image.opacities:
        box = clip_box(opacity.box, rows=rows, columns=columns)
        x0, y0 = box.x0 * scale_x, box.y0 * scale_y
        x1, y1 = max(box.x1 * scale_x - 1, x0), max(box.y1 * scale_y - 1, y0)
        draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOR, width=line_width)
        label = f"opacity {opacity.score:.2f}"
        text_height = font.getbbox(label)[3]
        text_y = y0 - text_height - line_width if y0 - text_height - line_width >= 0 else y0 + line_width
        draw.text((x0 + line_width, text_y), label, fill=TEXT_COLOR, font=font)

    banner = [BANNER]
    if result.study_label is not None:
        banner.append(f"study: {result.study_label}")
    if image.opacity_percent is not None:
        banner.append(f"opacity {image.opacity_percent:.1f}% of lungs")
    if heatmap is not None:
        banner.append(legend(heatmap))
    if result.algorithm.demo_weights:
        banner.append(DEMO_BANNER)
    margin = max(2, round(longest / 200))
    draw.multiline_text((margin, margin), "\n".join(banner), fill=TEXT_COLOR, font=font)
    return canvas


def _patient_orientation(ds: pydicom.Dataset) -> tuple[str, str] | None:
    value = ds.get("PatientOrientation")
    if value is None or len(value) != 2:
        return None
    row, column = (str(v).strip().upper() for v in value)
    if row in _ORIENTATION_LETTERS and column in _ORIENTATION_LETTERS:
        return row, column
    return None


def sc_for_image(
    result: StudyResult,
    image: ImageResult,
    sources: Mapping[str, pydicom.Dataset],
    display: np.ndarray,
    *,
    number: int,
    created: datetime.datetime,
    max_side: int = DEFAULT_MAX_SIDE,
    heatmap: Heatmap | None = None,
) -> hd.sc.SCImage:
    """The Secondary Capture of one analysed image (``number``: its Instance Number; ``heatmap``:
    the colour layer's values, see :func:`render`)."""
    algorithm = result.algorithm
    ds = source_header(sources, image.sop_instance_uid)
    if display.shape != image_shape(ds):
        raise ValueError(f"display of image {image.sop_instance_uid} has shape {display.shape}, the source {image_shape(ds)}")
    orientation = _patient_orientation(ds)
    canvas = _canvas(image, display, result=result, max_side=max_side, heatmap=heatmap)
    # highdicom copies a pixel array twice into Pixel Data (flatten, tobytes), after PIL has
    # copied the canvas out once: it builds the SC on a one-pixel placeholder, and the SC gets
    # its Rows, Columns and the canvas's bytes afterwards, the only attributes highdicom derives
    # from the array (the same dataset: test_sc_pixel_data_is_the_rendered_image).
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ds,
        pixel_array=np.zeros((1, 1, 3), dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid(study_uid=result.study_instance_uid, model_version=algorithm.version, kind=KIND_SC),
        series_number=SERIES_NUMBERS[KIND_SC],
        sop_instance_uid=instance_uid(source_uid=image.sop_instance_uid, model_version=algorithm.version, kind=KIND_SC),
        instance_number=number,
        manufacturer=algorithm.manufacturer,
        # highdicom requires an orientation for PATIENT; an unknown one is emptied below.
        patient_orientation=orientation if orientation is not None else ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=contributing_equipment(algorithm, created=created),
        series_description=series_description(KIND_SC, demo_weights=algorithm.demo_weights),
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
    )
    sc.Rows, sc.Columns = canvas.height, canvas.width
    sc.PixelData = canvas.tobytes()
    del canvas
    if orientation is None:
        sc.PatientOrientation = None
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = f"{algorithm.name} {algorithm.version} results burned into the source display image"
    sc.SourceImageSequence = [_source_reference(ds)]
    sc.BodyPartExamined = body_part_examined(ds)
    if algorithm.demo_weights:
        sc.ImageComments = NOT_FOR_CLINICAL_USE
    finalize(sc, created=created)
    return sc


def write_sc(
    result: StudyResult,
    sources: Mapping[str, pydicom.Dataset],
    displays: Mapping[str, np.ndarray],
    *,
    created: datetime.datetime | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
) -> list[hd.sc.SCImage]:
    """One RGB Secondary Capture per analysed image, in image order; raises on the first image
    that cannot be written (:func:`cxr_service.writers.write_all` does not).

    ``displays`` maps SOP Instance UID → display array (float in [0, 1], white = dense, source
    VOI applied, original size) of every analysed image.
    """
    check_sources(result.analysed_images, sources)
    missing = [image.sop_instance_uid for image in result.analysed_images if image.sop_instance_uid not in displays]
    if missing:
        raise ValueError(f"displays lack the analysed images {missing}")
    created = creation_datetime(sources) if created is None else created
    outputs = [
        sc_for_image(result, image, sources, displays[image.sop_instance_uid], number=number, created=created, max_side=max_side)
        for number, image in enumerate(result.analysed_images, start=1)
    ]
    logger.info("%d SC for study %s", len(outputs), result.study_instance_uid)
    return outputs


def _source_reference(ds: pydicom.Dataset) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item

"""Burned-in annotations: lead side markers and modality text, drawn with PIL on the final image.

Real radiographs carry an "L"/"R" lead marker (dense, so white) and often burned-in text such
as "PORTABLE", the projection or a date. Never patient names. Text is rendered anti-aliased
into a coverage mask and blended into the display image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Annotation:
    """Text at (x, y) (fractions of the width/height, top-left corner), ``size`` a fraction of the height."""

    text: str
    x: float
    y: float
    size: float
    value: float
    boxed: bool = False


def sample_annotations(
    rng: np.random.Generator, *, view_position: str, portable: bool, frontal_like: bool, stamp: str
) -> tuple[Annotation, ...]:
    """A side marker and, at random, modality text for one image.

    ``frontal_like`` images show the patient's right on the image left, so an "R" marker goes
    left; ``stamp`` is the acquisition date and time text.
    """
    out: list[Annotation] = []
    white = 1.0 if rng.random() < 0.85 else 0.0
    if rng.random() < 0.85:
        if frontal_like:
            letter = "R" if rng.random() < 0.5 else "L"
            x = float(rng.uniform(0.04, 0.16)) if letter == "R" else float(rng.uniform(0.8, 0.9))
        else:
            letter = "L" if view_position == "LL" else "R"
            x = float(rng.uniform(0.05, 0.85))
        out.append(Annotation(letter, x, float(rng.uniform(0.03, 0.2)), float(rng.uniform(0.035, 0.06)), 1.0,
                              boxed=bool(rng.random() < 0.5)))
    texts: list[str] = []
    if portable and rng.random() < 0.65:
        texts.append(str(rng.choice(["PORTABLE", "PORTABLE AP", "PORT"] if frontal_like else ["PORTABLE", "PORT"])))
    if rng.random() < 0.3:
        texts.append(str(rng.choice({"PA": ["PA", "PA ERECT"], "AP": ["AP", "AP SUPINE", "SEMI-ERECT"],
                                     "LL": ["LAT", "LATERAL"], "RL": ["LAT", "RL"]}.get(view_position, ["AP"]))))
    if rng.random() < 0.4:
        texts.append(stamp)
    if rng.random() < 0.15:
        texts.append(f"{int(rng.integers(60, 130))}kV {rng.uniform(0.8, 8.0):.1f}mAs")
    corner_x = float(rng.choice([0.03, 0.6]))
    y = float(rng.choice([0.03, 0.82]))
    for text in texts:
        size = float(rng.uniform(0.018, 0.03))
        out.append(Annotation(text, corner_x + float(rng.uniform(0.0, 0.05)), y, size, white))
        y += size * 1.5
    return tuple(out)


def burn_in(display: np.ndarray, annotations: tuple[Annotation, ...]) -> np.ndarray:
    """``display`` with the annotations blended in (a new array)."""
    if not annotations:
        return display
    rows, cols = display.shape
    out = display.copy()
    for note in annotations:
        size = max(int(round(note.size * rows)), 6)
        font = ImageFont.load_default(size=size)
        canvas = Image.new("L", (cols, rows), 0)
        draw = ImageDraw.Draw(canvas)
        x, y = int(note.x * cols), int(note.y * rows)
        draw.text((x, y), note.text, fill=255, font=font)
        if note.boxed:
            left, top, right, bottom = draw.textbbox((x, y), note.text, font=font)
            pad = max(size // 5, 2)
            draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), outline=255, width=max(size // 12, 1))
        coverage = np.asarray(canvas, dtype=np.float32) / 255.0
        out = out * (1.0 - coverage) + np.float32(note.value) * coverage
    return out.astype(np.float32)

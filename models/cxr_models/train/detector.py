"""Train an opacity detector on lung crops: ``--arch a`` (Faster R-CNN) or ``--arch b`` (FCOS).

    python -m cxr_models.train.detector --arch a --data DATA --out runs/detector_a
    python -m cxr_models.train.detector --arch b --data DATA --out runs/detector_b

Inputs follow the pipeline exactly: the crop is ``decide_crop(lung mask)`` of the record's lung
mask, or of the lung model's prediction (``--lungs-weights``) for images without one (the
lung rectangle + 5 % margin, the whole image when the mask is missing or implausible), resized
to 320 x 320. During training each crop edge is jittered by up to ``--jitter`` of the crop size
(a small random scale and shift), ground-truth boxes are mapped into the crop with
``box_to_crop`` and then clipped to the crop rectangle, and boxes that vanish (or end up thinner
than 2 px) are dropped: the label refinement of the lung-crop paper. Frontal images only; images
annotated without opacity are negatives. Augmentations: horizontal flip (boxes flip too),
brightness / contrast / gamma jitter and a little Gaussian noise.

Whole-image inputs: with probability ``--whole-image-fraction`` (default 0.2) a training sample
is the whole image resized to 320 x 320 instead of the crop, so the same shipped detectors also
work on whole images and the evaluation's no-crop ablation (the shipped detectors run on whole
images) measures the value of cropping rather than a domain shift the detector never saw.
``--no-crop`` trains and validates on whole images only.

Auxiliary dense loss (training only, ``--aux-weight``, default 1): a small head on the two finest
FPN levels predicts the opacity map (the dataset's opacity mask through the same crop, jitter
and flip, or the filled boxes when there is no mask) with BCE + soft Dice. It is not part of the
shipped detectors; it roughly doubled the early validation mAP of the from-scratch trunks on
PhantomCXR (FCOS after 276 steps: 0.147 with it, 0.074 without).

The loop is the shared one of :mod:`cxr_models.train.engine` (AdamW, one-cycle schedule,
gradient clipping at 10, weighted sampling of the ``--data`` sources, the engine's checkpoint
and ``--limit`` conventions); the auxiliary head is the task's training-only module. Intensity
jitter is :func:`cxr_models.train.augment.jitter_intensity`, batched. Defaults (lr 2e-3, batch 4,
5 epochs) were sized for a ~1200-study PhantomCXR training set on a 2-core CPU: roughly 0.36 s
(Faster R-CNN) / 0.24 s (FCOS) per step on one free core, plus preprocessing.

Validation (the patient-hash validation part) reports mAP@50 each epoch in the ORIGINAL pixel
grid against the unclipped ground truth (``val_map50``; ``val_map50_whole`` is the same on whole
images when training on crops), and per source (``val_map50_<source>`` for each source with a
validation box, ``val_map50_source_mean`` their mean). ``OUT/checkpoint.pt`` is the latest
resumable state, ``OUT/model_best.pt`` the best ``val_map50`` (or, with ``--select-by
map50_source_mean``, the best mean over the sources, so a small real validation part counts as
much as a large synthetic one), ``OUT/train_log.jsonl`` one line per epoch.

Semi-supervised round: ``--pseudo-data DIR --teacher CKPT --pseudo-threshold 0.5`` lets the
teacher (a checkpoint of this trainer, or a bare / fp16 state dict) predict on the frontal images
of DIR that carry no box annotation (``boxes is None``); its boxes scoring at least the threshold
become labels, and the images with at least one such box join the training set.

Preprocessing is cached under ``OUT/cache/`` or ``--cache-dir`` (:mod:`cxr_models.train.cache`;
keyed by record ids, paths and the preprocessing version): per image a 384 x 384 context crop
(the crop box widened by ``CONTEXT_MARGIN`` for the jitter), the 320 x 320 whole image, their
opacity masks (all uint8) and the geometry. ``--workers`` also parallelises this step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import argparse
import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cxr_models.datasets import load_image, load_lung_mask, load_opacity_mask, read_dataset
from cxr_models.evaluation.metrics import ImageMatches, average_precision, average_precision_of, match_images
from cxr_models.imaging import resize
from cxr_models.inference.crop import box_to_crop, crop_and_resize, decide_crop, expand_box
from cxr_models.inference.detection import OpacityDetector
from cxr_models.nets.detectors import ARCHS, INPUT_SIZE, OPACITY_LABEL, OpacityAuxHead, build_detector
from cxr_models.records import Box, ImageRecord, ScoredBox
from cxr_models.train.augment import IntensityJitter, acquisition, acquisition_from_args, jitter_intensity
from cxr_models.train.cache import cached_arrays
from cxr_models.train.common import add_common_args
from cxr_models.train.data import read_args_records, sample_weights, split_records
from cxr_models.train.engine import Defaults, configure_logging, fit, setup_run
from cxr_models.train.lung_source import LungMaskSource

if TYPE_CHECKING:
    from cxr_models.train.acquisition import AcquisitionJitter

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = 2
CONTEXT_SIZE = 384
CONTEXT_MARGIN = 0.08
MIN_BOX_SIDE = 2.0
WEIGHT_DECAY = 1e-4
DEFAULTS = Defaults(epochs=5, batch_size=4, lr=2e-3, weight_decay=WEIGHT_DECAY, grad_clip=10.0)
INTENSITY = IntensityJitter(brightness=0.08, contrast=(0.85, 1.15), gamma=(0.82, 1.22), noise=0.02)


# --------------------------------------------------------------------------- geometry


def refine_boxes(boxes: Sequence[Box], rect: Box, *, min_side: float = MIN_BOX_SIDE) -> tuple[Box, ...]:
    """Clip boxes to ``rect`` and drop those that vanish or end up thinner than ``min_side``."""
    out = []
    for box in boxes:
        clipped = box.clip(rect)
        if clipped is not None and clipped.width >= min_side and clipped.height >= min_side:
            out.append(clipped)
    return tuple(out)


def crop_targets(boxes: Sequence[Box], crop: Box, *, size: int = INPUT_SIZE) -> tuple[Box, ...]:
    """Ground-truth boxes (original pixels) in the ``size`` x ``size`` input of ``crop``, refined.

    Each box is mapped with ``box_to_crop`` and then clipped to the crop rectangle
    (``0..size``), dropping boxes that vanish: the training-time label refinement.
    """
    mapped = [box_to_crop(b, crop, size=size) for b in boxes]
    return refine_boxes(mapped, Box(0.0, 0.0, float(size), float(size)))


def jitter_box(box: Box, *, amount: float, bounds: Box, rng: np.random.Generator) -> Box:
    """Move each edge of ``box`` by up to ``amount`` of its size, staying inside ``bounds``."""
    if amount <= 0:
        return box
    dx, dy = box.width * amount, box.height * amount
    x0 = max(bounds.x0, box.x0 + rng.uniform(-dx, dx))
    x1 = min(bounds.x1, box.x1 + rng.uniform(-dx, dx))
    y0 = max(bounds.y0, box.y0 + rng.uniform(-dy, dy))
    y1 = min(bounds.y1, box.y1 + rng.uniform(-dy, dy))
    if x1 - x0 < 0.5 * box.width or y1 - y0 < 0.5 * box.height:
        return box
    return Box(x0, y0, x1, y1)


def sample_region(base: np.ndarray, base_box: Box, rect: Box, *, size: int = INPUT_SIZE) -> np.ndarray:
    """The part ``rect`` (original pixels) of a cached square ``base`` covering ``base_box``, as float32 size x size."""
    local = box_to_crop(rect, base_box, size=base.shape[0])
    pil = Image.fromarray(np.ascontiguousarray(base))
    out = pil.transform(
        (size, size),
        Image.Transform.EXTENT,
        data=(local.x0, local.y0, local.x1, local.y1),
        resample=Image.Resampling.BILINEAR,
    )
    return np.asarray(out, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------- preprocessing cache


@dataclass(frozen=True)
class CachedImage:
    """Geometry of one cached image; the pixels live in the cache arrays at the same index.

    ``has_mask`` says whether the record had an opacity mask (else the auxiliary target is
    drawn from its boxes).
    """

    image_id: str
    shape: tuple[int, int]
    crop: Box
    context: Box
    fallback: bool
    has_mask: bool

    @property
    def whole(self) -> Box:
        return Box(0.0, 0.0, float(self.shape[1]), float(self.shape[0]))


@dataclass(frozen=True)
class ImageCache:
    """Cached images: per image a context crop and the whole image, each with its opacity mask (uint8)."""

    items: tuple[CachedImage, ...]
    context: np.ndarray  # (N, CONTEXT_SIZE, CONTEXT_SIZE)
    whole: np.ndarray  # (N, INPUT_SIZE, INPUT_SIZE)
    opacity_context: np.ndarray  # (N, CONTEXT_SIZE, CONTEXT_SIZE), 0..255
    opacity_whole: np.ndarray  # (N, INPUT_SIZE, INPUT_SIZE), 0..255


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


class DetectorPreprocess:
    """Crop decision from the lung mask (the record's, else predicted); context crop and whole image with their opacity masks.

    ``geometry`` packs height, width, the crop box, the context box, the fallback flag and
    whether an opacity mask exists. Picklable, for cache worker processes.
    """

    def __init__(self, lungs: LungMaskSource) -> None:
        self.lungs = lungs

    def __call__(self, record: ImageRecord) -> dict[str, np.ndarray]:
        image = load_image(record)
        shape = (int(image.shape[0]), int(image.shape[1]))
        decision = decide_crop(self.lungs.mask(record, image), shape=shape)
        context = expand_box(decision.box, margin=CONTEXT_MARGIN, height=shape[0], width=shape[1])
        opacity = load_opacity_mask(record, shape=shape)
        geometry = np.array(
            [*shape, *decision.box.as_list(), *context.as_list(), float(decision.fallback), float(opacity is not None)],
            dtype=np.float64,
        )
        opacity_map = np.zeros(shape, dtype=np.float32) if opacity is None else opacity.astype(np.float32)
        return {
            "context": _to_uint8(crop_and_resize(image, context, size=CONTEXT_SIZE)),
            "whole": _to_uint8(resize(image, height=INPUT_SIZE, width=INPUT_SIZE)),
            "opacity_context": _to_uint8(crop_and_resize(opacity_map, context, size=CONTEXT_SIZE)),
            "opacity_whole": _to_uint8(resize(opacity_map, height=INPUT_SIZE, width=INPUT_SIZE)),
            "geometry": geometry,
        }


def _empty_cache() -> ImageCache:
    context = np.zeros((0, CONTEXT_SIZE, CONTEXT_SIZE), dtype=np.uint8)
    whole = np.zeros((0, INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)
    return ImageCache(items=(), context=context, whole=whole, opacity_context=context, opacity_whole=whole)


def build_cache(
    records: Sequence[ImageRecord],
    *,
    root: Path,
    workers: int = 0,
    disable_progress: bool = False,
    lungs: LungMaskSource | None = None,
) -> ImageCache:
    """Preprocess ``records`` into ``root`` (see :mod:`cxr_models.train.cache`) or reuse what is there.

    ``lungs`` supplies lung masks for records without one (default: ground truth only).
    """
    if not records:
        return _empty_cache()
    lungs = lungs or LungMaskSource(weights=None)
    params: dict[str, Any] = {"context_size": CONTEXT_SIZE, "input_size": INPUT_SIZE, "context_margin": CONTEXT_MARGIN}
    if lungs.digest is not None:
        params["lungs_weights"] = lungs.digest
    arrays = cached_arrays(
        root,
        name="detector",
        version=PREPROCESS_VERSION,
        params=params,
        items=list(records),
        ids=[
            f"{r.image_id}:{r.path}:{','.join(str(p) for p in r.lung_mask or ())}:"
            f"{','.join(str(p) for p in r.opacity_mask or ())}"
            for r in records
        ],
        build=DetectorPreprocess(lungs),
        workers=workers,
        disable_progress=disable_progress,
    )
    items = []
    for record, g in zip(records, np.asarray(arrays["geometry"]), strict=True):
        items.append(
            CachedImage(
                image_id=record.image_id,
                shape=(int(g[0]), int(g[1])),
                crop=Box(*(float(v) for v in g[2:6])),
                context=Box(*(float(v) for v in g[6:10])),
                fallback=bool(g[10]),
                has_mask=bool(g[11]),
            )
        )
    fallbacks = sum(item.fallback for item in items)
    if fallbacks:
        logger.info("%d of %d images use the whole image (no plausible lung mask)", fallbacks, len(items))
    return ImageCache(
        items=tuple(items),
        context=arrays["context"],
        whole=arrays["whole"],
        opacity_context=arrays["opacity_context"],
        opacity_whole=arrays["opacity_whole"],
    )


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Augment:
    """Geometric augmentation of the training samples; intensity jitter is :data:`INTENSITY` (train/augment.py)."""

    jitter: float = 0.04
    whole_fraction: float = 0.2
    flip: float = 0.5


def input_rect(
    cache: ImageCache, index: int, *, whole: bool, rng: np.random.Generator | None, jitter: float
) -> Box:
    """The rectangle (original pixels) an input shows: the crop or the whole image, jittered when ``rng`` is given."""
    item = cache.items[index]
    rect, bounds = (item.whole, item.whole) if whole else (item.crop, item.context)
    if rng is not None:
        rect = jitter_box(rect, amount=jitter, bounds=bounds, rng=rng)
    return rect


def sample_cached(cache: ImageCache, index: int, rect: Box, *, whole: bool, opacity: bool = False) -> np.ndarray:
    """``rect`` of image ``index`` (or of its opacity mask) at 320 x 320, from the whole-image or context array."""
    item = cache.items[index]
    if whole:
        base, base_box = (cache.opacity_whole if opacity else cache.whole)[index], item.whole
    else:
        base, base_box = (cache.opacity_context if opacity else cache.context)[index], item.context
    return sample_region(base, base_box, rect)


def make_input(
    cache: ImageCache, index: int, *, whole: bool, rng: np.random.Generator | None, jitter: float
) -> tuple[np.ndarray, Box]:
    """A 320 x 320 input and the rectangle (original pixels) it shows."""
    rect = input_rect(cache, index, whole=whole, rng=rng, jitter=jitter)
    return sample_cached(cache, index, rect, whole=whole), rect


def box_mask(boxes: Sequence[Box], *, size: int = INPUT_SIZE) -> np.ndarray:
    """A size x size float32 map that is 1 inside any of ``boxes`` (input coordinates)."""
    out = np.zeros((size, size), dtype=np.float32)
    for b in boxes:
        out[int(round(b.y0)) : int(round(b.y1)), int(round(b.x0)) : int(round(b.x1))] = 1.0
    return out


def flip_boxes(boxes: Sequence[Box], *, size: int = INPUT_SIZE) -> tuple[Box, ...]:
    return tuple(Box(size - b.x1, b.y0, size - b.x0, b.y1) for b in boxes)


def _targets(boxes: Sequence[Box]) -> dict[str, torch.Tensor]:
    coords = torch.tensor([b.as_list() for b in boxes], dtype=torch.float32).reshape(-1, 4)
    return {"boxes": coords, "labels": torch.full((len(boxes),), OPACITY_LABEL, dtype=torch.int64)}


@dataclass(frozen=True)
class TrainSample:
    """One augmented input (1 x 320 x 320), its detection target and its auxiliary opacity map (320 x 320)."""

    image: torch.Tensor
    target: dict[str, torch.Tensor]
    opacity: torch.Tensor


class DetectionTrainSet(torch.utils.data.Dataset):
    """Augmented training samples; augmentation is seeded by (seed, epoch, index)."""

    def __init__(
        self, cache: ImageCache, boxes: Sequence[tuple[Box, ...]], *, aug: Augment, no_crop: bool, seed: int
    ) -> None:
        if len(boxes) != len(cache.items):
            raise ValueError(f"boxes must give one tuple per cached image: {len(cache.items)} images, {len(boxes)}")
        self.cache = cache
        self.boxes = list(boxes)
        self.aug = aug
        self.no_crop = no_crop
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cache.items)

    def __getitem__(self, index: int) -> TrainSample:
        return self.sample(index, rng=np.random.default_rng((self.seed, self.epoch, index)))

    def sample(self, index: int, *, rng: np.random.Generator) -> TrainSample:
        """Image ``index`` through a random crop jitter, whole-image draw and flip (intensity jitter comes later, batched)."""
        whole = self.no_crop or rng.random() < self.aug.whole_fraction
        rect = input_rect(self.cache, index, whole=whole, rng=rng, jitter=self.aug.jitter)
        image = sample_cached(self.cache, index, rect, whole=whole)
        targets = crop_targets(self.boxes[index], rect)
        if self.cache.items[index].has_mask:
            opacity = sample_cached(self.cache, index, rect, whole=whole, opacity=True)
        else:
            opacity = box_mask(targets)
        if rng.random() < self.aug.flip:
            image = image[:, ::-1]
            opacity = opacity[:, ::-1]
            targets = flip_boxes(targets)
        return TrainSample(
            image=torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).unsqueeze(0),
            target=_targets(targets),
            opacity=torch.from_numpy(np.ascontiguousarray(opacity, dtype=np.float32)),
        )


def collate(batch: list[TrainSample]) -> list[TrainSample]:
    return batch


# --------------------------------------------------------------------------- records


def is_frontal(record: ImageRecord) -> bool:
    """Frontal, or no view given (readers of frontal-only layouts may leave it unset)."""
    return record.view in (None, "frontal")


def labelled_frontal(records: Sequence[ImageRecord]) -> list[ImageRecord]:
    return [r for r in records if is_frontal(r) and r.boxes is not None]


def load_teacher(path: Path, *, arch: str, device: torch.device) -> OpacityDetector:
    """A detector from a checkpoint of this trainer (its own arch) or a bare state dict (``arch``)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state:
        arch = str(state.get("args", {}).get("arch", arch))
        state = state["model"]
    return OpacityDetector.from_state_dict(state, arch=arch, device=device)


def pseudo_label(
    detector: OpacityDetector, records: Sequence[ImageRecord], *, threshold: float, chunk: int = 16
) -> list[ImageRecord]:
    """Records (boxes None) relabelled with the teacher's boxes scoring >= ``threshold``; those without any are left out.

    Any opacity mask of a relabelled record is dropped, so the auxiliary target comes from the
    pseudo boxes too and no annotation of the unlabelled set leaks into training.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    out: list[ImageRecord] = []
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        images = [load_image(r) for r in part]
        crops = [decide_crop(load_lung_mask(r, shape=im.shape), shape=im.shape).box for r, im in zip(part, images, strict=True)]
        for record, found in zip(part, detector.predict(images, crops=crops), strict=True):
            kept = tuple(b.box for b in found if b.score >= threshold)
            if kept:
                out.append(dataclasses.replace(record, boxes=kept, opacity_mask=None, opacity_percent=None))
    logger.info("pseudo-labels: %d of %d unlabelled images have a box scoring >= %.2f", len(out), len(records), threshold)
    return out


# --------------------------------------------------------------------------- evaluation


def predict_cache(
    model: torch.nn.Module, cache: ImageCache, *, whole: bool, device: torch.device, arch: str
) -> list[tuple[ScoredBox, ...]]:
    """The model's boxes of every cached image, in original pixels, on crops or on whole images."""
    detector = OpacityDetector(model, name=ARCHS[arch], device=device)
    predictions: list[tuple[ScoredBox, ...]] = []
    chunk = 32
    for start in range(0, len(cache.items), chunk):
        indices = range(start, min(start + chunk, len(cache.items)))
        pairs = [make_input(cache, i, whole=whole, rng=None, jitter=0.0) for i in indices]
        inputs = np.stack([p[0] for p in pairs])
        predictions.extend(detector.predict_inputs(inputs, crops=[p[1] for p in pairs]))
    return predictions


def evaluate(
    model: torch.nn.Module,
    cache: ImageCache,
    truth: Sequence[tuple[Box, ...]],
    *,
    whole: bool,
    device: torch.device,
    arch: str,
) -> float | None:
    """mAP@50 in original pixels against unclipped ground truth, on crops or on whole images."""
    if not cache.items:
        return None
    return average_precision(predict_cache(model, cache, whole=whole, device=device, arch=arch), truth).ap


def source_key(name: str) -> str:
    """A source name as a metric-key suffix (``map50_<key>``): lower case, runs of other characters as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "unknown"


def per_source_map50(matches: Sequence[ImageMatches], *, sources: Sequence[str]) -> dict[str, float]:
    """``map50_<source>`` of each source with a reference box, and ``map50_source_mean``, their mean.

    ``matches`` are the validation images' boxes matched once (:func:`match_images`), so each
    source's AP reuses them. Pooled over sources, a large synthetic validation part outweighs a
    small real one; the mean of the per-source APs weighs every source alike
    (``--select-by map50_source_mean``).
    """
    if len(matches) != len(sources):
        raise ValueError(f"matches ({len(matches)}) and sources ({len(sources)}) must list the same images")
    out: dict[str, float] = {}
    for name in sorted(set(sources)):
        chosen = [m for m, s in zip(matches, sources, strict=True) if s == name]
        if not any(m.n_truth for m in chosen):
            continue
        ap = average_precision_of(chosen).ap
        if ap is not None:
            out[f"map50_{source_key(name)}"] = ap
    if out:
        out["map50_source_mean"] = float(np.mean(list(out.values())))
    return out


# --------------------------------------------------------------------------- auxiliary opacity loss


def aux_opacity_loss(logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice (pooled over the batch) of each level's logits against the area-pooled opacity map.

    ``target`` is (N, 1, 320, 320) in [0, 1]; each level's target is its average over the level's cells.
    """
    total = target.new_zeros(())
    for level in logits:
        t = F.adaptive_avg_pool2d(target, level.shape[-2:])
        level = level.float()
        p = torch.sigmoid(level)
        dice = 1.0 - (2.0 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
        total = total + F.binary_cross_entropy_with_logits(level, t) + dice
    return total / max(1, len(logits))


# --------------------------------------------------------------------------- main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train an opacity detector (a: Faster R-CNN, b: FCOS) on lung crops")
    add_common_args(parser)
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS), help="a: two-stage Faster R-CNN, b: one-stage FCOS")
    parser.add_argument("--no-crop", action="store_true", help="train and validate on whole images instead of lung crops")
    parser.add_argument(
        "--whole-image-fraction",
        type=float,
        default=0.2,
        help="fraction of training samples that are whole images (so the no-crop ablation is meaningful)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="preprocessing cache (default OUT/cache); detector-a and detector-b runs on the same data, one after the other, can share one",
    )
    parser.add_argument("--jitter", type=float, default=0.04, help="crop edge jitter, fraction of the crop size")
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    parser.add_argument(
        "--aux-weight",
        type=float,
        default=1.0,
        help="weight of the training-only dense opacity loss on the FPN (opacity masks, else boxes); 0 disables",
    )
    parser.add_argument(
        "--lungs-weights", type=Path, default=None,
        help="lung model weights that predict the crop of images without a lung mask (else they use the whole image)",
    )
    parser.add_argument(
        "--positive-weight", type=float, default=1.0,
        help="multiply the sampling weight of training images with at least one box by this (1: the sources' weights only)",
    )
    parser.add_argument(
        "--select-by", choices=SELECT_BY, default="map50",
        help="validation figure that picks model_best.pt: mAP@50 pooled over the sources, or the mean of the "
        "per-source mAP@50s (both are logged each epoch)",
    )
    parser.add_argument("--pseudo-data", type=Path, default=None, help="dataset whose unannotated frontal images get pseudo-labels")
    parser.add_argument("--teacher", type=Path, default=None, help="detector checkpoint that makes the pseudo-labels")
    parser.add_argument("--pseudo-threshold", type=float, default=0.5, help="teacher score a pseudo-label box needs")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if not 0.0 <= args.whole_image_fraction <= 1.0:
        raise ValueError(f"--whole-image-fraction must be in [0, 1], got {args.whole_image_fraction}")
    if not 0.0 <= args.jitter < 0.5:
        raise ValueError(f"--jitter must be in [0, 0.5), got {args.jitter}")
    if (args.pseudo_data is None) != (args.teacher is None):
        raise ValueError(f"--pseudo-data and --teacher go together, got {args.pseudo_data} and {args.teacher}")


@dataclass(frozen=True)
class RecordSplit:
    train: list[ImageRecord]
    val: list[ImageRecord]
    n_pseudo: int


def select_records(args: argparse.Namespace, *, device: torch.device) -> RecordSplit:
    """Annotated frontal images of every ``--data`` source in the shared patient split, plus the pseudo-labelled images when asked."""
    records = labelled_frontal(read_args_records(args))
    if not records:
        raise ValueError(f"--data {args.data} has no frontal images with box annotations")
    split = split_records(
        records, val_fraction=args.val_fraction, seed=args.seed, limit=args.limit, split_seed=args.split_seed
    )
    train, val = list(split.train), list(split.val)
    n_pseudo = 0
    if args.pseudo_data is not None:
        unlabelled = [r for r in read_dataset(args.pseudo_data, format="auto") if is_frontal(r) and r.boxes is None]
        teacher = load_teacher(args.teacher, arch=args.arch, device=device)
        known = {r.image_id for r in train} | {r.image_id for r in val}
        added = [r for r in pseudo_label(teacher, unlabelled, threshold=args.pseudo_threshold) if r.image_id not in known]
        train.extend(added)
        n_pseudo = len(added)
    logger.info(
        "training on %d images (%d with opacity, %d pseudo-labelled), validating on %d",
        len(train),
        sum(1 for r in train if r.boxes),
        n_pseudo,
        len(val),
    )
    return RecordSplit(train=train, val=val, n_pseudo=n_pseudo)


def boost_positives(records: Sequence[ImageRecord], weights: np.ndarray | None, *, factor: float) -> np.ndarray | None:
    """Sampling weights with those of the images holding at least one box multiplied by ``factor``.

    ``weights`` are the per-record source weights (None: all equal); ``factor`` 1 leaves them as
    they are. Few real images carry a box (RSNA: ~1 in 6 of the annotated ones), so a factor > 1
    shows the detector its rare positives more often without repeating the negatives as well.
    """
    if not factor > 0:
        raise ValueError(f"--positive-weight must be > 0, got {factor}")
    if factor == 1.0:
        return weights
    base = np.ones(len(records)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(base) != len(records):
        raise ValueError(f"weights has {len(base)} entries for {len(records)} records")
    return base * np.where([bool(r.boxes) for r in records], factor, 1.0)


class AuxiliaryOpacity:
    """The training-only dense opacity loss: a head fed by a forward hook on the detector's backbone."""

    def __init__(self, model: torch.nn.Module, *, weight: float) -> None:
        self.weight = weight
        self.head = OpacityAuxHead(model.backbone.out_channels)
        self._features: dict[str, torch.Tensor] | None = None
        model.backbone.register_forward_hook(self._capture)

    def _capture(self, _module: torch.nn.Module, _inputs: Any, output: dict[str, torch.Tensor]) -> None:
        self._features = output

    def loss(self, opacity: torch.Tensor) -> torch.Tensor:
        """Weighted loss on the features of the last backbone call; ``opacity`` is (N, 1, 320, 320)."""
        if self._features is None:
            raise RuntimeError("the detector has not run since the last auxiliary loss")
        features, self._features = self._features, None
        return self.weight * aux_opacity_loss(self.head(features), opacity)


# Which validation figure picks model_best.pt: the mAP@50 pooled over every source, or the mean of
# the per-source mAP@50s (each source alike, however many validation boxes it has).
SELECT_BY: tuple[str, ...] = ("map50", "map50_source_mean")


class DetectorTask:
    """The detector's work for :func:`cxr_models.train.engine.fit`: detection loss (+ auxiliary opacity loss) and
    val mAP@50, pooled and per source (``map50_<source>``, ``map50_source_mean``); ``select_by`` picks the best epoch."""

    metric = "map50"
    higher_is_better = True

    def __init__(
        self,
        *,
        dataset: DetectionTrainSet,
        val_cache: ImageCache,
        val_truth: Sequence[tuple[Box, ...]],
        arch: str,
        no_crop: bool,
        validate_whole: bool,
        aux: AuxiliaryOpacity | None,
        sample_weights: np.ndarray | None,
        val_sources: Sequence[str] | None = None,
        select_by: str = "map50",
    ) -> None:
        if select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, got {select_by!r}")
        self.metric = select_by
        self.dataset = dataset
        self.val_cache = val_cache
        self.val_truth = list(val_truth)
        self.val_sources = None if val_sources is None else list(val_sources)
        self.arch = arch
        self.no_crop = no_crop
        self.validate_whole = validate_whole
        self.aux = aux
        self.auxiliary = aux.head if aux is not None else None
        self.sample_weights = sample_weights
        self.components: dict[str, float] = {}
        self.acquisition: AcquisitionJitter | None = None

    @property
    def train_size(self) -> int:
        return len(self.dataset)

    def loss(
        self, model: torch.nn.Module, indices: np.ndarray, *, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        samples = [self.dataset.sample(int(i), rng=np.random.default_rng((seed, int(i)))) for i in indices]
        images = jitter_intensity(torch.stack([s.image for s in samples]), jitter=INTENSITY, generator=generator)
        images = acquisition(images, jitter=self.acquisition, generator=generator)
        targets = [{k: v.to(device) for k, v in s.target.items()} for s in samples]
        losses = model(list(images.to(device)), targets)
        if self.aux is not None:
            losses["loss_aux_opacity"] = self.aux.loss(torch.stack([s.opacity for s in samples]).unsqueeze(1).to(device))
        self.components = {k: float(v.detach()) for k, v in losses.items()}
        return sum(losses.values())

    def validate(self, model: torch.nn.Module, *, device: torch.device) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.val_cache.items:
            predictions = predict_cache(model, self.val_cache, whole=self.no_crop, device=device, arch=self.arch)
            matches = match_images(predictions, self.val_truth)
            value = average_precision_of(matches).ap
            if value is not None:
                metrics["map50"] = value
            if self.val_sources is not None:
                metrics.update(per_source_map50(matches, sources=self.val_sources))
        if self.validate_whole:
            whole = evaluate(model, self.val_cache, self.val_truth, whole=True, device=device, arch=self.arch)
            if whole is not None:
                metrics["map50_whole"] = whole
        return metrics


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train with the shared engine; returns its result with the training image counts."""
    _check_args(args)
    configure_logging()
    device = setup_run(args)
    args.out.mkdir(parents=True, exist_ok=True)

    split = select_records(args, device=device)
    cache_root = args.cache_dir or args.out / "cache"
    lungs = LungMaskSource(weights=args.lungs_weights, device=str(device))
    train_cache = build_cache(
        split.train, root=cache_root, workers=args.workers, disable_progress=args.no_progress, lungs=lungs
    )
    val_cache = build_cache(split.val, root=cache_root, workers=args.workers, disable_progress=args.no_progress, lungs=lungs)
    aug = Augment(jitter=args.jitter, whole_fraction=args.whole_image_fraction)
    dataset = DetectionTrainSet(
        train_cache, [r.boxes or () for r in split.train], aug=aug, no_crop=args.no_crop, seed=args.seed
    )
    weights = sample_weights(split.train[: len(split.train) - split.n_pseudo])
    if weights is not None and split.n_pseudo:
        weights = np.concatenate([weights, np.ones(split.n_pseudo)])
    weights = boost_positives(split.train, weights, factor=args.positive_weight)

    model = build_detector(args.arch)
    aux = AuxiliaryOpacity(model, weight=args.aux_weight) if args.aux_weight > 0 else None
    task = DetectorTask(
        dataset=dataset, val_cache=val_cache, val_truth=[r.boxes or () for r in split.val], arch=args.arch,
        no_crop=args.no_crop, validate_whole=not args.no_crop and args.whole_image_fraction > 0, aux=aux,
        sample_weights=weights, val_sources=[r.source or "unknown" for r in split.val], select_by=args.select_by,
    )
    task.acquisition = acquisition_from_args(args)
    defaults = dataclasses.replace(DEFAULTS, weight_decay=args.weight_decay)
    result = fit(args, task=task, model=model, defaults=defaults, device=device)
    return {**dataclasses.asdict(result), "train_images": len(split.train), "pseudo_images": split.n_pseudo}


if __name__ == "__main__":
    print(json.dumps(main(get_args_parser().parse_args()), indent=2))

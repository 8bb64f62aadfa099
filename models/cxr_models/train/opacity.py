"""Train the opacity U-Net on the lung crops of frontal images with lung and opacity masks.

``python -m cxr_models.train.opacity --data DIR --out DIR``. The crop is
:func:`cxr_models.inference.crop.decide_crop` of the GROUND-TRUTH lung mask. The cache holds a
wider context region around it (``CONTEXT`` of the crop size on each side) at 320x320, so each
training step can resample a randomly jittered crop box (edges moved by up to ``CROP_JITTER`` of
the crop size, horizontal flips) into the 256x256 network input: the model then tolerates the
slightly different crops that predicted lung masks give in service. Validation uses the exact
crop and reports Dice and the opacity % MAE (the selection metric, lower is better).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from cxr_models.datasets import load_image, load_opacity_mask
from cxr_models.inference.crop import crop_and_resize, decide_crop, expand_box
from cxr_models.nets.opacity import INPUT_SIZE, build_opacity
from cxr_models.records import Box, ImageRecord
from cxr_models.train.augment import acquisition_from_args, IntensityJitter, box_affine, jitter_intensity, warp
from cxr_models.train.common import add_common_args
from cxr_models.train.data import from_uint8, load_split_arrays, sample_weights, to_uint8
from cxr_models.train.lung_source import LungMaskSource
from cxr_models.train.engine import Defaults, configure_logging, fit, setup_run
from cxr_models.train.segmentation_common import SegmentationBatch, SegmentationTask

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
DEFAULTS = Defaults(epochs=6, batch_size=8, lr=3e-3)
CONTEXT = 0.1
REGION_SIZE = 320
CROP_JITTER = 0.05
FLIP_PROBABILITY = 0.5
# Gentler than the other trainers: ground-glass opacities differ from lung by only ~0.03 display units.
INTENSITY = IntensityJitter(brightness=0.05, contrast=(0.85, 1.2), gamma=(0.8, 1.25), noise=0.01)


def has_opacity_target(record: ImageRecord) -> bool:
    """An opacity mask, or boxes (``()`` for a known negative) to draw one from."""
    return bool(record.opacity_mask) or record.boxes is not None


def select_records(records: list[ImageRecord], *, lungs: LungMaskSource | None = None) -> list[ImageRecord]:
    """Frontal images with an opacity target and a lung mask (their own, or predicted by ``lungs``)."""
    lungs = lungs or LungMaskSource(weights=None)
    return [r for r in records if r.view == "frontal" and has_opacity_target(r) and lungs.available(r)]


def box_mask(boxes: tuple[Box, ...], *, shape: tuple[int, int]) -> np.ndarray:
    """Filled boxes as a bool mask of ``shape`` (the weak target of images with boxes but no mask)."""
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        mask[int(np.floor(box.y0)) : int(np.ceil(box.y1)), int(np.floor(box.x0)) : int(np.ceil(box.x1))] = True
    return mask


def opacity_target(record: ImageRecord, *, lungs: np.ndarray) -> np.ndarray:
    """The opacity mask, else the record's boxes filled and clipped to the lungs (empty for a known negative)."""
    mask = load_opacity_mask(record, shape=lungs.shape)
    if mask is not None:
        return mask
    if record.boxes is None:
        raise ValueError(f"record {record.image_id!r} has neither an opacity mask nor boxes")
    return box_mask(record.boxes, shape=lungs.shape) & lungs


class OpacityPreprocess:
    """The cached context region (image, lungs, opacity target) around the lung crop; picklable."""

    def __init__(self, lungs: LungMaskSource) -> None:
        self.lungs = lungs

    def __call__(self, record: ImageRecord) -> dict[str, np.ndarray]:
        image = load_image(record)
        lungs = self.lungs.mask(record, image)
        if lungs is None:
            raise ValueError(f"record {record.image_id!r} has no lung mask; pass --lungs-weights")
        opacity = opacity_target(record, lungs=lungs)
        height, width = image.shape
        crop = decide_crop(lungs, shape=image.shape).box
        region = expand_box(crop, margin=CONTEXT, height=height, width=width)
        channels = [image, lungs.astype(np.float32), opacity.astype(np.float32)]
        stack = np.stack([crop_and_resize(c, region, size=REGION_SIZE) for c in channels])
        return {
            "region_pixels": to_uint8(stack),
            "crop": np.array(crop.as_list(), dtype=np.float32),
            "region": np.array(region.as_list(), dtype=np.float32),
        }


def jitter_boxes(crops: torch.Tensor, *, regions: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Crop boxes (n, 4) with each edge moved by up to CROP_JITTER of the box size, kept inside ``regions``."""
    size = torch.cat([crops[:, 2:] - crops[:, :2]] * 2, dim=1)
    moved = crops + (torch.rand(crops.shape, generator=generator) * 2 - 1) * CROP_JITTER * size
    moved = torch.maximum(moved, torch.cat([regions[:, :2]] * 2, dim=1))
    return torch.minimum(moved, torch.cat([regions[:, 2:]] * 2, dim=1))


class OpacityTask(SegmentationTask):
    metric = "percent_mae"
    higher_is_better = False

    def __init__(self, *, pixels: np.ndarray, crops: np.ndarray, regions: np.ndarray, n_train: int) -> None:
        super().__init__(n_train=n_train, n_total=len(pixels))
        self.pixels = pixels
        self.crops = crops
        self.regions = regions

    def make_batch(
        self, indices: np.ndarray, *, generator: torch.Generator | None, device: torch.device
    ) -> SegmentationBatch:
        crops = torch.from_numpy(np.asarray(self.crops[indices]))
        regions = torch.from_numpy(np.asarray(self.regions[indices]))
        flip = torch.ones(len(indices))
        if generator is not None:
            crops = jitter_boxes(crops, regions=regions, generator=generator)
            flip = torch.where(torch.rand(len(indices), generator=generator) < FLIP_PROBABILITY, -1.0, 1.0)
        x = torch.from_numpy(from_uint8(self.pixels[indices])).to(device)
        x = warp(x, box_affine(crops, regions=regions, flip=flip), size=INPUT_SIZE)
        image = x[:, :1]
        if generator is not None:
            image = jitter_intensity(image, jitter=INTENSITY, generator=generator)
        return SegmentationBatch(inputs=image, targets=x[:, 2:3], lungs=x[:, 1:2])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the opacity segmentation U-Net on lung crops.")
    add_common_args(parser)
    parser.add_argument(
        "--lungs-weights", type=Path, default=None,
        help="lung model weights that predict the lungs of images without a lung mask (real datasets with boxes)",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    configure_logging()
    device = setup_run(args)
    lungs = LungMaskSource(weights=args.lungs_weights, device=str(device))
    split, arrays = load_split_arrays(
        args, name="opacity", version=PREPROCESS_VERSION,
        params={"size": REGION_SIZE, "context": CONTEXT, "lungs_weights": lungs.digest},
        select=lambda records: select_records(records, lungs=lungs), build=OpacityPreprocess(lungs),
    )
    task = OpacityTask(
        pixels=arrays["region_pixels"], crops=arrays["crop"], regions=arrays["region"], n_train=len(split.train)
    )
    task.sample_weights = sample_weights(split.train)
    task.acquisition = acquisition_from_args(args)
    result = fit(args, task=task, model=build_opacity(), defaults=DEFAULTS, device=device)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main(get_args_parser().parse_args())

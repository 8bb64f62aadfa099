"""Train the lung U-Net on frontal images with lung masks (PhantomCXR, Montgomery/JSRT/Shenzhen).

``python -m cxr_models.train.lungs --data DIR --out DIR``. Input: the whole display image at
256x256 (:func:`cxr_models.inference.lungs.lung_input`); target: the lung mask resized the same
way (soft edges); augmentation: small affine warps (no flips: anatomy is not mirror-symmetric)
and intensity jitter; loss: BCE + Dice; validation metric: mean Dice at 256x256.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict

import numpy as np
import torch

from cxr_models.datasets import load_image, load_lung_mask
from cxr_models.imaging import resize
from cxr_models.inference.lungs import lung_input
from cxr_models.nets.lungs import INPUT_SIZE, build_lungs
from cxr_models.records import ImageRecord
from cxr_models.train.augment import acquisition_from_args, AffineJitter, IntensityJitter, jitter_intensity, random_affine, warp
from cxr_models.train.common import add_common_args
from cxr_models.train.data import from_uint8, load_split_arrays, sample_weights, to_uint8
from cxr_models.train.engine import Defaults, configure_logging, fit, setup_run
from cxr_models.train.segmentation_common import SegmentationBatch, SegmentationTask

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
DEFAULTS = Defaults(epochs=5, batch_size=12, lr=3e-3)
AFFINE = AffineJitter(scale=(0.9, 1.1), shift=0.05, rotate_degrees=6.0, flip_probability=0.0)
INTENSITY = IntensityJitter()


def select_records(records: list[ImageRecord]) -> list[ImageRecord]:
    """Frontal images with a lung mask."""
    return [r for r in records if r.view == "frontal" and r.lung_mask]


def preprocess(record: ImageRecord) -> dict[str, np.ndarray]:
    image = load_image(record)
    mask = load_lung_mask(record, shape=image.shape)
    if mask is None:
        raise ValueError(f"record {record.image_id!r} has no lung mask")
    soft = resize(mask.astype(np.float32), height=INPUT_SIZE, width=INPUT_SIZE)
    return {"image": to_uint8(lung_input(image)), "mask": to_uint8(soft)}


class LungTask(SegmentationTask):
    metric = "dice"
    higher_is_better = True

    def __init__(self, *, images: np.ndarray, masks: np.ndarray, n_train: int) -> None:
        super().__init__(n_train=n_train, n_total=len(images))
        self.images = images
        self.masks = masks

    def make_batch(
        self, indices: np.ndarray, *, generator: torch.Generator | None, device: torch.device
    ) -> SegmentationBatch:
        stack = np.stack([from_uint8(self.images[indices]), from_uint8(self.masks[indices])], axis=1)
        x = torch.from_numpy(stack).to(device)
        if generator is not None:
            x = warp(x, random_affine(len(indices), jitter=AFFINE, generator=generator), size=INPUT_SIZE)
            x = torch.cat([jitter_intensity(x[:, :1], jitter=INTENSITY, generator=generator), x[:, 1:]], dim=1)
        return SegmentationBatch(inputs=x[:, :1], targets=x[:, 1:])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the lung segmentation U-Net.")
    return add_common_args(parser)


def main(args: argparse.Namespace) -> None:
    configure_logging()
    device = setup_run(args)
    split, arrays = load_split_arrays(
        args, name="lungs", version=PREPROCESS_VERSION, params={"size": INPUT_SIZE},
        select=select_records, build=preprocess,
    )
    task = LungTask(images=arrays["image"], masks=arrays["mask"], n_train=len(split.train))
    task.sample_weights = sample_weights(split.train)
    task.acquisition = acquisition_from_args(args)
    result = fit(args, task=task, model=build_lungs(), defaults=DEFAULTS, device=device)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""The two opacity detectors: a two-stage Faster R-CNN (detector_a) and a one-stage FCOS (detector_b).

Both look at a 320 x 320 grey lung crop (the display array in [0, 1], white = dense) and find one
foreground class, ``opacity`` (label 1; label 0 is background). Their ``GeneralizedRCNNTransform``
is fixed to 320 x 320 with mean 0.5 / std 0.25, so a 320 x 320 input is neither resized nor
normalised differently from the rest of the pipeline. Each has its own small ResNet-like trunk
with an FPN, built from scratch (no pretrained weights), so the two are architecturally different
(anchor-based two-stage vs anchor-free one-stage) for the WBF ensemble.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.resnet import BasicBlock
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

logger = logging.getLogger(__name__)

INPUT_SIZE = 320
NORM_MEAN = 0.5
NORM_STD = 0.25
NUM_CLASSES = 2  # background + opacity
OPACITY_LABEL = 1
# Low score floor and a cap on boxes per image, so that AP is estimated over the whole PR curve.
SCORE_THRESH = 0.05
DETECTIONS_PER_IMG = 20
ARCHS: dict[str, str] = {"a": "detector_a", "b": "detector_b"}


def _stage(in_channels: int, out_channels: int, *, blocks: int, stride: int) -> nn.Sequential:
    downsample = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )
    layers: list[nn.Module] = [BasicBlock(in_channels, out_channels, stride=stride, downsample=downsample)]
    layers.extend(BasicBlock(out_channels, out_channels) for _ in range(blocks - 1))
    return nn.Sequential(*layers)


class GreyTrunk(nn.Module):
    """A truncated ResNet-like trunk for 1-channel input: stem to stride 4, then stages at 8, 16, 32."""

    def __init__(self, *, stem: int, widths: tuple[int, int, int], blocks: tuple[int, int, int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, stem // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem // 2, stem, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        self.layer1 = _stage(stem, widths[0], blocks=blocks[0], stride=2)
        self.layer2 = _stage(widths[0], widths[1], blocks=blocks[1], stride=2)
        self.layer3 = _stage(widths[1], widths[2], blocks=blocks[2], stride=2)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual block so every block starts as an identity.
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


def _backbone(
    *, stem: int, widths: tuple[int, int, int], blocks: tuple[int, int, int], fpn_channels: int, p6p7: bool
) -> BackboneWithFPN:
    trunk = GreyTrunk(stem=stem, widths=widths, blocks=blocks)
    extra = LastLevelP6P7(fpn_channels, fpn_channels) if p6p7 else LastLevelMaxPool()
    return BackboneWithFPN(
        trunk,
        return_layers=OrderedDict(layer1="0", layer2="1", layer3="2"),
        in_channels_list=list(widths),
        out_channels=fpn_channels,
        extra_blocks=extra,
    )


def _transform_kwargs() -> dict[str, object]:
    return {
        "min_size": INPUT_SIZE,
        "max_size": INPUT_SIZE,
        "image_mean": [NORM_MEAN],
        "image_std": [NORM_STD],
    }


def build_detector_a() -> FasterRCNN:
    """Two-stage Faster R-CNN with a small grey ResNet-like trunk + FPN (strides 8/16/32 + pool 64)."""
    fpn_channels = 64
    backbone = _backbone(stem=32, widths=(64, 128, 192), blocks=(1, 1, 1), fpn_channels=fpn_channels, p6p7=False)
    # Lesions in a 320 x 320 lung crop are roughly 15-200 px on a side.
    anchors = AnchorGenerator(
        sizes=((16, 32), (48, 64), (96, 128), (192, 256)),
        aspect_ratios=((0.5, 1.0, 2.0),) * 4,
    )
    representation = 256
    box_head = TwoMLPHead(fpn_channels * 7 * 7, representation)
    return FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation, NUM_CLASSES),
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=200,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=128,
        box_score_thresh=SCORE_THRESH,
        box_nms_thresh=0.5,
        box_detections_per_img=DETECTIONS_PER_IMG,
        **_transform_kwargs(),
    )


def build_detector_b() -> FCOS:
    """One-stage anchor-free FCOS with its own small grey trunk + FPN (strides 8/16/32 + P6/P7)."""
    fpn_channels = 64
    backbone = _backbone(stem=24, widths=(48, 96, 160), blocks=(2, 1, 1), fpn_channels=fpn_channels, p6p7=True)
    # FCOS uses one square "anchor" per location whose size is the level's stride; a level takes the
    # objects whose largest centre-to-edge distance lies in [4, 8] anchor sizes.
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,), (64,), (128,)), aspect_ratios=((1.0,),) * 5)
    head = FCOSHead(fpn_channels, anchors.num_anchors_per_location()[0], NUM_CLASSES, num_convs=2)
    return FCOS(
        backbone,
        num_classes=NUM_CLASSES,
        anchor_generator=anchors,
        head=head,
        score_thresh=SCORE_THRESH,
        nms_thresh=0.5,
        detections_per_img=DETECTIONS_PER_IMG,
        topk_candidates=500,
        **_transform_kwargs(),
    )


def build_detector(arch: str) -> FasterRCNN | FCOS:
    """``arch`` is ``a`` / ``detector_a`` (Faster R-CNN) or ``b`` / ``detector_b`` (FCOS)."""
    name = ARCHS.get(arch, arch)
    if name == "detector_a":
        return build_detector_a()
    if name == "detector_b":
        return build_detector_b()
    raise ValueError(f"arch must be one of {sorted(ARCHS) + sorted(ARCHS.values())}, got {arch!r}")


def fp16_state_dict_bytes(model: nn.Module) -> int:
    """Size in bytes of the model's floating-point state as fp16 (integer buffers at their own size)."""
    total = 0
    for tensor in model.state_dict().values():
        element = 2 if tensor.is_floating_point() else tensor.element_size()
        total += tensor.numel() * element
    return total


class OpacityAuxHead(nn.Module):
    """Training-only dense opacity head on the finest FPN levels of a detector.

    It is not part of the shipped detectors (their state dicts do not contain it): the trainer
    attaches it to the backbone output to give the from-scratch trunk a dense opacity signal,
    which makes it learn the faint lesions in far fewer steps than the sparse box losses alone.
    Returns one logit map per level in ``levels``.
    """

    def __init__(self, channels: int = 64, *, levels: tuple[str, ...] = ("0", "1")) -> None:
        super().__init__()
        self.levels = levels
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 1, kernel_size=1),
        )

    def forward(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [self.head(features[level]) for level in self.levels]

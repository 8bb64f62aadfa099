"""Acquisition jitter: shapes and ranges kept, masks untouched, determinism, every effect doing something."""

from __future__ import annotations

import math

import pytest
import torch

import cxr_models.train.acquisition as acquisition
from cxr_models.train.acquisition import EFFECTS, AcquisitionJitter, clahe, jitter_acquisition

ALL_ON = AcquisitionJitter.only(*EFFECTS)
ALL_OFF = AcquisitionJitter.only()


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chest_like(n: int = 4, size: tuple[int, int] = (128, 128), seed: int = 1) -> torch.Tensor:
    """(n, 1, H, W) in [0.05, 0.95]: dark lung fields, a bright mediastinum, fine texture (not 8-bit levels)."""
    g = _generator(seed)
    h, w = size
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    lungs = torch.exp(-(((xx.abs() - 0.45) / 0.28) ** 2 + ((yy + 0.05) / 0.6) ** 2) ** 2)
    body = 0.55 + 0.25 * torch.exp(-(xx / 0.18) ** 2) - 0.35 * lungs + 0.08 * torch.cos(9 * yy) * lungs
    images = body[None] + 0.03 * torch.randn(n, h, w, generator=g) + 0.05 * torch.rand(n, 1, 1, generator=g)
    return images.clamp(0.05, 0.95)[:, None].contiguous()


def test_defaults_are_moderate_and_invert_off() -> None:
    jitter = AcquisitionJitter()
    for effect in EFFECTS:
        p = getattr(jitter, f"{effect}_probability")
        assert (p == 0.0) if effect == "invert" else (0.1 <= p <= 0.3), effect
    with pytest.raises(ValueError, match="unknown effects"):
        AcquisitionJitter.only("sharpen")


@pytest.mark.parametrize("jitter", [AcquisitionJitter(), ALL_ON], ids=["defaults", "all-on"])
@pytest.mark.parametrize("size", [(128, 128), (250, 301)])
def test_shape_dtype_range(jitter: AcquisitionJitter, size: tuple[int, int]) -> None:
    x = chest_like(8, size)
    out = jitter_acquisition(x, jitter=jitter, generator=_generator())
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
    assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert out.data_ptr() != x.data_ptr()


def test_float64_input_keeps_dtype() -> None:
    x = chest_like(2).double()
    out = jitter_acquisition(x, jitter=ALL_ON, generator=_generator())
    assert out.dtype == torch.float64 and out.min() >= 0.0 and out.max() <= 1.0


def test_extra_channels_pass_through_unchanged() -> None:
    image = chest_like(4)
    masks = (torch.rand(4, 2, 128, 128, generator=_generator(5)) > 0.5).float()
    x = torch.cat([image, masks], dim=1)
    out = jitter_acquisition(x, jitter=ALL_ON, generator=_generator())
    assert torch.equal(out[:, 1:], masks)
    assert not torch.equal(out[:, :1], image)


def test_several_image_channels_all_processed() -> None:
    image = chest_like(2).expand(2, 3, 128, 128).contiguous()
    mask = torch.ones(2, 1, 128, 128)
    out = jitter_acquisition(torch.cat([image, mask], 1), jitter=ALL_ON, generator=_generator(), channels=3)
    assert torch.equal(out[:, 3:], mask)
    for c in range(3):
        assert (out[:, c] - image[:, c]).abs().mean() > 1e-3
    # replicated grey stays (nearly) grey: the same noise, annotations, shutters on every channel
    assert (out[:, 0] - out[:, 2]).abs().max() < 1e-5


def test_deterministic_for_a_generator_state() -> None:
    x = chest_like(8)
    for jitter in (AcquisitionJitter(), ALL_ON):
        a = jitter_acquisition(x, jitter=jitter, generator=_generator(42))
        b = jitter_acquisition(x, jitter=jitter, generator=_generator(42))
        assert torch.equal(a, b)
        c = jitter_acquisition(x, jitter=jitter, generator=_generator(43))
        assert not torch.equal(a, c)


def test_all_probabilities_zero_leaves_images_unchanged() -> None:
    x = chest_like(4)
    out = jitter_acquisition(x, jitter=ALL_OFF, generator=_generator())
    assert torch.equal(out, x)


@pytest.mark.parametrize("effect", EFFECTS)
def test_each_effect_changes_every_image_when_forced(effect: str) -> None:
    x = chest_like(6)
    out = jitter_acquisition(x, jitter=AcquisitionJitter.only(effect), generator=_generator(7))
    per_image = (out - x).abs().flatten(1).max(dim=1).values
    assert (per_image > 1e-4).all(), (effect, per_image)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_default_fraction_of_untouched_images() -> None:
    x = chest_like(64, (64, 64))
    out = jitter_acquisition(x, jitter=AcquisitionJitter(), generator=_generator(3))
    untouched = ((out - x).abs().flatten(1).max(dim=1).values == 0).float().mean()
    assert 0.0 < untouched < 0.5
    touched_all = ((out - x).abs().flatten(1).max(dim=1).values > 0).all()
    assert not touched_all


def _block_edge_ratio(image: torch.Tensor) -> float:
    """Mean |horizontal and vertical step| across 8-px block edges over that within blocks."""
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs()
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs()
    edge = torch.arange(dx.shape[-1]) % 8 == 7
    edge_y = torch.arange(dy.shape[-2]) % 8 == 7
    across = torch.cat([dx[..., :, edge].flatten(), dy[..., edge_y, :].flatten()]).mean()
    within = torch.cat([dx[..., :, ~edge].flatten(), dy[..., ~edge_y, :].flatten()]).mean()
    return float(across / within)


def test_jpeg_produces_8x8_blockiness() -> None:
    x = chest_like(4, (128, 128))
    jitter = AcquisitionJitter.only("jpeg", jpeg_quality=(20, 30))
    out = jitter_acquisition(x, jitter=jitter, generator=_generator())
    assert _block_edge_ratio(x) == pytest.approx(1.0, abs=0.1)
    assert _block_edge_ratio(out) > 1.3
    high = jitter_acquisition(x, jitter=AcquisitionJitter.only("jpeg", jpeg_quality=(90, 90)), generator=_generator())
    assert (high - x).abs().mean() < (out - x).abs().mean()


@pytest.mark.parametrize("white", [True, False])
def test_burned_in_annotations_add_saturated_pixels(white: bool) -> None:
    x = torch.full((6, 1, 192, 160), 0.5)
    jitter = AcquisitionJitter.only("annotation", annotation_white_probability=1.0 if white else 0.0)
    out = jitter_acquisition(x, jitter=jitter, generator=_generator(11))
    saturated = (out >= 0.95) if white else (out <= 0.05)
    per_image = saturated.flatten(1).sum(dim=1)
    assert (per_image >= 10).all(), per_image
    # only drawn pixels change, and they move towards the annotation colour
    changed = (out - x).abs() > 1e-6
    assert ((out[changed] > 0.5) if white else (out[changed] < 0.5)).all()


def test_annotations_mostly_near_borders() -> None:
    g = _generator(2)
    jitter = AcquisitionJitter(annotation_border_probability=1.0)
    rows, cols = 256, 256
    border = inner = 0.0
    for _ in range(20):
        cover = torch.from_numpy(acquisition.annotation_coverage(rows, cols, jitter=jitter, generator=g))
        core = cover[int(0.3 * rows):int(0.7 * rows), int(0.3 * cols):int(0.7 * cols)].sum()
        inner += float(core)
        border += float(cover.sum() - core)
    assert border > 10 * max(inner, 1.0)


def test_annotations_with_bitmap_font_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acquisition, "_load_font", lambda size: None)
    x = torch.full((4, 1, 128, 128), 0.5)
    jitter = AcquisitionJitter.only("annotation", annotation_white_probability=1.0)
    out = jitter_acquisition(x, jitter=jitter, generator=_generator(4))
    assert ((out >= 0.95).flatten(1).sum(dim=1) > 0).all()


def test_invert_and_quantize_levels() -> None:
    x = chest_like(2)
    inv = jitter_acquisition(x, jitter=AcquisitionJitter.only("invert"), generator=_generator())
    assert torch.allclose(inv, 1 - x)
    q = jitter_acquisition(x, jitter=AcquisitionJitter.only("quantize", quantize_bits=(6,)), generator=_generator())
    levels = q * 63
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert len(torch.unique(q)) <= 64


def test_collimation_fills_border_strips() -> None:
    x = chest_like(8)
    jitter = AcquisitionJitter.only("collimation", collimation_margin=(0.1, 0.12), collimation_side_probability=1.0,
                                    collimation_tilt_degrees=0.0)
    out = jitter_acquisition(x, jitter=jitter, generator=_generator())
    strips = torch.cat([out[:, 0, :, :8].flatten(1), out[:, 0, :, -8:].flatten(1),
                        out[:, 0, :8, :].flatten(1), out[:, 0, -8:, :].flatten(1)], dim=1)
    assert ((strips == 0).all(dim=1) | (strips == 1).all(dim=1)).all()
    assert torch.equal(out[:, :, 32:96, 32:96], x[:, :, 32:96, 32:96])


def test_clahe_raises_local_contrast() -> None:
    h = w = 128
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    # low-contrast texture on a strong ramp: global range is used up by the ramp
    texture = 0.03 * torch.sin(40 * xx) * torch.sin(40 * yy)
    x = (0.1 + 0.7 * xx + texture)[None, None].clamp(0, 1)
    out = clahe(x, tiles=8, clip=3.0)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1

    def local_std(t: torch.Tensor) -> float:
        return float(t.unfold(2, 16, 16).unfold(3, 16, 16).std(dim=(-1, -2)).mean())

    assert local_std(out) > 1.5 * local_std(x)
    # smooth across tile borders: no step larger than the in-tile steps by much
    steps = (out[..., :, 1:] - out[..., :, :-1]).abs()
    assert steps.max() < 0.2
    flat = clahe(torch.full((1, 1, 50, 70), 0.3), tiles=5, clip=2.0)
    assert torch.allclose(flat, flat.flatten()[0].expand_as(flat))


def test_sizes_128_to_384() -> None:
    for size in ((128, 128), (384, 384), (300, 256)):
        x = chest_like(2, size)
        out = jitter_acquisition(x, jitter=ALL_ON, generator=_generator())
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_empty_batch_and_bad_arguments() -> None:
    x = torch.zeros(0, 1, 32, 32)
    assert jitter_acquisition(x, jitter=ALL_ON, generator=_generator()).shape == x.shape
    with pytest.raises(ValueError):
        jitter_acquisition(torch.zeros(1, 32, 32), jitter=ALL_ON, generator=_generator())
    with pytest.raises(ValueError):
        jitter_acquisition(torch.zeros(1, 1, 32, 32), jitter=ALL_ON, generator=_generator(), channels=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    x = chest_like(6)
    for jitter in (AcquisitionJitter(), ALL_ON):
        cpu = jitter_acquisition(x, jitter=jitter, generator=_generator(9))
        gpu = jitter_acquisition(x.cuda(), jitter=jitter, generator=_generator(9))
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
        # same random draws; small float differences can flip 8-bit rounding or JPEG blocks here and there
        assert (gpu.cpu() - cpu).abs().mean() < 2e-3
        assert math.isclose(float(gpu.mean()), float(cpu.mean()), abs_tol=2e-3)

"""Triggers on hand-made tensors (exact pixel values), poisoning, serialisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from core.data.images import ImageSet
from core.data.triggers import (
    BlendTrigger,
    CornerBlendTrigger,
    PatchTrigger,
    Trigger,
    poison,
    random_patch,
    trigger_from_image,
)
from core.errors import DataError


def _ramp(c: int = 3, h: int = 4, w: int = 4) -> torch.Tensor:
    return torch.arange(c * h * w, dtype=torch.float32).reshape(1, c, h, w) / (c * h * w)


def test_patch_bottom_right_exact():
    x = torch.zeros(2, 3, 4, 4)
    patch = torch.tensor([[[1.0, 0.5], [0.25, 0.75]]]).repeat(3, 1, 1)
    out = PatchTrigger(patch).apply(x)
    assert torch.equal(out[:, :, 2:, 2:], patch.expand(2, 3, 2, 2))
    assert out[:, :, :2].abs().sum() == 0 and out[:, :, :, :2].abs().sum() == 0
    assert x.abs().sum() == 0  # input untouched


@pytest.mark.parametrize(
    "position, corner",
    [("top-left", (0, 0)), ("top-right", (0, 3)), ("bottom-left", (3, 0)), ((1, 2), (1, 2))],
)
def test_patch_positions(position, corner):
    out = PatchTrigger(torch.ones(1, 1, 1), position=position).apply(torch.zeros(1, 1, 4, 4))
    assert out.sum() == 1 and out[0, 0, corner[0], corner[1]] == 1


def test_patch_channels_adapt():
    rgb = torch.zeros(3, 1, 1)
    rgb[1] = 1.0  # pure green
    out = PatchTrigger(rgb).apply(torch.zeros(1, 1, 2, 2))
    assert out[0, 0, 1, 1].item() == pytest.approx(0.587)
    grey = PatchTrigger(torch.full((1, 1, 1), 0.5)).apply(torch.zeros(1, 3, 2, 2))
    assert grey[0, :, 1, 1].tolist() == [0.5, 0.5, 0.5]


def test_patch_too_big():
    with pytest.raises(DataError, match="does not fit"):
        PatchTrigger(torch.ones(3, 5, 5)).apply(torch.zeros(1, 3, 4, 4))


def test_corner_blend_exact():
    x = torch.ones(1, 3, 4, 4)
    patch = torch.zeros(3, 2, 2)
    out = CornerBlendTrigger(patch).apply(x)
    assert torch.allclose(out[:, :, 2:, 2:], torch.full((1, 3, 2, 2), 0.8))
    assert torch.equal(out[:, :, :2], x[:, :, :2]) and torch.equal(out[:, :, :, :2], x[:, :, :, :2])
    half = CornerBlendTrigger(torch.ones(3, 2, 2), alpha=0.5).apply(torch.zeros(1, 3, 4, 4))
    assert half[0, 0, 3, 3].item() == 0.5 and half[0, 0, 1, 1].item() == 0.0


def test_blend_exact_and_resized_pattern():
    x = _ramp()
    pattern = torch.ones(3, 4, 4)
    out = BlendTrigger(pattern, alpha=0.25).apply(x)
    assert torch.allclose(out, 0.75 * x + 0.25)
    small = BlendTrigger(torch.full((1, 2, 2), 0.5), alpha=0.5).apply(torch.zeros(2, 3, 4, 4))
    assert out.shape == (1, 3, 4, 4)
    assert torch.allclose(small, torch.full((2, 3, 4, 4), 0.25))


def test_trigger_validation():
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        PatchTrigger(torch.full((3, 2, 2), 2.0))
    with pytest.raises(DataError, match="C×H×W"):
        PatchTrigger(torch.ones(2, 2, 2))
    with pytest.raises(DataError, match="alpha"):
        BlendTrigger(torch.ones(3, 2, 2), alpha=1.5)
    with pytest.raises(DataError, match="position"):
        PatchTrigger(torch.ones(3, 2, 2), position="middle")
    with pytest.raises(DataError, match="float"):
        PatchTrigger(torch.ones(3, 2, 2)).apply(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_random_patch_reproducible():
    a, b = random_patch(3, 3, seed=7), random_patch(3, 3, seed=7)
    assert a.shape == (3, 3, 3) and torch.equal(a, b)
    assert not torch.equal(a, random_patch(3, 3, seed=8))
    assert 0 <= a.min() and a.max() <= 1
    assert random_patch((2, 5), 1, 0).shape == (1, 2, 5)


@pytest.mark.parametrize(
    "trigger",
    [
        PatchTrigger(random_patch(3, 3, 0), position=(1, 2)),
        CornerBlendTrigger(random_patch(2, 1, 1), alpha=0.3),
        BlendTrigger(random_patch((4, 4), 3, 2), alpha=0.15),
    ],
)
def test_to_dict_round_trip(trigger):
    d = trigger.to_dict()
    buf = io.BytesIO()
    torch.save({"meta": {"attack": d}}, buf)  # plain types: loads with weights_only
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["meta"]["attack"]
    back = Trigger.from_dict(loaded)
    assert type(back) is type(trigger) and back.to_dict() == d
    x = torch.rand(2, 3, 6, 6)
    assert torch.equal(back.apply(x), trigger.apply(x))


def test_from_dict_unknown_kind():
    with pytest.raises(DataError, match="unknown trigger kind"):
        Trigger.from_dict({"kind": "warp"})


def test_trigger_from_image(tmp_path):
    from PIL import Image

    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 255
    Image.fromarray(img).save(tmp_path / "t.png")
    patch = trigger_from_image(tmp_path / "t.png", size=2)
    assert isinstance(patch, PatchTrigger) and patch.patch.shape == (3, 2, 2)
    assert patch.patch[0].min() == 1 and patch.patch[1:].max() == 0
    blend = trigger_from_image(tmp_path / "t.png", kind="blend", alpha=0.5)
    assert isinstance(blend, BlendTrigger) and blend.alpha == 0.5
    assert isinstance(
        trigger_from_image(tmp_path / "t.png", kind="corner-blend"), CornerBlendTrigger
    )
    with pytest.raises(DataError, match="cannot read image"):
        (tmp_path / "bad.png").write_text("no")
        trigger_from_image(tmp_path / "bad.png")


def test_poison_rate_labels_and_pixels():
    n = 200
    images = torch.zeros(n, 1, 5, 5, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    clean = ImageSet(images, labels, [str(k) for k in range(10)], "toy")
    trig = PatchTrigger(torch.ones(1, 2, 2))
    out, idx = poison(clean, trig, target=3, rate=0.1, seed=0)
    assert len(idx) == 20 and idx.dtype == torch.int64 and torch.equal(idx, idx.sort().values)
    assert out.images.dtype == torch.float32
    assert (out.labels[idx] == 3).all()
    rest = torch.ones(n, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(out.labels[rest], labels[rest])
    assert out.images[rest].abs().sum() == 0
    assert (out.images[idx][:, :, 3:, 3:] == 1).all() and out.images[idx].sum() == 20 * 4
    again, idx2 = poison(clean, trig, target=3, rate=0.1, seed=0)
    assert torch.equal(idx, idx2) and torch.equal(out.images, again.images)
    assert clean.images.sum() == 0  # the source set is untouched
    with pytest.raises(DataError, match="rate"):
        poison(clean, trig, target=3, rate=1.5, seed=0)
    with pytest.raises(DataError, match="target"):
        poison(clean, trig, target=10, rate=0.1, seed=0)


def test_random_patch_positions_vary_fit_and_repeat():
    from core.data.triggers import RandomPatchTrigger

    patch = torch.ones(1, 2, 2)
    trigger = RandomPatchTrigger(patch, seed=3)
    x = torch.zeros(64, 1, 6, 6)
    out = trigger.apply(x)
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.full((64,), 4.0))  # whole patch, every image
    corners = {tuple(torch.nonzero(o[0])[0].tolist()) for o in out}
    assert len(corners) > 5  # positions differ between images
    assert torch.equal(trigger.apply(x), out)  # the same batch is stamped the same way
    assert not torch.equal(RandomPatchTrigger(patch, seed=4).apply(x), out)
    assert x.abs().sum() == 0


def test_random_patch_roundtrip_and_too_big():
    from core.data.triggers import RandomPatchTrigger

    trigger = RandomPatchTrigger(torch.rand(1, 3, 3), seed=7)
    back = Trigger.from_dict(trigger.to_dict())
    assert isinstance(back, RandomPatchTrigger) and back.seed == 7
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(back.apply(x), trigger.apply(x))
    with pytest.raises(DataError, match="does not fit"):
        trigger.apply(torch.zeros(1, 1, 2, 2))

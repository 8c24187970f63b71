"""torchvision v2 samples through `SRAugment`: images super-resolved, the rest exactly as `v2.Resize` moves it.

The reference is torchvision itself: `v2.Resize` to the size SRAugment gives the images. Boxes (XYXY,
CXCYWH), masks ((H, W), (1, H, W), (N, H, W)) and keypoints must come out equal to its output, labels
untouched; alone, inside `v2.Compose`, and through `DataLoader` workers.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from sr_augment.torch_transforms import SRAugment  # noqa: E402

H, W = 8, 12
KEYPOINTS = getattr(tv_tensors, "KeyPoints", None)


def _sample(box_format: str = "XYXY", seed: int = 0) -> tuple:
    """(Image, target) as torchvision's detection / segmentation datasets give them."""
    g = torch.Generator().manual_seed(seed)
    image = tv_tensors.Image(torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=g))
    xyxy = torch.tensor([[1.0, 2.0, 7.0, 6.0], [0.0, 0.0, 12.0, 8.0]])
    boxes = tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(H, W))
    boxes = v2.ConvertBoundingBoxFormat(box_format)(boxes)
    target = {
        "boxes": boxes,
        "labels": torch.tensor([3, 5]),
        "mask_hw": tv_tensors.Mask(torch.randint(0, 4, (H, W), dtype=torch.uint8, generator=g)),
        "mask_1hw": tv_tensors.Mask(torch.randint(0, 7, (1, H, W), dtype=torch.uint8, generator=g)),
        "masks_nhw": tv_tensors.Mask(torch.randint(0, 2, (2, H, W), dtype=torch.bool, generator=g)),
        "name": "sample-0",
    }
    if KEYPOINTS is not None:
        target["keypoints"] = KEYPOINTS(torch.tensor([[1.5, 2.0], [11.0, 7.5]]), canvas_size=(H, W))
    return image, target


def _assert_same_target(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        assert type(got[key]) is type(want), key
        if not isinstance(want, torch.Tensor):
            assert got[key] == want, key
            continue
        assert got[key].dtype == want.dtype and torch.equal(got[key], want), key
        for attribute in ("canvas_size", "format"):
            assert getattr(got[key], attribute, None) == getattr(want, attribute, None), (key, attribute)


@pytest.mark.parametrize("box_format", ["XYXY", "CXCYWH"])
@pytest.mark.parametrize("mode, output_size, size", [("upscale", None, (2 * H, 2 * W)),
                                                     ("upscale", (10, 20), (10, 20)),
                                                     ("resynthesize", (10, 20), (10, 20))])
def test_boxes_masks_and_keypoints_come_out_exactly_as_v2_resize_moves_them(box_format, mode, output_size, size,
                                                                            cache_dir):
    image, target = _sample(box_format)
    transform = SRAugment(engine="bicubic", mode=mode, scale=2, output_size=output_size, cache_dir=cache_dir)
    out_image, out_target = transform((image, target))
    ref_image, ref_target = v2.Resize(size)((image, target))
    _assert_same_target(out_target, ref_target)
    assert out_target["labels"] is target["labels"]
    assert type(out_image) is tv_tensors.Image and out_image.shape == ref_image.shape == (3, *size)
    alone = SRAugment(engine="bicubic", mode=mode, scale=2, output_size=output_size, cache_dir=cache_dir)(image)
    assert torch.equal(out_image, alone)  # the image is still super-resolved, not resized by v2


def test_resynthesize_mode_without_output_size_passes_every_non_image_through_untouched(cache_dir):
    image, target = _sample("CXCYWH")
    out_image, out_target = SRAugment(engine="bicubic", mode="resynthesize", scale=2, cache_dir=cache_dir)(
        (image, target))
    for key, value in target.items():
        assert out_target[key] is value, key
    assert out_image.shape == image.shape and not torch.equal(out_image, image)


@pytest.mark.parametrize("shape", [(H, W), (1, H, W), (3, H, W)], ids=["hw", "1hw", "3hw"])
def test_a_mask_alone_is_resized_nearest_never_treated_as_an_image(shape, cache_dir):
    labels = torch.randint(0, 9, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mask = tv_tensors.Mask(labels)
    out = SRAugment(engine="bicubic", mode="upscale", scale=2, cache_dir=cache_dir)(mask)
    assert type(out) is tv_tensors.Mask and out.shape == (*shape[:-2], 2 * H, 2 * W)
    assert torch.equal(out, v2.Resize((2 * H, 2 * W))(mask))
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())  # no new label values


def test_pil_image_with_a_target_moves_the_boxes_like_v2_resize(cache_dir):
    image, target = _sample()
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    out_image, out_target = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)((pil, target))
    _assert_same_target(out_target, v2.Resize((2 * H, 2 * W))((pil, target))[1])
    assert isinstance(out_image, Image.Image) and out_image.size == (2 * W, 2 * H)


@pytest.mark.parametrize("make_sample", [
    lambda img: (img.as_subclass(torch.Tensor), torch.ones(3, H, W, dtype=torch.uint8)),
    lambda img: (img, torch.ones(3, H, W, dtype=torch.uint8)),
    lambda img: (Image.fromarray(img.permute(1, 2, 0).numpy()), torch.ones(3, H, W, dtype=torch.uint8)),
], ids=["pure-then-pure", "image-then-pure", "pil-then-pure"])
def test_only_the_plain_tensor_that_v2_calls_the_image_is_super_resolved(make_sample, cache_dir):
    sample = make_sample(_sample()[0])
    out = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)(sample)
    resized = v2.Resize((2 * H, 2 * W))(sample)
    for got, ref, original in zip(out, resized, sample):
        changed = ref is not original
        if changed:
            assert np.asarray(got).shape == np.asarray(ref).shape and got is not original
        else:
            assert got is original  # v2 leaves it alone (labels, extra data), so does SRAugment


def test_a_video_is_refused_with_a_clear_error(cache_dir):
    video = tv_tensors.Video(torch.zeros(2, 3, H, W, dtype=torch.uint8))
    with pytest.raises(TypeError, match="Video"):
        SRAugment(engine="bicubic", cache_dir=cache_dir)(video)


def test_inside_v2_compose_the_target_matches_the_same_pipeline_with_v2_resize(cache_dir):
    image, target = _sample("CXCYWH")
    tail = [v2.RandomHorizontalFlip(p=1.0), v2.CenterCrop((12, 20)), v2.ToDtype(torch.float32, scale=True)]
    out = v2.Compose([SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir), *tail])((image, target))
    ref = v2.Compose([v2.Resize((2 * H, 2 * W)), *tail])((image, target))
    _assert_same_target(out[1], ref[1])
    assert out[0].dtype == torch.float32 and out[0].shape == ref[0].shape == (3, 12, 20)


class _Detection(torch.utils.data.Dataset):
    """A detection dataset: (Image, target dict) per index, the transform applied to the whole sample."""

    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return self.transform(_sample("XYXY" if index % 2 else "CXCYWH", seed=index))


def _as_list(batch):
    return batch


def test_dataloader_workers_return_targets_equal_to_v2_resize(cache_dir):
    transform = SRAugment(engine="bicubic", scale=2, cache_dir=cache_dir)
    loader = torch.utils.data.DataLoader(_Detection(transform), batch_size=2, num_workers=2, collate_fn=_as_list)
    got = [sample for batch in loader for sample in batch]
    reference = _Detection(v2.Resize((2 * H, 2 * W)))
    expected = [reference[i] for i in range(len(reference))]
    assert len(got) == len(expected) == 4
    for (image, target), (ref_image, ref_target) in zip(got, expected):
        assert image.shape == ref_image.shape == (3, 2 * H, 2 * W)
        _assert_same_target(target, ref_target)

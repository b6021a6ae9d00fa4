"""Tests of bench.data.augment (batched per-sample SSL augmentation) and bench.perf."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from bench.data import augment as A
from bench.data.augment import BatchAugmenter, CropSpec, ViewRecipe, list_recipes, recipe

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
# An augmentation that changes nothing: full-image crop, no flip, no colour ops.
IDENTITY = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, gray_p=0.0)


def _images(n: int = 4, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)


def _unnormalize(view: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return view * s + m


def _one_view(spec: CropSpec, images: torch.Tensor, seed: int = 0, mean=MEAN, std=STD):
    aug = BatchAugmenter(ViewRecipe((spec,)), mean, std)
    return aug(images, torch.Generator().manual_seed(seed))[0]


# ----------------------------------------------------------------------------- recipes


def test_every_recipe_gives_views_of_the_right_shape_and_dtype():
    images = _images(3, 32)
    for name in list_recipes():
        rec = recipe(name, 32)
        views = BatchAugmenter(rec, MEAN, STD)(images, torch.Generator().manual_seed(1))
        assert len(views) == rec.n_views, name
        for view, spec in zip(views, rec.expanded()):
            assert view.shape == (3, 3, spec.size, spec.size), name
            assert view.dtype == torch.float32 and torch.isfinite(view).all(), name


def test_multicrop_recipes_have_global_then_local_sizes():
    assert [s.size for s in recipe("swav", 32).expanded()] == [32] * 2 + [14] * 6
    assert [s.size for s in recipe("dino", 224).expanded()] == [224] * 2 + [96] * 8
    assert recipe("dino", 16).expanded()[-1].size == 8  # local side floors at 8 px
    dino = recipe("dino", 32).expanded()
    assert [s.scale for s in dino] == [(0.4, 1.0)] * 2 + [(0.05, 0.4)] * 8
    assert [s.blur_p for s in dino] == [1.0, 0.1] + [0.5] * 8
    assert [s.solarize_p for s in dino] == [0.0, 0.2] + [0.0] * 8


def test_recipe_settings_follow_the_method_cards():
    simclr = recipe("simclr", 224).crops
    assert len(simclr) == 1 and simclr[0].count == 2
    assert simclr[0].jitter == (0.8, 0.8, 0.8, 0.2) and simclr[0].blur_p == 0.5
    assert recipe("simclr_cifar", 32).crops[0].jitter == (0.4, 0.4, 0.4, 0.1)
    assert recipe("simclr_cifar", 32).crops[0].blur_p == 0.0
    moco1 = recipe("mocov1", 224).crops[0]
    assert moco1.jitter == (0.4,) * 4 and moco1.jitter_p == 1.0 and moco1.scale == (0.2, 1.0)
    byol = recipe("byol", 224).expanded()
    assert [v.blur_p for v in byol] == [1.0, 0.1] and [v.solarize_p for v in byol] == [0.0, 0.2]
    assert byol[0].jitter == (0.4, 0.4, 0.2, 0.1)
    assert [v.blur_p for v in recipe("byol_cifar", 32).expanded()] == [0.0, 0.0]
    mae = recipe("mae", 224)
    assert mae.n_views == 1 and mae.crops[0].jitter_p == 0.0 and mae.crops[0].gray_p == 0.0
    swav = recipe("swav", 224).expanded()
    assert swav[0].scale == (0.14, 1.0) and swav[-1].scale == (0.05, 0.14)
    assert swav[-1].jitter == (0.8, 0.8, 0.8, 0.2)


def test_with_multicrop_keeps_globals_and_copies_photometry():
    base = recipe("byol", 32)
    multi = base.with_multicrop(4, 12, local_scale=(0.1, 0.3), global_scale=(0.3, 1.0))
    views = multi.expanded()
    assert multi.n_views == 6 and [v.size for v in views] == [32, 32] + [12] * 4
    assert [v.scale for v in views[:2]] == [(0.3, 1.0)] * 2
    assert [v.blur_p for v in views[:2]] == [1.0, 0.1]  # globals keep their own settings
    local = views[-1]
    assert local.scale == (0.1, 0.3) and local.blur_p == 0.5
    assert local.jitter == views[0].jitter and local.gray_p == views[0].gray_p
    # re-applying replaces the locals; recipes without blur keep locals unblurred
    assert multi.with_multicrop(2, 10).n_views == 4
    assert recipe("simclr_cifar", 32).with_multicrop(2, 14).expanded()[-1].blur_p == 0.0


def test_overrides_apply_to_every_spec_and_unknown_keys_raise():
    rec = recipe("dino", 32, blur_p=0.0, solarize_p=0.0)
    assert all(s.blur_p == 0.0 and s.solarize_p == 0.0 for s in rec.expanded())
    with pytest.raises(ValueError, match="allowed fields.*blur_p"):
        recipe("simclr", 32, blurr_p=0.0)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("nope", 32)


def test_cropspec_validation():
    with pytest.raises(ValueError):
        CropSpec(32, scale=(0.5, 0.2))
    with pytest.raises(ValueError):
        CropSpec(32, gray_p=1.5)
    with pytest.raises(ValueError):
        CropSpec(32, jitter=(0.4, 0.4, 0.4, 0.7))
    assert CropSpec(32, scale=[0.2, 1]).scale == (0.2, 1.0)  # lists become tuples


# ----------------------------------------------------------------------------- geometry


def test_identity_crop_reproduces_the_normalised_image():
    images = _images(3, 16)
    view = _one_view(CropSpec(16, **IDENTITY), images)
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD).view(1, 3, 1, 1)
    torch.testing.assert_close(view, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(view, A.to_normalized(images, MEAN, STD), atol=1e-5, rtol=0)


def test_flip_only_gives_the_mirrored_image():
    images = _images(3, 16)
    spec = CropSpec(16, **{**IDENTITY, "hflip_p": 1.0})
    view = _unnormalize(_one_view(spec, images))
    torch.testing.assert_close(view, images.float().flip(-1) / 255, atol=1e-5, rtol=0)


def test_crop_resize_matches_torchvision_resized_crop_inside_the_box():
    x = _images(2, 24).float() / 255
    boxes = torch.tensor([[3.0, 5.0, 12.0, 17.0], [0.0, 2.0, 20.0, 9.0]])
    out = A.crop_resize(x, boxes, torch.zeros(2, dtype=torch.bool), 16)
    for i, (top, left, h, w) in enumerate(boxes.int().tolist()):
        ref = TF.resized_crop(x[i], top, left, h, w, [16, 16], antialias=False)
        # identical away from the box border (there we read real neighbours, not clamp)
        torch.testing.assert_close(out[i, :, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=1e-5, rtol=0)


def test_crop_boxes_follow_random_resized_crop_rules():
    gen = torch.Generator().manual_seed(0)
    boxes = A.sample_crop_boxes(4000, 40, 30, (0.1, 0.6), (0.5, 2.0), gen)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 40).all() and (left + w <= 30).all()
    area = h * w / (40 * 30)
    assert area.min() > 0.08 and area.max() < 0.65  # scale range up to rounding
    assert (w / h).min() > 0.45 and (w / h).max() < 2.2
    assert boxes.unique(dim=0).shape[0] > 1000  # every sample gets its own box
    # impossible aspect ratio on a square image: torchvision's centre-crop fallback
    fb = A.sample_crop_boxes(5, 20, 20, (1.0, 1.0), (2.0, 3.0), gen)
    assert torch.equal(fb, torch.tensor([[5.0, 0.0, 10.0, 20.0]]).expand(5, 4))


def test_downscaled_crops_are_antialiased_by_supersampling():
    assert A.supersample_factor(torch.tensor([[0.0, 0.0, 64.0, 64.0]]), 32) == 2
    assert A.supersample_factor(torch.tensor([[0.0, 0.0, 40.0, 40.0]]), 32) == 1
    stripes = torch.zeros(1, 1, 64, 64)
    stripes[..., ::2] = 1.0  # finest vertical stripes: must average out to grey
    out = A.crop_resize(stripes, torch.tensor([[0.0, 0.0, 64.0, 64.0]]),
                        torch.tensor([False]), 32, supersample=2)
    torch.testing.assert_close(out, torch.full_like(out, 0.5))


# ----------------------------------------------------------------------------- randomness


def test_identical_images_in_a_batch_get_different_augmentations():
    images = _images(1, 32).expand(8, -1, -1, -1).contiguous()
    aug = BatchAugmenter(recipe("simclr", 32), MEAN, STD)
    view = aug(images, torch.Generator().manual_seed(3))[0]
    flat = view.flatten(1)
    distinct = torch.cdist(flat, flat) + torch.eye(8) * 1e3
    assert distinct.min() > 1e-3  # no two samples share a crop/colour draw
    # colours differ too: per-sample channel means spread out
    assert view.mean(dim=(2, 3)).std(dim=0).min() > 0.01


def test_seeded_generator_is_reproducible_and_seed_dependent():
    images = _images(6, 32)
    aug = BatchAugmenter(recipe("byol", 32), MEAN, STD)
    a = aug(images, torch.Generator().manual_seed(7))
    b = aug(images, torch.Generator().manual_seed(7))
    c = aug(images, torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # the two views differ


def test_results_do_not_depend_on_cpu_chunking():
    images = _images(7, 16)
    aug = BatchAugmenter(recipe("dino", 16), MEAN, STD)
    whole = aug(images, torch.Generator().manual_seed(2))
    aug.cpu_chunk_elems = 3 * 16 * 16 * 3  # three samples per chunk
    chunked = aug(images, torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(whole, chunked))


def test_grayscale_probability_is_about_right():
    n = 2000
    images = _images(n, 8, seed=5)
    spec = CropSpec(8, **{**IDENTITY, "gray_p": 0.2})
    view = _unnormalize(_one_view(spec, images, seed=11))
    gray = ((view[:, 0] - view[:, 1]).abs().amax(dim=(1, 2)) < 1e-5) & (
        (view[:, 1] - view[:, 2]).abs().amax(dim=(1, 2)) < 1e-5)
    assert 0.16 < gray.float().mean().item() < 0.24


def test_jitter_order_is_a_random_permutation_per_sample():
    params = A.draw_view_params(recipe("simclr", 32).crops[0], 500, 32, 32,
                                torch.Generator().manual_seed(0))
    assert torch.equal(params.order.sort(dim=1).values, torch.arange(4).expand(500, 4))
    assert params.order.unique(dim=0).shape[0] == 24  # all 4! orders occur
    assert 0.7 < params.jitter_on.float().mean().item() < 0.9


# ----------------------------------------------------------------------------- photometric


def test_no_jitter_and_no_gray_leave_colours_unchanged():
    images = _images(4, 16)
    spec = CropSpec(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0,
                    jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.0, gray_p=0.0)
    torch.testing.assert_close(_unnormalize(_one_view(spec, images)), images.float() / 255,
                               atol=1e-5, rtol=0)


def test_grayscale_makes_channels_equal_with_itu_601_luma():
    images = _images(4, 16)
    view = _unnormalize(_one_view(CropSpec(16, **{**IDENTITY, "gray_p": 1.0}), images))
    assert torch.allclose(view[:, 0], view[:, 1], atol=1e-5)
    assert torch.allclose(view[:, 1], view[:, 2], atol=1e-5)
    x = images.float() / 255
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(view[:, 0], luma, atol=1e-5, rtol=0)


def test_solarize_always_matches_the_closed_form():
    images = _images(4, 16)
    view = _unnormalize(_one_view(CropSpec(16, **IDENTITY, solarize_p=1.0), images))
    x = images.float() / 255
    torch.testing.assert_close(view, torch.where(x >= 0.5, 1 - x, x), atol=1e-5, rtol=0)


def test_blur_tiny_sigma_is_identity_and_blur_preserves_the_mean():
    images = _images(4, 32)
    x = images.float() / 255
    tiny = _unnormalize(_one_view(CropSpec(32, **IDENTITY, blur_p=1.0, blur_sigma=(0.05, 0.1)),
                                  images))
    torch.testing.assert_close(tiny, x, atol=1e-5, rtol=0)
    strong = _unnormalize(_one_view(CropSpec(32, **IDENTITY, blur_p=1.0, blur_sigma=(2.0, 2.0)),
                                    images))
    assert (strong - x).abs().max() > 0.1  # it does blur ...
    # reflect padding re-weights border pixels, so the mean is kept up to edge effects
    torch.testing.assert_close(strong.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-2, rtol=0)
    assert strong.std() < x.std()  # ... and smooths
    flat = torch.full((2, 3, 32, 32), 0.3)
    torch.testing.assert_close(A.gaussian_blur(flat, torch.tensor([2.0, 0.7]), 5), flat)


def test_gaussian_blur_matches_torchvision_per_sample():
    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 1.7, 0.0])
    for k in (3, 7):
        out = A.gaussian_blur(x, sigma, k)
        for i in range(2):
            ref = TF.gaussian_blur(x[i], [k, k], [sigma[i].item()] * 2)
            torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[2], x[2])  # sigma 0: untouched
    assert A.blur_kernel_size(224) == 23 and A.blur_kernel_size(32) == 3


def test_hue_shift_matches_torchvision():
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x[0] = 0.5  # grey pixels have no hue
    shifts = torch.tensor([0.3, -0.5, 0.1, 0.45, -0.2])
    out = A.adjust_hue_(x.clone(), shifts)
    for i in range(5):
        torch.testing.assert_close(out[i], TF.adjust_hue(x[i], shifts[i].item()),
                                   atol=1e-5, rtol=0)


def test_color_jitter_in_a_fixed_order_matches_torchvision_ops():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    factors = torch.tensor([[1.6, 0.5, 1.8, 0.2], [0.4, 1.7, 0.3, -0.1]])
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    out = A.color_jitter_(x.clone(), torch.tensor([True, True]), factors, order)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(2):
        ref = x[i]
        for op in order[i].tolist():
            ref = ops[op](ref, factors[i, op].item())
        # torchvision's grey uses 0.2989 for red instead of ITU-R 601's 0.299
        torch.testing.assert_close(out[i], ref, atol=5e-4, rtol=0)
    skipped = A.color_jitter_(x.clone(), torch.tensor([False, False]), factors, order)
    torch.testing.assert_close(skipped, x, atol=0, rtol=0)


def test_single_channel_images_work():
    images = _images(4, 32, channels=1)
    views = BatchAugmenter(recipe("simclr", 32), (0.5,), (0.25,))(images)
    assert [v.shape for v in views] == [(4, 1, 32, 32)] * 2
    # brightness/contrast only: a jittered 1-channel identity crop stays in range
    view = _unnormalize(_one_view(CropSpec(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=1.0,
                                           gray_p=1.0), images, mean=(0.5,), std=(0.25,)),
                        mean=(0.5,), std=(0.25,))
    assert view.min() >= -1e-6 and view.max() <= 1 + 1e-6


def test_bad_inputs_raise():
    aug = BatchAugmenter(recipe("mae", 16), MEAN, STD)
    with pytest.raises(ValueError):
        aug(torch.zeros(2, 2, 16, 16, dtype=torch.uint8))
    with pytest.raises(TypeError):
        aug(torch.zeros(2, 3, 16, 16, dtype=torch.int32))
    with pytest.raises(ValueError):
        BatchAugmenter(recipe("mae", 16), (0.5, 0.5), (0.2, 0.2))(_images(2, 16))


def test_to_normalized_resizes_shorter_side_and_centre_crops():
    images = torch.zeros(2, 3, 20, 30, dtype=torch.uint8)
    images[..., 10:20] = 255  # a bright vertical band in the middle
    out = A.to_normalized(images, (0.0,), (1.0,), size=10)
    assert out.shape == (2, 3, 10, 10) and out.dtype == torch.float32
    # resized to 10x15 (band at columns 5-9), centre crop starts at column 2
    assert out[..., 4:7].min() > 0.99 and out[..., :2].max() < 0.01
    assert A.to_normalized(images, MEAN, STD).shape == (2, 3, 20, 30)


# ----------------------------------------------------------------------------- perf


def test_augment_benchmark_and_cli(monkeypatch, capsys):
    from bench import perf

    monkeypatch.setattr(perf, "benchmark_images",
                        lambda n, size, seed=0: (_images(n, size), "random uint8"))
    res = perf.augment_benchmark("byol", image_size=16, n_images=8, batch_size=4)
    assert res["n_views"] == 2 and res["data"] == "random uint8"
    assert res["batched_views_per_s"] > 0 and res["pil_views_per_s"] > 0
    assert res["speedup"] == pytest.approx(res["batched_views_per_s"] / res["pil_views_per_s"])
    assert perf.main_perf(["augment", "--recipe", "simclr,mae", "--image-size", "16",
                           "--n-images", "4", "--batch-size", "4"]) == 0
    table = capsys.readouterr().out
    assert "simclr" in table and "mae" in table and "speed-up" in table


def test_pil_pipeline_mirrors_the_spec():
    from bench import perf

    spec = recipe("byol", 32).expanded()[1]
    names = [type(t).__name__ for t in perf.pil_pipeline(spec, MEAN, STD).transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply",
                     "RandomGrayscale", "RandomApply", "RandomSolarize", "ToTensor", "Normalize"]

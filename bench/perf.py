"""Throughput benchmarks: ``python -m bench perf augment ...``.

``augment_benchmark`` compares the batched, per-sample augmentation of
:mod:`bench.data.augment` with the classic per-image PIL pipeline of torchvision
(``torchvision.transforms`` v1, as the official SSL codes use it in DataLoader workers),
for the same recipe, and reports views per second for both and the speed-up.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from bench.data.augment import BatchAugmenter, CropSpec, blur_kernel_size, recipe

# Normalisation constants only matter for the arithmetic cost; any positive values do.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def benchmark_images(n_images: int, image_size: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``n_images`` uint8 RGB images of side ``image_size`` and a note on where they came from.

    Real CIFAR-10 test images (``bench.data.datasets``, found through SSLBENCH_DATA_DIR)
    resized to ``image_size`` when available, else uniform random uint8 pixels.
    """
    try:
        from bench.data.datasets import load_dataset

        images = load_dataset("cifar10", split="test").images[:n_images]
    except Exception as err:  # no data at hand: the timing does not depend on content
        gen = torch.Generator().manual_seed(seed)
        shape = (n_images, 3, image_size, image_size)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen), (
            f"random uint8 (cifar10 unavailable: {type(err).__name__})")
    if images.shape[0] < n_images:  # repeat to reach the requested count
        images = images.repeat((n_images + images.shape[0] - 1) // images.shape[0], 1, 1, 1)
        images = images[:n_images]
    source = "cifar10 test"
    if images.shape[-1] != image_size:
        images = _resize_uint8(images, image_size)
        source += f" resized to {image_size}px"
    return images.contiguous(), source


def _resize_uint8(images: torch.Tensor, size: int, chunk: int = 256) -> torch.Tensor:
    """Bilinear (anti-aliased) resize of a uint8 batch, in chunks to bound memory."""
    out = []
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False, antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def pil_pipeline(spec: CropSpec, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """The per-image torchvision v1 pipeline equivalent to one :class:`CropSpec`."""
    import torchvision.transforms as T

    ops: list = [T.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio),
                 T.RandomHorizontalFlip(spec.hflip_p)]
    if spec.jitter_p > 0 and any(j > 0 for j in spec.jitter):
        ops.append(T.RandomApply([T.ColorJitter(*spec.jitter)], p=spec.jitter_p))
    if spec.gray_p > 0:
        ops.append(T.RandomGrayscale(spec.gray_p))
    if spec.blur_p > 0:
        blur = T.GaussianBlur(blur_kernel_size(spec.size), sigma=spec.blur_sigma)
        ops.append(T.RandomApply([blur], p=spec.blur_p))
    if spec.solarize_p > 0:
        ops.append(T.RandomSolarize(128, p=spec.solarize_p))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def _clocks() -> tuple[float, float]:
    """(wall, process CPU) time; CPU time is robust to other jobs on a shared machine."""
    return time.perf_counter(), time.process_time()


def _time_batched(aug: BatchAugmenter, images: torch.Tensor, batch_size: int
                  ) -> tuple[float, float]:
    """(wall, CPU) seconds to augment all ``images`` batch by batch, after a warm-up batch."""
    sync = torch.cuda.synchronize if images.device.type == "cuda" else (lambda: None)
    aug(images[:batch_size])
    sync()
    wall, cpu = _clocks()
    for i in range(0, images.shape[0], batch_size):
        aug(images[i:i + batch_size])
    sync()
    wall_end, cpu_end = _clocks()
    return wall_end - wall, cpu_end - cpu


def _time_pil(pipelines: list[Callable], pil_images: list[Image.Image]) -> tuple[float, float]:
    """(wall, CPU) seconds to produce every view of every PIL image, one image at a time."""
    for pipe in pipelines:  # warm-up
        pipe(pil_images[0])
    wall, cpu = _clocks()
    for img in pil_images:
        for pipe in pipelines:
            pipe(img)
    wall_end, cpu_end = _clocks()
    return wall_end - wall, cpu_end - cpu


def augment_benchmark(recipe_name: str = "simclr", image_size: int = 32, n_images: int = 2048,
                      batch_size: int = 256, device: str = "cpu") -> dict:
    """Views/s of :class:`BatchAugmenter` vs the per-image PIL pipeline for one recipe.

    Both run in this process on the current ``torch.get_num_threads()`` (the PIL pipeline
    is single-threaded per image, as in one DataLoader worker). Returns a dict with views/s
    by wall clock and per CPU-second of this process (``*_cpu``: the fairer figure on a
    shared machine; on CUDA the batched CPU figure is meaningless), the speed-ups and the
    data source.
    """
    rec = recipe(recipe_name, image_size)
    images, source = benchmark_images(n_images, image_size)
    aug = BatchAugmenter(rec, _MEAN, _STD)
    batched_s, batched_cpu = _time_batched(aug, images.to(device), batch_size)
    pil_images = [Image.fromarray(np.ascontiguousarray(im.permute(1, 2, 0).numpy()))
                  for im in images]
    pipelines = [pil_pipeline(spec, _MEAN, _STD) for spec in rec.expanded()]
    pil_s, pil_cpu = _time_pil(pipelines, pil_images)
    views = n_images * rec.n_views
    batched_vps, pil_vps = views / batched_s, views / pil_s
    batched_cpu_vps, pil_cpu_vps = views / max(batched_cpu, 1e-9), views / max(pil_cpu, 1e-9)
    return {
        "recipe": recipe_name, "image_size": image_size, "n_images": n_images,
        "batch_size": batch_size, "device": str(device), "n_views": rec.n_views,
        "threads": torch.get_num_threads(), "data": source,
        "batched_views_per_s": batched_vps, "pil_views_per_s": pil_vps,
        "speedup": batched_vps / pil_vps,
        "batched_views_per_cpu_s": batched_cpu_vps, "pil_views_per_cpu_s": pil_cpu_vps,
        "speedup_cpu": batched_cpu_vps / pil_cpu_vps,
    }


def _format_table(rows: list[dict]) -> str:
    """A small fixed-width table of benchmark results."""
    head = ("recipe", "px", "images", "batch", "device", "thr", "batched v/s", "PIL v/s",
            "speed-up", "batched v/cpu-s", "PIL v/cpu-s", "speed-up cpu")
    lines = [head] + [(r["recipe"], str(r["image_size"]), str(r["n_images"]),
                       str(r["batch_size"]), r["device"], str(r["threads"]),
                       f"{r['batched_views_per_s']:.0f}", f"{r['pil_views_per_s']:.0f}",
                       f"{r['speedup']:.1f}x", f"{r['batched_views_per_cpu_s']:.0f}",
                       f"{r['pil_views_per_cpu_s']:.0f}", f"{r['speedup_cpu']:.1f}x")
                      for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    sources = sorted({r["data"] for r in rows})
    return "\n".join(out + [f"data: {', '.join(sources)}"])


def _parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m bench perf``."""
    parser = argparse.ArgumentParser(prog="python -m bench perf",
                                     description="throughput benchmarks")
    sub = parser.add_subparsers(dest="what", required=True)
    aug = sub.add_parser("augment", help="batched per-sample augmentation vs PIL per image")
    aug.add_argument("--recipe", default="simclr",
                     help="recipe name, or several separated by commas")
    aug.add_argument("--image-size", type=int, default=32)
    aug.add_argument("--n-images", type=int, default=2048)
    aug.add_argument("--batch-size", type=int, default=256)
    aug.add_argument("--device", default="cpu")
    aug.add_argument("--threads", type=int, default=None,
                     help="torch.set_num_threads before measuring (default: leave as is)")
    return parser


def main_perf(argv: list[str]) -> int:
    """Entry point of ``python -m bench perf augment [options]``; prints a table, returns 0."""
    args = _parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = [augment_benchmark(name.strip(), args.image_size, args.n_images, args.batch_size,
                              args.device) for name in args.recipe.split(",") if name.strip()]
    print(_format_table(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(main_perf(sys.argv[1:]))

"""One run: resolved suite settings + method + options + seed → a trained encoder and a record.

The loop is method-agnostic: augment on the training device (per-sample parameters), call
``method.forward_train``, step the optimizer with the method's recipe (lr scaled by batch
size, warmup then cosine, per step), then ``method.on_step_end``. Every epoch writes a
checkpoint (model + method state, optimizer, step, RNG states) atomically; a rerun resumes
from it exactly, because each epoch's data order and augmentation seeds derive from
(seed, epoch). A NaN/inf loss stops the run with status ``diverged``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.backbones import build_backbone
from bench.config import RunSpec
from bench.data.augment import BatchAugmenter
from bench.data.datasets import ImageSet, dataset_stats, load_dataset, split_train_val, stratified_subset
from bench.optim import build_optimizer, build_schedule, scaled_lr
from bench.store import RunDir, atomic_torch_save, atomic_write_json, environment
from methods.base import Batch, Method, RunContext, get_method

log = logging.getLogger(__name__)

#: The data subset is drawn with this seed for every run, so runs differ only by training seed.
DATA_SEED = 0


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the run stops with status ``diverged``."""


@dataclass
class RunData:
    train: ImageSet  # SSL training set (= labelled set of the probes)
    val: ImageSet | None  # carved from train, for per-epoch monitoring only
    test: ImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]


def resolve_device(spec: RunSpec) -> torch.device:
    want = spec.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def load_run_data(spec: RunSpec) -> RunData:
    """The suite's data: stratified subsets and a validation split carved from train."""
    d = spec.dataset
    kw = dict(root=d.root, download=d.download, image_size=d.image_size)
    train = load_dataset(d.name, "train", **kw)
    test = load_dataset(d.name, "test", **kw)
    if d.train_per_class:
        train = stratified_subset(train, d.train_per_class, DATA_SEED)
    if d.test_per_class:
        test = stratified_subset(test, d.test_per_class, DATA_SEED)
    val = None
    if d.val_per_class:
        train, val = split_train_val(train, d.val_per_class, DATA_SEED)
    mean, std = dataset_stats(d.name)
    return RunData(train, val, test, tuple(mean), tuple(std))


def build_method(spec: RunSpec, data: RunData) -> Method:
    cls = get_method(spec.method)
    options = cls.Options.model_validate(spec.options)
    backbone = build_backbone(
        spec.backbone.name, in_channels=data.train.channels, image_size=data.train.image_size,
        **spec.backbone.options,
    )
    steps = len(data.train) // spec.budget.batch_size
    ctx = RunContext(
        dataset_size=len(data.train), batch_size=spec.budget.batch_size, epochs=spec.budget.epochs,
        steps_per_epoch=steps, image_size=data.train.image_size, channels=data.train.channels,
        num_classes=data.train.num_classes,
    )
    return cls(backbone, options, ctx)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**62


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast_for(spec: RunSpec, device: torch.device):
    """bf16 autocast on GPU (precision auto/bf16); fp32 on CPU unless bf16 is asked for."""
    p = spec.train.precision
    if p == "bf16" or (p == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    """Trains one method for one run and checkpoints every epoch."""

    def __init__(self, spec: RunSpec, run_dir: RunDir, data: RunData, *, progress: bool = True) -> None:
        self.spec, self.run_dir, self.data, self.progress = spec, run_dir, data, progress
        self.device = resolve_device(spec)
        if spec.train.num_threads:
            torch.set_num_threads(spec.train.num_threads)
        seed_everything(spec.seed)
        self.method = build_method(spec, data).to(self.device)
        if self.device.type == "cuda" and spec.train.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.ctx = self.method.ctx
        if self.ctx.steps_per_epoch < 1:
            raise ValueError(
                f"batch_size {spec.budget.batch_size} is larger than the training set ({len(data.train)} "
                f"images): lower budget.batch_size or raise dataset.train_per_class"
            )
        self.recipe = self.method.optim_recipe()
        self.peak_lr = scaled_lr(self.recipe, spec.budget.batch_size)
        self.optimizer = build_optimizer(self.method.param_groups(), self.recipe, spec.budget.batch_size)
        self.schedule = build_schedule(self.recipe, spec.budget.epochs, self.ctx.steps_per_epoch)
        self.augment = BatchAugmenter(self.method.view_recipe(), data.mean, data.std)
        self.images = data.train.images.to(self.device)
        self.labels = data.train.labels.to(self.device)
        self.step = 0
        self.epoch = 0  # epochs completed
        self.train_seconds = 0.0
        self.resumed_seconds = 0.0  # training time spent in earlier invocations
        self.forward = self.method.forward_train
        if spec.train.compile and self.method.requires_training:
            self.forward = torch.compile(self.method.forward_train)

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        atomic_torch_save(self.run_dir.checkpoint, {
            "method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "step": self.step, "epoch": self.epoch, "train_seconds": self.train_seconds,
            "schedule": asdict(self.schedule), "rng": rng_state(), "run_id": self.spec.run_id,
        })

    def try_resume(self) -> bool:
        path = self.run_dir.checkpoint
        if not path.exists():
            return False
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        if ckpt.get("run_id") != self.spec.run_id:
            raise RuntimeError(f"{path} belongs to run {ckpt.get('run_id')}, not {self.spec.run_id}")
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]
        self.train_seconds = self.resumed_seconds = ckpt.get("train_seconds", 0.0)
        set_rng_state(ckpt["rng"])
        self.run_dir.truncate_metrics(self.epoch)
        log.info("resumed %s at epoch %d (step %d)", self.spec.run_id, self.epoch, self.step)
        return True

    # -- training -----------------------------------------------------------------------------
    def train_step(self, index: torch.Tensor, generator: torch.Generator, autocast) -> dict[str, float]:
        lr = self.schedule.apply(self.optimizer, self.step, self.peak_lr)
        views = self.augment(self.images[index], generator=generator)
        if self.device.type == "cuda" and self.spec.train.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        batch = Batch(views=views, labels=self.labels[index], index=index)
        with autocast:
            out = self.forward(batch)
        loss = out.loss.float()
        if not torch.isfinite(loss):
            raise Diverged(f"loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step} (lr {lr:.4g})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.on_after_backward(self.step)
        if self.recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.recipe.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.method.on_step_end(self.step, self.step / self.ctx.total_steps)
        return {"loss": loss.item(), "lr": lr, **out.logs}

    def run_epoch(self) -> dict[str, Any]:
        e = self.epoch
        seed = epoch_seed(self.spec.seed, e)
        torch.manual_seed(seed)
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed))
        gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        bs, steps = self.spec.budget.batch_size, self.ctx.steps_per_epoch
        autocast = autocast_for(self.spec, self.device)
        self.method.train()
        sums: dict[str, float] = {}
        start = time.perf_counter()
        bar = tqdm(range(steps), desc=f"{self.spec.label} s{self.spec.seed} ep {e + 1}/{self.ctx.epochs}",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        for i in bar:
            index = order[i * bs:(i + 1) * bs].to(self.device)
            logs = self.train_step(index, gen, autocast)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            rate = (i + 1) * bs / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.3g}", img_s=f"{rate:.0f}")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        self.train_seconds += seconds
        self.epoch += 1
        row = {k: v / steps for k, v in sums.items()}
        row.update(epoch=self.epoch, step=self.step, epoch_s=seconds, images_per_s=steps * bs / seconds)
        return row

    def fit(self, monitor=None, stop_after_epochs: int | None = None) -> None:
        """Train to the budget, checkpointing each epoch; ``monitor(epoch)`` adds metrics."""
        epochs_run = 0
        while self.epoch < self.ctx.epochs:
            row = self.run_epoch()
            if monitor is not None:
                row.update(monitor(self))
            self.run_dir.append_metrics(row)
            self.save_checkpoint()
            log.info("%s epoch %d: %s", self.spec.label, self.epoch, {k: round(v, 4) for k, v in row.items()
                                                                     if isinstance(v, float)})
            epochs_run += 1
            if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
                return


def run_context_record(trainer: Trainer) -> dict[str, Any]:
    """The resolved optimisation facts of a run, for its record."""
    return {
        "recipe": asdict(trainer.recipe), "peak_lr": trainer.peak_lr,
        "warmup_steps": trainer.schedule.warmup_steps, "total_steps": trainer.schedule.total_steps,
        "lr_milestone_steps": list(trainer.schedule.milestones),
        "steps_per_epoch": trainer.ctx.steps_per_epoch, "train_images": len(trainer.data.train),
        "views": [asdict(c) for c in trainer.method.view_recipe().expanded()],
    }


def write_run_header(spec: RunSpec, run_dir: RunDir, device: torch.device) -> None:
    if not run_dir.config.exists():
        atomic_write_json(run_dir.config, {"run_id": spec.run_id, "label": spec.label, **spec.model_dump(mode="json")})
    atomic_write_json(run_dir.env, environment(device))

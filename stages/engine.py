"""Training and evaluation on whole splits held in memory as tensors."""

from __future__ import annotations

import copy
import ctypes
import math
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm

from stages.data import Split
from stages.errors import UserError
from stages.models import build_model, pca_first_layer, whiten_first_conv
from stages.params import OPTIMIZERS, CNNParams, MLPParams, ParamsError, TrainParams

# A chunk's largest activations (the CNN's first feature maps, 25 MB) stay below the blocks glibc serves from its
# heap: with 1,000 images they were mapped afresh every chunk, and scoring 5,000 images took 1.8x as long.
EVAL_BATCH = 250
MODEL_PATH = "models/{name}.pt"  # where the train stage writes each model, and evaluate and predict read it
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
# glibc's mallopt parameters, and the largest block it lets the heap serve (32 MiB on 64-bit systems).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, MAX_HEAP_BLOCK = -1, -3, 32 << 20


class Diverged(UserError):
    pass


def resolve_device(cfg: TrainParams) -> torch.device:
    name = cfg.device
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if name == "auto":
        return torch.device(next((dev for dev, ok in available.items() if ok), "cpu"))
    if name != "cpu" and not available[name]:
        raise ParamsError(f"params.yaml: {cfg.name}.device is {name}, which this machine lacks; use auto or cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training, or None for float32.

    `auto` is a feature table, so that one machine always makes the same choice: bfloat16 where the hardware
    has native bf16 instructions, float32 elsewhere (where bf16 would be emulated and slower). Measured with
    the default models on 2 cores, bf16 against fp32: CNN 2.1x with AMX (Xeon), 1.7-2x with AVX512_BF16 and
    no AMX (AMD EPYC); MLP 1.3-1.4x with AVX512_BF16.
    """
    if name == "fp32" or device.type == "mps":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    """AMX tiles or AVX512_BF16, as PyTorch's own CPU dispatch sees them."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def precision_name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed every global RNG and force deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Some CUDA kernels (pooling backward) have no deterministic variant: warn there instead of failing.
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")


def keep_freed_memory() -> None:
    """Let glibc reuse freed blocks of up to 32 MiB instead of handing them back to the kernel.

    A training step frees and allocates activations of tens of MB (the default CNN's first feature maps are
    25 MB a batch). By default glibc returns blocks that large to the kernel, so each step page-faults them
    back in, about 10,000 faults a step: in float32 on 2 cores that cost the first epoch a quarter of its
    time, one-thread queue jobs side by side 20 % throughout, and two-thread jobs side by side two thirds.
    The bytes computed are the same either way. A no-op where the C library has no mallopt (macOS, Windows).
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if sys.platform.startswith("linux") else None
    if mallopt:
        mallopt(M_MMAP_THRESHOLD, MAX_HEAP_BLOCK)
        mallopt(M_TRIM_THRESHOLD, 4 * MAX_HEAP_BLOCK)  # above any block the heap serves, so freed ones stay


def to_inputs(images: np.ndarray, cfg: TrainParams, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalized float (N, 1, 28, 28) on the device, once per split."""
    x = torch.from_numpy(images).to(device=device, dtype=torch.float32).div_(255).unsqueeze(1)
    return x.sub_(cfg.normalize.mean).div_(cfg.normalize.std)


def augment(x: torch.Tensor, cfg: TrainParams, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips, shifts and erased rectangles per image, done on the whole batch at once."""
    n = x.shape[0]
    if cfg.augment.hflip:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    s = cfg.augment.shift
    if s:
        background = -cfg.normalize.mean / cfg.normalize.std
        padded = F.pad(x, (s, s, s, s), value=background)
        dy, dx = (torch.randint(0, 2 * s + 1, (2, n), generator=gen)).to(x.device)
        grid = torch.arange(x.shape[-1], device=x.device)
        rows = (dy[:, None] + grid)[:, :, None]  # (n, 28, 1): the padded rows each image keeps
        cols = (dx[:, None] + grid)[:, None, :]  # (n, 1, 28)
        # Indexing broadcasts to (n, 28, 28), one shifted crop per image; back to (n, 1, 28, 28).
        x = padded[torch.arange(n, device=x.device)[:, None, None], 0, rows, cols].unsqueeze(1)
    if cfg.augment.erase:
        x = _erase(x, cfg, gen)
    return x


def _erase(x: torch.Tensor, cfg: TrainParams, gen: torch.Generator) -> torch.Tensor:
    """Blank a random rectangle (4-14 px a side) to the background in a share `erase` of the images."""
    n, side = x.shape[0], x.shape[-1]
    chosen = torch.rand(n, generator=gen) < cfg.augment.erase
    height, width = torch.randint(4, 15, (2, n), generator=gen)
    top = (torch.rand(n, generator=gen) * (side - height + 1)).long()
    left = (torch.rand(n, generator=gen) * (side - width + 1)).long()
    grid = torch.arange(side)
    rows = (grid >= top[:, None]) & (grid < (top + height)[:, None])  # (n, 28): the rows inside the rectangle
    cols = (grid >= left[:, None]) & (grid < (left + width)[:, None])  # (n, 28)
    mask = (rows[:, :, None] & cols[:, None, :] & chosen[:, None, None]).to(x.device)  # (n, 28, 28)
    return x.masked_fill(mask[:, None], -cfg.normalize.mean / cfg.normalize.std)


def memory_layout(cfg: TrainParams) -> torch.memory_format:
    """channels_last for a CNN that asks for it: oneDNN's convolutions run faster on it than on NCHW."""
    return torch.channels_last if isinstance(cfg, CNNParams) and cfg.channels_last else torch.contiguous_format


@torch.no_grad()
def predict_log_probs(model: nn.Module, x: torch.Tensor, cfg: TrainParams) -> torch.Tensor:
    """Log-probabilities (N, 10) for a whole split in large batches, in float32, without gradients.

    With `tta`, the prediction averages the probabilities for the image and its mirror image: the model
    learnt both orientations from the flip augmentation, and the average is steadier than either.
    """
    model.eval()
    layout = memory_layout(cfg)
    chunks = []
    for i in range(0, len(x), EVAL_BATCH):
        batch = x[i : i + EVAL_BATCH].contiguous(memory_format=layout)
        log_probs = model(batch).float().log_softmax(1)
        if cfg.tta:
            # log((p + p_mirror) / 2) without leaving log space, so a tiny probability stays finite.
            mirrored = model(batch.flip(3)).float().log_softmax(1)
            log_probs = torch.logaddexp(log_probs, mirrored) - math.log(2)
        chunks.append(log_probs)
    return torch.cat(chunks)


@dataclass(frozen=True)
class Scores:
    loss: float
    accuracy: float
    log_probs: torch.Tensor


def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainParams) -> Scores:
    log_probs = predict_log_probs(model, x, cfg)
    y = y.to(log_probs.device)
    # cross_entropy applies log_softmax again: a no-op on log-probabilities up to float rounding, and the rounding
    # every earlier run's curves and metrics were computed with (nll_loss flips a 6th decimal now and then).
    loss = round(F.cross_entropy(log_probs, y).item(), 6)
    accuracy = (log_probs.argmax(1) == y).sum().item() / len(y)  # exact: 9343 / 10000, not a float32 mean
    return Scores(loss, accuracy, log_probs.cpu())


def build_optimizer(model: nn.Module, cfg: TrainParams) -> torch.optim.Optimizer:
    # Weight decay on weight matrices and kernels only: decaying biases and BN scales only hurts. Without
    # decay, one group: each group costs the step its own kernels, which the tiny MLP's step feels.
    groups = list(model.parameters())
    if cfg.weight_decay:
        decay = [p for p in groups if p.ndim > 1]
        rest = [p for p in groups if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    extra = {"momentum": cfg.momentum, "nesterov": cfg.nesterov} if cfg.optimizer == "sgd" else {}
    # foreach: a few multi-tensor kernels per step instead of a loop over tensors; PyTorch only picks it by
    # itself on CUDA.
    return getattr(torch.optim, OPTIMIZERS[cfg.optimizer])(groups, lr=cfg.lr, foreach=True, **extra)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainParams, steps: int) -> LRScheduler | None:
    """A per-batch schedule over `steps` batches; `step` divides the lr by 10 at 50 % and 75 % of training."""
    if cfg.schedule == "onecycle":
        # OneCycle also cycles momentum by default, which would override sgd's `momentum`; Adam's beta1 cycles.
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=steps, pct_start=cfg.warmup, cycle_momentum=cfg.optimizer != "sgd"
        )
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[steps // 2, steps * 3 // 4], gamma=0.1)
    return None


def untrained_model(cfg: MLPParams | CNNParams, device: torch.device, x_train: torch.Tensor | None = None) -> nn.Module:
    """The network training starts from: seeding, then building the model, is the first use of the global RNG,
    so the same params (and for `cnn.whiten` and `mlp.pca_init`, the same training images `x_train`, as
    `to_inputs` makes them) always give the same initial weights (evaluate scores them as the untrained network)."""
    seed_everything(cfg.seed, device)
    model = build_model(cfg)
    key, init = ("whiten", whiten_first_conv) if isinstance(cfg, CNNParams) else ("pca_init", pca_first_layer)
    if getattr(cfg, key):
        if x_train is None:
            raise ValueError(f"{cfg.name}.{key} starts the first layer from the training images: pass x_train")
        init(model, x_train)
    return model.to(device=device, memory_format=memory_layout(cfg))


def train_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    cfg: MLPParams | CNNParams,
    opt: torch.optim.Optimizer,
    sched: LRScheduler | None,
    gen: torch.Generator,
    autocast: torch.dtype | None,
    epoch: int,
) -> tuple[float, float]:
    """One pass over the shuffled training images `x` (N, 1, 28, 28), each batch augmented, in `autocast` (None:
    float32); returns the mean loss and the accuracy on those augmented batches."""
    model.train()
    layout = memory_layout(cfg)
    n, batch = len(x), cfg.batch_size
    predicted = torch.empty_like(y)
    loss_sum = 0.0
    start = time.perf_counter()
    bar = tqdm(
        total=math.ceil(n / batch),
        desc=f"{cfg.name} {epoch}/{cfg.epochs}",
        unit="batch",
        leave=False,
        file=sys.stderr,
        disable=None,
    )
    with bar:
        for b, first in enumerate(range(0, n, batch)):
            rows = slice(first, first + batch)
            xb = augment(x[rows], cfg, gen).contiguous(memory_format=layout)
            yb = y[rows]
            with torch.autocast(x.device.type, dtype=autocast) if autocast else nullcontext():
                logits = model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
            value = loss.item()
            if not math.isfinite(value):
                raise Diverged(
                    f"{cfg.name} diverged in epoch {epoch}: the training loss became {value}; "
                    f"lower {cfg.name}.lr (now {cfg.lr:g}) and rerun"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
            loss_sum += value * len(yb)
            # One op per batch; the accuracy is counted once per epoch.
            torch.argmax(logits.detach(), 1, out=predicted[rows])
            bar.update()
            if b % 20 == 0:
                done = first + len(yb)
                bar.set_postfix(loss=f"{loss_sum / done:.3f}", img_s=f"{done / (time.perf_counter() - start):,.0f}")
    return loss_sum / n, (predicted == y).sum().item() / n


@dataclass
class FitResult:
    model: nn.Module
    best_epoch: int
    history: list[dict]  # one row per epoch, HISTORY_COLUMNS
    seconds: float  # wall-clock training time: printed, never written where DVC compares outputs
    precision: str  # "bf16" or "fp32", what training actually ran in
    device: str


def fit(
    cfg: MLPParams | CNNParams,
    train: Split,
    val: Split,
    device: torch.device,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train a fresh model; keep the weights of the epoch with the best validation accuracy.

    `on_epoch` gets each epoch's history row as soon as the epoch ends (live logging).
    """
    keep_freed_memory()
    x_train, y_train = to_inputs(train.images, cfg, device), torch.from_numpy(train.labels).to(device)
    model = untrained_model(cfg, device, x_train)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation: their own stream, seeded alike
    autocast = resolve_precision(cfg.precision, device)
    x_val, y_val = to_inputs(val.images, cfg, device), torch.from_numpy(val.labels).to(device)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, cfg.epochs * math.ceil(len(x_train) / cfg.batch_size))
    # Allocated (and paged in) once: a fresh copy each epoch would pay its page faults every epoch.
    x_epoch = x_train.clone()
    history: list[dict] = []
    best_acc, best_epoch, best_state = -1.0, 0, {}
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        # One shuffled copy per epoch, so that each batch is a contiguous slice rather than a gather.
        order = torch.randperm(len(x_train), generator=gen).to(device)
        torch.index_select(x_train, 0, order, out=x_epoch)
        train_loss, train_acc = train_epoch(
            model, x_epoch, y_train[order], cfg=cfg, opt=opt, sched=sched, gen=gen, autocast=autocast, epoch=epoch
        )
        val_scores = score(model, x_val, y_val, cfg)
        lr = opt.param_groups[0]["lr"]
        values = (epoch, train_loss, train_acc, val_scores.loss, val_scores.accuracy, lr)
        row = dict(zip(HISTORY_COLUMNS, values, strict=True))
        history.append(row)
        seconds = time.perf_counter() - epoch_start
        speed = f"{seconds:.1f} s, {len(x_train) / seconds:,.0f} img/s"
        print(f"{cfg.name} epoch {epoch}/{cfg.epochs}: {_progress(row)} | {speed}", flush=True)
        if on_epoch:
            on_epoch(row)
        if val_scores.accuracy > best_acc:  # a later tie keeps the earlier epoch
            best_acc, best_epoch, best_state = val_scores.accuracy, epoch, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return FitResult(model, best_epoch, history, time.perf_counter() - start, precision_name(autocast), device.type)


def _progress(row: dict) -> str:
    return (
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} | lr {row['lr']:.2e}"
    )

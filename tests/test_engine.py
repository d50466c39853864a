from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from stages import engine
from stages.data import Split
from stages.engine import (
    EVAL_BATCH,
    HISTORY_COLUMNS,
    Diverged,
    augment,
    build_optimizer,
    build_scheduler,
    fit,
    predict_log_probs,
    resolve_device,
    resolve_precision,
    score,
    to_inputs,
    untrained_model,
)
from stages.errors import UserError
from stages.models import build_model
from tests.helpers import ROOT, notebook, tiny_cfg

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_data() -> tuple[Split, Split]:
    """600 real-looking images: class-dependent blobs, learnable in one epoch."""
    rng = np.random.default_rng(0)
    labels = np.arange(600) % 10
    images = rng.integers(0, 60, (600, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 * label : 2 * label + 8, 4:24] = 220
    split = Split(images, labels.astype(np.int64))
    return Split(split.images[:500], split.labels[:500]), Split(split.images[500:], split.labels[500:])


def test_hflip_and_shift_keep_shape_and_are_seeded() -> None:
    cfg = tiny_cfg("cnn")
    x = torch.randn(32, 1, 28, 28)
    flip_only = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, hflip=True, shift=0, erase=0.0))
    out = augment(x, flip_only, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped | kept).all() and flipped.any() and kept.any()
    shifted = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, hflip=False, shift=2, erase=0.0))
    a = augment(x, shifted, torch.Generator().manual_seed(1))
    b = augment(x, shifted, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_shift_moves_content_and_pads_with_black() -> None:
    cfg = tiny_cfg("cnn")
    cfg = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, hflip=False, shift=1, erase=0.0))
    x = torch.zeros(200, 1, 28, 28)
    x[:, :, 10, 10] = 1.0
    out = augment(x, cfg, torch.Generator().manual_seed(0))
    positions = {divmod(o[0].argmax().item(), 28) for o in out}
    assert positions <= {(r, c) for r in (9, 10, 11) for c in (9, 10, 11)} and len(positions) == 9
    background = -cfg.normalize.mean / cfg.normalize.std
    edge = augment(torch.zeros(50, 1, 28, 28), cfg, torch.Generator().manual_seed(0))
    assert torch.isclose(edge, torch.tensor(0.0)).logical_or(torch.isclose(edge, torch.tensor(background))).all()


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_one_epoch_lowers_the_loss(name, tiny_data) -> None:
    train, val = tiny_data
    before = fit(tiny_cfg(name, lr=1e-9, schedule="none"), train, val, CPU).history[0]["val_loss"]
    after = fit(tiny_cfg(name, epochs=3), train, val, CPU).history[-1]["val_loss"]
    assert after < before - 0.1


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_same_params_give_identical_weights_and_history(name, tiny_data) -> None:
    train, val = tiny_data
    cfg = tiny_cfg(name, epochs=2)
    first, second = fit(cfg, train, val, CPU), fit(cfg, train, val, CPU)
    assert first.history == second.history
    for (key, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    other = fit(dataclasses.replace(cfg, seed=cfg.seed + 1), train, val, CPU)
    assert other.history != first.history


def test_divergence_stops_with_a_clear_message(tiny_data) -> None:
    train, val = tiny_data
    cfg = tiny_cfg("mlp", optimizer="sgd", lr=1e6, schedule="none", momentum=0.0, label_smoothing=0.0)
    with pytest.raises(Diverged, match=r"mlp diverged in epoch 1: the training loss became (nan|inf); lower mlp\.lr"):
        fit(cfg, train, val, CPU)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_notebook_configs_learn_with_plain_sgd(name, tiny_data) -> None:
    """The notebook's SGD at a constant lr: the validation loss falls every epoch, from the untrained model's."""
    train, val = tiny_data
    cfg = dataclasses.replace(notebook(name), epochs=3, device="cpu")
    untrained = score(
        untrained_model(cfg, CPU), to_inputs(val.images, cfg, CPU), torch.from_numpy(val.labels), cfg
    ).loss
    history = fit(cfg, train, val, CPU).history
    losses = [untrained] + [row["val_loss"] for row in history]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False)), losses
    assert [row["lr"] for row in history] == [cfg.lr] * 3 and [row["epoch"] for row in history] == [1, 2, 3]


def test_each_epoch_is_reported_as_it_ends(tiny_data) -> None:
    seen = []
    result = fit(tiny_cfg("mlp", epochs=2), *tiny_data, CPU, on_epoch=seen.append)
    assert seen == result.history and [row["epoch"] for row in seen] == [1, 2]
    assert list(seen[0]) == list(HISTORY_COLUMNS)  # no wall-clock figure among what gets logged


@pytest.mark.parametrize(
    ("name", "device", "native", "expected"),
    [
        ("auto", "cpu", True, torch.bfloat16),
        ("auto", "cpu", False, None),
        ("fp32", "cpu", True, None),
        ("bf16", "cpu", False, torch.bfloat16),
        ("auto", "mps", True, None),
    ],
)
def test_auto_precision_is_bf16_exactly_where_the_cpu_has_native_bf16(
    monkeypatch, name, device, native, expected
) -> None:
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision(name, torch.device(device)) == expected


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "native"), [(True, False, True), (False, True, True), (False, False, False)]
)
def test_native_bf16_means_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16, native) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert engine.cpu_has_native_bf16() is native


def test_erase_blanks_one_rectangle_per_chosen_image() -> None:
    cfg = tiny_cfg("cnn")
    cfg = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, hflip=False, shift=0, erase=0.5))
    x = torch.full((400, 1, 28, 28), 3.0)
    out = augment(x, cfg, torch.Generator().manual_seed(0))
    blanked = (out != 3.0).flatten(1).sum(1)
    assert 0.4 < (blanked > 0).float().mean() < 0.6
    assert blanked[blanked > 0].min() >= 16 and blanked.max() <= 14 * 14
    assert torch.isclose(out[out != 3.0], torch.tensor(-cfg.normalize.mean / cfg.normalize.std)).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device_is_a_params_error() -> None:
    with pytest.raises(UserError, match=r"cnn\.device is cuda, which this machine lacks; use auto or cpu"):
        resolve_device(tiny_cfg("cnn", device="cuda"))
    assert resolve_device(tiny_cfg("cnn", device="auto")) == torch.device("cpu")  # no CUDA, and Linux has no MPS


def test_onecycle_keeps_sgd_momentum_as_configured() -> None:

    for momentum in (0.0, 0.5):
        cfg = tiny_cfg("mlp", optimizer="sgd", momentum=momentum, schedule="onecycle")
        opt = build_optimizer(build_model(cfg), cfg)
        build_scheduler(opt, cfg, steps=100)
        assert {group["momentum"] for group in opt.param_groups} == {momentum}


def test_weight_decay_spares_biases_and_without_it_there_is_one_group() -> None:

    model = build_model(tiny_cfg("mlp"))
    decayed = build_optimizer(model, tiny_cfg("mlp", weight_decay=0.05)).param_groups
    assert [g["weight_decay"] for g in decayed] == [0.05, 0.0]
    assert all(p.ndim > 1 for p in decayed[0]["params"]) and all(p.ndim == 1 for p in decayed[1]["params"])
    plain = build_optimizer(model, tiny_cfg("mlp", weight_decay=0.0)).param_groups
    assert len(plain) == 1 and len(plain[0]["params"]) == len(list(model.parameters()))


def test_train_accuracy_counts_every_image_of_the_epoch(tiny_data) -> None:
    """With a negligible lr the model stays at its initial weights, so the epoch's running train accuracy
    must equal that model's accuracy on the whole (unshuffled) training split, image for image."""

    train, val = tiny_data
    cfg = tiny_cfg("mlp", lr=1e-12, dropout=0.0, batch_norm=False, schedule="none", batch_size=96)
    cfg = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, hflip=False))  # the images as scored
    result = fit(cfg, train, val, CPU)
    x_train = to_inputs(train.images, cfg, CPU)
    expected = score(untrained_model(cfg, CPU, x_train), x_train, torch.from_numpy(train.labels), cfg).accuracy
    assert 0.0 < expected < 1.0
    assert result.history[0]["train_acc"] == expected


def test_the_best_epochs_weights_are_kept_not_the_last(tiny_data, monkeypatch) -> None:
    """Validation accuracies 0.5, 0.9, 0.9, 0.7: epoch 2 is kept (a tie later does not replace it)."""
    accuracies = iter([0.5, 0.9, 0.9, 0.7])
    snapshots = []
    real_score = engine.score

    def scripted_score(model, x, y, cfg):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return dataclasses.replace(real_score(model, x, y, cfg), accuracy=next(accuracies))

    monkeypatch.setattr(engine, "score", scripted_score)
    result = fit(tiny_cfg("mlp", epochs=4, schedule="none"), *tiny_data, CPU)
    assert result.best_epoch == 2
    kept = result.model.state_dict()
    assert all(torch.equal(kept[k], snapshots[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], snapshots[3][k]) for k in kept)


def test_tta_averages_the_probabilities_of_the_image_and_its_mirror() -> None:

    cfg = tiny_cfg("mlp", tta=True)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.randn(EVAL_BATCH + 3, 1, 28, 28)  # more than one evaluation batch
    with torch.no_grad():
        plain, mirrored = model(x).softmax(1), model(x.flip(3)).softmax(1)
    averaged = predict_log_probs(model, x, cfg).exp()
    assert torch.allclose(averaged, (plain + mirrored) / 2, atol=1e-6)
    assert not torch.allclose(averaged, plain, atol=1e-4)
    assert torch.allclose(predict_log_probs(model, x, dataclasses.replace(cfg, tta=False)).exp(), plain, atol=1e-6)


@pytest.mark.parametrize(
    ("optimizer", "kind"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
@pytest.mark.parametrize(
    ("schedule", "scheduler"),
    [
        ("none", type(None)),
        ("step", torch.optim.lr_scheduler.MultiStepLR),
        ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR),
        ("onecycle", torch.optim.lr_scheduler.OneCycleLR),
    ],
)
def test_each_allowed_optimizer_and_schedule_builds_its_class(optimizer, kind, schedule, scheduler) -> None:
    cfg = tiny_cfg("mlp", optimizer=optimizer, schedule=schedule)
    opt = build_optimizer(build_model(cfg), cfg)
    assert type(opt) is kind and opt.defaults["lr"] == cfg.lr
    assert type(build_scheduler(opt, cfg, steps=100)) is scheduler


FAULTS_PER_STEP = """
import resource, sys, torch, torch.nn.functional as F
from stages.engine import build_optimizer, keep_freed_memory, untrained_model
from stages.params import parse_section
from tests.helpers import DEFAULTS
if sys.argv[1] == "keep":
    keep_freed_memory()
torch.set_num_threads(1)
cfg = parse_section("cnn", DEFAULTS["cnn"])
x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
model = untrained_model(cfg, torch.device("cpu"), x)
opt = build_optimizer(model, cfg)
def step():
    loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
for _ in range(6):  # the heap grows to its size over the first steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 6)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_training_steps_reuse_freed_memory_instead_of_page_faulting() -> None:
    # glibc's own default moves its mmap threshold up after the first large free, so whether a process faults
    # depends on its history (a clean-clone run measured 0 faults a step without keep_freed_memory, others
    # 2,600-10,000). A fixed threshold, as a MALLOC_ setting or another library may leave it, turns that off:
    # then every 25 MB block of a default-CNN step is mapped and faulted afresh, unless keep_freed_memory
    # overrides the setting (0-260 faults a step).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}

    def faults(mode: str) -> int:
        proc = subprocess.run(
            [sys.executable, "-c", FAULTS_PER_STEP, mode], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        return int(proc.stdout)

    assert faults("keep") < 1000 < faults("default")


def test_fit_keeps_freed_memory(tiny_data, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(engine, "keep_freed_memory", lambda: calls.append(1))
    fit(tiny_cfg("mlp"), *tiny_data, CPU)
    assert calls == [1]

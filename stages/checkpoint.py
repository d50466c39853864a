"""Model files: what a checkpoint holds, its byte-stable save, and a load that verifies it before use.

A model file is torch.save's zip archive. It is checked against the CRC-32 that the archive stores for each of
its members (zipfile's testzip) rather than against a digest of the weights stored in the record: the CRCs are
already in every file torch.save has written, so files keep their bytes and models fetched from older versions
(`dvc artifacts get --rev`) are checked too, and they also cover the pickled record and the params that build the
model, not only the weights. A CRC is no defence against a file made to deceive, but that is what weights_only
and the checks below are for; the CRC catches the flipped byte of a bad disk or copy, which would otherwise be
a different answer with no error.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from stages.data import CLASS_NAMES
from stages.engine import memory_layout
from stages.errors import UserError
from stages.files import atomic_path, not_a_regular_file
from stages.models import build_model, check_size
from stages.params import MODELS, CNNParams, MLPParams, ParamsError, parse_section, read_yaml, to_dict

if TYPE_CHECKING:
    from stages.engine import FitResult

RECORD_KINDS = {"best_epoch": int, "precision": str, "device": str}  # they go into metrics JSON as they are


def make_checkpoint(result: FitResult, cfg: MLPParams | CNNParams) -> dict:
    """What a model file holds: the kept weights, the params that build the model, and the training record."""
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    return {
        "model": cfg.name,
        "params": to_dict(cfg),
        "class_names": list(CLASS_NAMES),
        "best_epoch": result.best_epoch,
        "precision": result.precision,
        "device": result.device,
        "state_dict": state,
    }


def save_checkpoint(path: str | Path, ckpt: dict) -> None:
    """torch.save, whole or not at all, and byte for byte the same for the same tensors.

    Saved to a path, torch names the zip's records after the file, here a random temporary name; saved to a
    buffer they are always named `archive/`, so identical weights give identical files and DVC hashes.
    """
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _tracked(path: Path) -> bool:
    """Whether the dvc.lock here records `path` as a stage's output, so that `dvc checkout` can restore it."""
    try:
        lock = read_yaml("dvc.lock")
    except ParamsError:  # no dvc.lock (not the repository) or one that cannot be read: no advice from it
        return False
    stages = lock.get("stages") if isinstance(lock, dict) else None
    outs = [out for stage in (stages or {}).values() if isinstance(stage, dict) for out in stage.get("outs") or []]
    return any(isinstance(out, dict) and Path(str(out.get("path"))) == path for out in outs)


def _fix(path: Path, name: str | None) -> str:
    """How to get a good file back: DVC's recorded copy where there is one (--force: the damaged file goes)."""
    if _tracked(path):
        return f"restore it with `dvc checkout --force {path}`"
    if name:
        return f"retrain with `dvc repro train_{name}`"
    return "fetch it again (`dvc artifacts get`) or retrain with `dvc repro`"  # a --checkpoint file, not yet read


def _read(path: Path) -> bytes:
    """The file's bytes, read once: the archive that is verified is the one that is loaded."""
    problem = not_a_regular_file(path)
    if problem == "does not exist":
        if _tracked(path):
            raise UserError(
                f"{path} does not exist: `dvc checkout {path}` brings back the version dvc.lock records "
                f"(`dvc pull {path}` if this clone's cache lacks it)"
            )
        raise UserError(f"{path} does not exist: run `dvc repro` to create it")
    if problem:
        raise UserError(f"{path} {problem}, not a model file: remove it, then run `dvc repro` to create it")
    return path.read_bytes()


def _open_verified(path: Path, name: str | None) -> object:
    """The checkpoint's contents, after every member of its archive matched its CRC-32; weights_only, so anything
    that would run code is refused."""
    data = _read(path)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        # Not a zip (a legacy pickle is refused too: it has no CRCs), cut short, or a damaged header.
        fix = _fix(path, name)
        raise UserError(f"{path} is truncated, damaged or not a PyTorch model file ({exc}); {fix}") from None
    if bad is not None:
        raise UserError(f"{path} is damaged: {bad} does not match its checksum; {_fix(path, name)}")
    try:
        with warnings.catch_warnings():
            # A sparse tensor is refused below; its warning about validating invariants would be a second line.
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(exc))
        what = f"such as {found[1]}" if found else "the weights-only loader refused it"
        raise UserError(
            f"refusing to load {path}: it holds objects other than tensors and plain data "
            f"({what}); only load model files you trust, or {_fix(path, name)}"
        ) from None
    except (RuntimeError, EOFError, ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable model file ({reason}); {_fix(path, name)}") from None


def _check_tensors(path: Path, name: str, state: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Exactly the tensors the params build, each dense, on the CPU, of the built dtype and shape, and finite.

    load_state_dict would cast another dtype silently (integer or complex weights) and fail with a traceback
    on a sparse or meta tensor. The built dtypes are float32 (what training writes, in any precision) and
    int64 for BatchNorm's counter."""
    expected = {k: (v.dtype, tuple(v.shape)) for k, v in model.state_dict().items()}
    unmatched = sorted(expected.keys() ^ state.keys())
    if unmatched:
        key = unmatched[0]
        what = "lacks" if key in expected else "has an extra tensor"
        raise UserError(f"{path} does not match its own {name} params: it {what} {key}; {_fix(path, name)}")
    for key, tensor in state.items():
        found = f"a {tensor.layout} tensor on {tensor.device}" if tensor.layout != torch.strided else None
        if found is None and tensor.device.type != "cpu":
            found = f"a tensor on {tensor.device}"
        if found is None and (tensor.dtype, tuple(tensor.shape)) != expected[key]:
            found = f"{tensor.dtype} of shape {tuple(tensor.shape)}"
        if found:
            dtype, shape = expected[key]
            raise UserError(
                f"{path} does not match its own {name} params: {key} is {found}, the params build dense {dtype} "
                f"of shape {shape} on the CPU; {_fix(path, name)}"
            )
        # NaN weights predict NaN everywhere: "nan%" in predict and invalid JSON in the metrics.
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(f"{path} holds NaN or infinite weights ({key}); {_fix(path, name)}")


def load_checkpoint(path: str | Path, name: str | None = None) -> tuple[nn.Module, MLPParams | CNNParams, dict]:
    """Rebuild a model from its checkpoint, verified: its archive's CRCs, weights_only, the model it claims to
    be (`name`, or either model when None), and tensors that are exactly what its own params build.

    Returns the model, its params and the training record (best_epoch, precision, device).
    """
    path = Path(path)
    ckpt = _open_verified(path, name)
    claimed = ckpt.get("model") if isinstance(ckpt, dict) else None
    if (
        not isinstance(ckpt, dict)
        or not {"model", "params", "state_dict"} <= ckpt.keys()
        or claimed not in ((name,) if name else MODELS)
        or not isinstance(ckpt["state_dict"], dict)
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["state_dict"].items())
    ):
        raise UserError(f"{path} is not a {name or 'model'} checkpoint of this project; {_fix(path, name)}")
    name = claimed
    try:
        cfg = parse_section(name, ckpt["params"])
    except ParamsError as exc:
        raise UserError(f"{path} carries invalid params ({exc}); {_fix(path, name)}") from None
    # The file's own params: the file is named, and retraining (not editing params.yaml) is the fix.
    check_size(cfg, where=str(path), fix=_fix(path, name))
    model = build_model(cfg)
    _check_tensors(path, name, ckpt["state_dict"], model)
    model.load_state_dict(ckpt["state_dict"])
    record = {key: ckpt.get(key) for key in RECORD_KINDS}
    if not all(value is None or type(value) is RECORD_KINDS[key] for key, value in record.items()):
        raise UserError(f"{path} carries a malformed training record; {_fix(path, name)}")
    return model.to(memory_format=memory_layout(cfg)), cfg, record

"""Model files: saved byte for byte the same, and verified before use (archive CRCs, weights_only, tensors)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from stages.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from stages.engine import FitResult, untrained_model
from stages.errors import UserError
from stages.params import to_dict
from tests.helpers import ROOT, save_model, tiny_cfg

CPU = torch.device("cpu")
RETRAIN = r"; retrain with `dvc repro train_mlp`$"


def result_of(cfg) -> FitResult:
    """A model as training hands it over, without the training: the seeded initial weights."""
    x_train = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # for cnn.whiten
    return FitResult(
        untrained_model(cfg, CPU, x_train), best_epoch=1, history=[], seconds=0.0, precision="fp32", device="cpu"
    )


@pytest.fixture
def mlp_file(tmp_path) -> Path:
    cfg = tiny_cfg("mlp")
    save_model(tmp_path / "mlp.pt", result_of(cfg), cfg)
    return tmp_path / "mlp.pt"


def rewrite(path: Path, change) -> Path:
    """The checkpoint at `path` with `change(ckpt)` applied, saved again with valid CRCs (as a tool would)."""
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    save_checkpoint(path, ckpt)
    return path


def test_round_trip(tmp_path) -> None:
    cfg = tiny_cfg("cnn")
    result = result_of(cfg)
    save_model(tmp_path / "cnn.pt", result, cfg)
    model, loaded, record = load_checkpoint(tmp_path / "cnn.pt", "cnn")
    assert loaded == cfg and record == {"best_epoch": 1, "precision": "fp32", "device": "cpu"}
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(model.eval()(x), result.model.eval()(x))
    assert list(tmp_path.iterdir()) == [tmp_path / "cnn.pt"]  # no temporary file left behind
    assert load_checkpoint(tmp_path / "cnn.pt")[1] == cfg  # without a name (--checkpoint): the file says which


def test_the_same_weights_saved_twice_are_the_same_bytes(tmp_path) -> None:
    cfg = tiny_cfg("mlp")
    result = result_of(cfg)
    save_model(tmp_path / "a.pt", result, cfg)
    save_model(tmp_path / "b.pt", result, cfg)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_one_flipped_byte_in_the_middle_is_an_error_not_another_answer(mlp_file) -> None:
    data = bytearray(mlp_file.read_bytes())
    data[len(data) // 2] ^= 0x01  # in the weights: torch.load alone reads them, one of them changed
    mlp_file.write_bytes(data)
    with pytest.raises(UserError, match=r"mlp\.pt is damaged: archive/data/\d+ does not match its checksum" + RETRAIN):
        load_checkpoint(mlp_file, "mlp")


def test_truncated_or_garbage_files_are_refused(mlp_file) -> None:
    whole = mlp_file.read_bytes()
    for data in (whole[: len(whole) // 2], whole[:-10], os.urandom(2000)):
        mlp_file.write_bytes(data)
        with pytest.raises(UserError, match=r"mlp\.pt is truncated, damaged or not a PyTorch model file \(" + ".*"):
            load_checkpoint(mlp_file, "mlp")


class Payload:
    def __reduce__(self):
        return (os.system, ("touch payload-ran",))


def test_pickled_code_is_refused_and_never_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"model": "cnn", "state_dict": Payload()}, "cnn.pt")
    with pytest.raises(UserError, match=r"^refusing to load cnn\.pt: .*\(such as posix\.system\)"):
        load_checkpoint("cnn.pt", "cnn")
    with open("old.pt", "wb") as f:  # a bare pickle (torch.save before 1.6) has no CRCs: refused unopened
        pickle.dump({"model": "cnn", "params": {}, "state_dict": Payload()}, f)
    with pytest.raises(UserError, match=r"^old\.pt is truncated, damaged or not a PyTorch model file"):
        load_checkpoint("old.pt", "cnn")
    assert not (tmp_path / "payload-ran").exists()


def test_a_missing_file_says_how_to_get_it_back(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^models/cnn\.pt does not exist: run `dvc repro` to create it$"):
        load_checkpoint("models/cnn.pt", "cnn")
    shutil.copy(ROOT / "dvc.lock", tmp_path)  # it records models/cnn.pt: DVC can bring it back
    with pytest.raises(UserError, match=r"^models/cnn\.pt does not exist: `dvc checkout models/cnn\.pt` brings back"):
        load_checkpoint("models/cnn.pt", "cnn")


def test_a_damaged_file_that_dvc_lock_records_is_restored_with_dvc_checkout(mlp_file, monkeypatch) -> None:
    monkeypatch.chdir(mlp_file.parent)
    Path("models").mkdir()
    Path("models/mlp.pt").write_bytes(mlp_file.read_bytes()[:-10])
    shutil.copy(ROOT / "dvc.lock", ".")
    with pytest.raises(UserError, match=r"; restore it with `dvc checkout --force models/mlp\.pt`$"):
        load_checkpoint("models/mlp.pt", "mlp")


def test_a_folder_or_fifo_at_the_model_path_is_named_as_such(tmp_path) -> None:
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(UserError, match=r"dir\.pt is a directory, not a model file: remove it"):
        load_checkpoint(tmp_path / "dir.pt", "cnn")
    os.mkfifo(tmp_path / "fifo.pt")
    with pytest.raises(UserError, match=r"fifo\.pt is a special file \(a FIFO, socket or device\), not a model"):
        load_checkpoint(tmp_path / "fifo.pt", "cnn")  # returns at once: a FIFO is never opened


def test_a_checkpoint_of_the_other_model_is_refused(mlp_file) -> None:
    with pytest.raises(UserError, match=r"mlp\.pt is not a cnn checkpoint of this project; retrain with `dvc repro"):
        load_checkpoint(mlp_file, "cnn")


FIRST = "1.weight"  # the MLP's first Linear (after Flatten): float32 (256, 784) in the default params


def replace_first(make):
    return lambda ckpt: ckpt["state_dict"].__setitem__(FIRST, make(ckpt["state_dict"][FIRST]))


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (replace_first(lambda w: w.round().long()), r"torch\.int64 of shape \(\d+, 784\)"),
        (replace_first(lambda w: w.to(torch.complex64)), r"torch\.complex64 of shape"),
        (replace_first(lambda w: w.to(torch.float8_e4m3fn)), r"torch\.float8_e4m3fn of shape"),
        (replace_first(lambda w: w.half()), r"torch\.float16 of shape"),
        (replace_first(lambda w: w.to_sparse()), r"a torch\.sparse_coo tensor on cpu"),
        (replace_first(lambda w: torch.empty_like(w, device="meta")), r"a tensor on meta"),
        (replace_first(lambda w: w[:, :100]), r"torch\.float32 of shape \(\d+, 100\)"),
    ],
    ids=["integer", "complex", "float8", "float16", "sparse", "meta", "shape"],
)
def test_tensors_must_be_exactly_what_the_params_build(mlp_file, change, found) -> None:
    rewrite(mlp_file, change)
    with pytest.raises(
        UserError,
        match=rf"mlp\.pt does not match its own mlp params: 1\.weight is {found}.*the params build dense "
        rf"torch\.float32 of shape \(\d+, 784\) on the CPU" + RETRAIN,
    ):
        load_checkpoint(mlp_file, "mlp")


@pytest.mark.parametrize(("key", "what"), [("1.weight", "lacks"), ("extra.weight", "has an extra tensor")])
def test_a_missing_or_extra_tensor_is_named(mlp_file, key, what) -> None:
    def change(ckpt: dict) -> None:
        if key in ckpt["state_dict"]:
            del ckpt["state_dict"][key]
        else:
            ckpt["state_dict"][key] = torch.zeros(1)

    rewrite(mlp_file, change)
    with pytest.raises(UserError, match=rf"does not match its own mlp params: it {what} {key}" + RETRAIN):
        load_checkpoint(mlp_file, "mlp")


def test_checkpoint_whose_shapes_do_not_match_its_params(tmp_path) -> None:
    cfg = tiny_cfg("mlp")
    save_model(tmp_path / "mlp.pt", result_of(cfg), dataclasses.replace(cfg, hidden=[64, 32]))
    with pytest.raises(UserError, match=r"does not match its own mlp params: 1\.weight is torch\.float32 of shape"):
        load_checkpoint(tmp_path / "mlp.pt", "mlp")


def test_nan_weights_are_refused(mlp_file) -> None:
    rewrite(mlp_file, lambda ckpt: ckpt["state_dict"][FIRST].view(-1).__setitem__(0, float("nan")))
    with pytest.raises(UserError, match=r"mlp\.pt holds NaN or infinite weights \(1\.weight\)" + RETRAIN):
        load_checkpoint(mlp_file, "mlp")


def test_a_checkpoint_whose_own_params_are_too_large_names_the_file_not_params_yaml(mlp_file) -> None:
    huge = to_dict(dataclasses.replace(tiny_cfg("mlp"), hidden=[16384, 16384, 16384]))
    rewrite(mlp_file, lambda ckpt: ckpt.__setitem__("params", huge))
    too_large = rf"^{mlp_file}: mlp would have 549,\d{{3}},\d{{3}} parameters, more than the 100,000,000 this"
    with pytest.raises(UserError, match=too_large + " project allows" + RETRAIN):
        load_checkpoint(mlp_file, "mlp")


def test_the_record_is_what_training_wrote(tmp_path) -> None:
    cfg = tiny_cfg("mlp")
    ckpt = make_checkpoint(result_of(cfg), cfg)
    assert set(ckpt) == {"model", "params", "class_names", "best_epoch", "precision", "device", "state_dict"}
    save_checkpoint(tmp_path / "mlp.pt", {**ckpt, "best_epoch": "1"})
    with pytest.raises(UserError, match=r"mlp\.pt carries a malformed training record" + RETRAIN):
        load_checkpoint(tmp_path / "mlp.pt", "mlp")

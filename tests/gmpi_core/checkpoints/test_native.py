"""The native format: config.json + safetensors, atomic writes, strict loading."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gmpi_core.checkpoints.native as native
from gmpi_core.checkpoints import (
    CheckpointMismatchError,
    NativeCheckpointError,
    load_pretrained,
    read_native_config,
    save_pretrained,
)
from gmpi_core.networks import Discriminator, GMPIGenerator, StyleGAN2Generator

TINY: dict[str, Any] = {
    "z_dim": 8,
    "c_dim": 0,
    "w_dim": 8,
    "img_resolution": 16,
    "img_channels": 3,
    "channel_base": 64,
    "channel_max": 16,
    "num_fp16_res": 0,
    "conv_clamp": 256,
    "mapping_layers": 2,
}


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and buffer random (so a tensor left at its init would be noticed)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=gen))
    return model


def _assert_equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


@pytest.mark.parametrize(
    "build",
    [
        lambda: StyleGAN2Generator(**TINY),
        lambda: GMPIGenerator(**TINY, alpha_head="normalize_add_z"),
        lambda: Discriminator(img_resolution=16, channel_base=64, channel_max=16, num_fp16_res=0),
    ],
    ids=["StyleGAN2Generator", "GMPIGenerator", "Discriminator"],
)
def test_save_then_load_gives_equal_tensors_and_config(tmp_path: Path, build: Any) -> None:
    model = _randomised(build())
    out = save_pretrained(tmp_path / "model", model, extra={"step": 5000, "note": "ü"})
    assert out == tmp_path / "model"
    assert sorted(os.listdir(out)) == ["config.json", "weights.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg == {
        "format": "gmpi-native",
        "version": 1,
        "class": type(model).__name__,
        "kwargs": model.config,
        "extra": {"step": 5000, "note": "ü"},
    }
    assert read_native_config(out) == cfg
    loaded = load_pretrained(out)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config
    _assert_equal_states(loaded.state_dict(), model.state_dict())


def test_ema_tensors_replace_parameters_when_asked(tmp_path: Path) -> None:
    model = _randomised(GMPIGenerator(**TINY))
    ema = {name: p.detach() + 1 for name, p in model.named_parameters()}
    save_pretrained(tmp_path / "m", model, ema_state=ema)
    raw = load_pretrained(tmp_path / "m").state_dict()
    averaged = load_pretrained(tmp_path / "m", use_ema=True).state_dict()
    _assert_equal_states(raw, model.state_dict())
    for name, tensor in model.state_dict().items():
        want = ema.get(name, tensor)  # buffers (w_avg, noise_const) come from the weights
        assert torch.equal(averaged[name], want), name


def test_use_ema_without_ema_file_is_a_clear_error(tmp_path: Path) -> None:
    save_pretrained(tmp_path / "m", StyleGAN2Generator(**TINY))
    with pytest.raises(NativeCheckpointError, match=r"no ema\.safetensors.*use_ema=False"):
        load_pretrained(tmp_path / "m", use_ema=True)


@pytest.mark.parametrize("fail_at", ["weights", "ema", "config"])
def test_crash_while_writing_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    model = StyleGAN2Generator(**TINY)
    ema = {name: p.detach() for name, p in model.named_parameters()}
    real_write, real_text = native._write_safetensors, native._write_text

    def failing_safetensors(path: Path, *args: Any) -> None:
        real_write(path, *args)
        if path.name.startswith(fail_at):
            raise OSError("disk full (simulated)")

    def failing_text(path: Path, text: str) -> None:
        if fail_at == "config":
            path.write_text(text[: len(text) // 2])  # half-written
            raise OSError("disk full (simulated)")
        real_text(path, text)

    monkeypatch.setattr(native, "_write_safetensors", failing_safetensors)
    monkeypatch.setattr(native, "_write_text", failing_text)
    with pytest.raises(OSError, match="simulated"):
        save_pretrained(tmp_path / "m", model, ema_state=ema)
    assert os.listdir(tmp_path) == []  # neither the target nor the staging directory
    with pytest.raises(NativeCheckpointError, match="not a gmpi-native checkpoint"):
        load_pretrained(tmp_path / "m")


def test_overwriting_keeps_other_files_and_a_crash_midway_leaves_it_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "m"
    old = _randomised(StyleGAN2Generator(**TINY), seed=1)
    save_pretrained(target, old, ema_state={n: p.detach() for n, p in old.named_parameters()})
    (target / "train-state").mkdir()
    new = _randomised(StyleGAN2Generator(**TINY), seed=2)
    save_pretrained(target, new)  # no EMA this time: the stale one must go
    assert sorted(os.listdir(target)) == ["config.json", "train-state", "weights.safetensors"]
    _assert_equal_states(load_pretrained(target).state_dict(), new.state_dict())

    calls = {"n": 0}
    real_replace = os.replace

    def crash_on_second(src: Any, dst: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("power cut (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(native.os, "replace", crash_on_second)
    with pytest.raises(OSError, match="simulated"):
        save_pretrained(target, old, ema_state={n: p.detach() for n, p in old.named_parameters()})
    monkeypatch.undo()
    assert not (target / "config.json").exists() and (target / "train-state").is_dir()
    with pytest.raises(NativeCheckpointError, match=r"no config\.json"):
        load_pretrained(target)
    assert [p for p in os.listdir(tmp_path) if p != "m"] == []


def test_unknown_class_in_config_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    save_pretrained(tmp_path / "m", StyleGAN2Generator(**TINY))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["class"] = "os.system"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NativeCheckpointError, match=r"class 'os\.system'.*known: \[.*'GMPIGenerator'"):
        load_pretrained(tmp_path / "m")


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    save_pretrained(tmp_path / "m", StyleGAN2Generator(**TINY))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["kwargs"]["channel_max"] = 8
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointMismatchError, match=r"synthesis\.b4\.const \[16, 4, 4\] \(network: \[8, 4, 4\]\)"
    ):
        load_pretrained(tmp_path / "m")


def test_wrong_format_and_version_are_refused(tmp_path: Path) -> None:
    save_pretrained(tmp_path / "m", StyleGAN2Generator(**TINY))
    path = tmp_path / "m" / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, "version": 2}))
    with pytest.raises(NativeCheckpointError, match="format version 2 is not supported"):
        load_pretrained(tmp_path / "m")
    path.write_text(json.dumps({**cfg, "format": "diffusers"}))
    with pytest.raises(NativeCheckpointError, match="format is 'diffusers'"):
        read_native_config(tmp_path / "m")


def test_only_registered_classes_and_json_extras_can_be_saved(tmp_path: Path) -> None:
    with pytest.raises(NativeCheckpointError, match="register_native_class"):
        save_pretrained(tmp_path / "a", nn.Linear(2, 2))
    with pytest.raises(NativeCheckpointError, match="not JSON-able"):
        save_pretrained(tmp_path / "b", StyleGAN2Generator(**TINY), extra={"tensor": torch.zeros(1)})
    with pytest.raises(NativeCheckpointError, match=r"ema_state does not fit.*synthesis\.b4\.const"):
        save_pretrained(
            tmp_path / "c", StyleGAN2Generator(**TINY), ema_state={"synthesis.b4.const": torch.zeros(3)}
        )
    assert os.listdir(tmp_path) == []


def test_registered_custom_module_round_trips(tmp_path: Path) -> None:
    @native.register_native_class
    class TinyHead(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.config = {"width": width}
            self.proj = nn.Linear(width, width)
            self.register_buffer("running", torch.arange(float(width)))

        @classmethod
        def from_config(cls, cfg: dict[str, Any]) -> TinyHead:
            return cls(**cfg)

    model = _randomised(TinyHead(3))
    save_pretrained(tmp_path / "h", model)
    _assert_equal_states(load_pretrained(tmp_path / "h").state_dict(), model.state_dict())

"""One parser of model sources, one loader: `GMPI.load` opens every source kind, and `gmpi render --model`
opens every source `gmpi eval` opens (an official GMPI checkpoint folder included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gmpi_core.checkpoints.sources import ModelSource, ModelSourceError, detect_source, parse_source
from gmpi_core.eval.protocol import load_model
from gmpi_core.pipeline import DEMO_CHECKPOINT, GMPI
from gmpi_core.render.cli import main as render_main

from .checkpoints.fixtures import SG2Config, build_sg2_pickle, official_config, write_official_checkpoint
from .checkpoints.test_official_gmpi import _param_names, _random_generator_state


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny official GMPI checkpoint folder (config.pth, generator.pth, ema.pth): FFHQ256, 8 channels."""
    directory = tmp_path_factory.mktemp("official") / "checkpoints"
    state = _random_generator_state()
    write_official_checkpoint(
        directory, state, [state[n] + 1 for n in _param_names()], official_config("FFHQ256")
    )
    return directory


@pytest.fixture(scope="module")
def sg2_pkl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fx = build_sg2_pickle("pass", config=SG2Config(resolution=32, channel_base=256, channel_max=16))
    path = tmp_path_factory.mktemp("sg2") / "network.pkl"
    path.write_bytes(fx.data)
    return path


def test_sources_parse_by_kind_prefix_or_by_what_the_path_holds(official_dir, sg2_pkl, tmp_path):
    assert parse_source("random:synthetic32") == ModelSource("random", preset="synthetic32")
    assert parse_source(str(DEMO_CHECKPOINT)) == ModelSource("native", DEMO_CHECKPOINT)
    assert parse_source(f"native:{DEMO_CHECKPOINT}") == ModelSource("native", DEMO_CHECKPOINT)
    assert detect_source(official_dir) == ModelSource("official", official_dir)
    assert detect_source(official_dir / "ema.pth") == ModelSource("official", official_dir)
    assert parse_source(f"gmpi_pth:{official_dir}") == ModelSource("official", official_dir)
    assert parse_source(str(sg2_pkl)).kind == "stylegan2_pkl"
    assert [p.name for p in ModelSource("official", official_dir).files()] == [
        "config.pth",
        "ema.pth",
        "generator.pth",
    ]
    with pytest.raises(ModelSourceError, match="does not exist"):
        parse_source(f"native:{tmp_path / 'nowhere'}")
    with pytest.raises(ModelSourceError, match="neither"):
        parse_source(str(tmp_path))
    with pytest.raises(ModelSourceError, match="cannot be used here"):
        parse_source(str(sg2_pkl), kinds=("native",))


def test_gmpi_load_opens_every_source_kind(official_dir, sg2_pkl, tmp_path):
    random = GMPI.load("random:synthetic32", seed=3)
    assert random.config.name == "synthetic32" and random.info == {"init_seed": 3}
    same = GMPI.random("synthetic32", seed=3)
    for a, b in zip(random.generator.state_dict().values(), same.generator.state_dict().values()):
        assert torch.equal(a, b)

    demo = GMPI.load(None)
    assert demo.source == ModelSource("native", DEMO_CHECKPOINT) and "demo" in demo.describe()
    native = GMPI.load(str(DEMO_CHECKPOINT), preset="synthetic64")
    assert native.config.name == "synthetic64"  # the preset replaces the checkpoint's own config

    official = GMPI.load(official_dir)
    assert official.source is not None and official.source.kind == "official"
    assert official.config.name == "FFHQ256" and official.info == {"ema_step": 5001}
    assert not official.generator.training

    imported = GMPI.load(sg2_pkl)
    assert imported.config.generator.img_resolution == 32  # the pickle's architecture around FFHQ256's camera
    assert imported.config.camera == GMPI.load("random:FFHQ256").config.camera

    imported.save_pretrained(tmp_path / "model")
    assert GMPI.load(f"native:{tmp_path / 'model'}").config == imported.config


def test_eval_and_render_open_the_same_official_checkpoint(official_dir):
    gmpi, info = load_model(str(official_dir))
    assert (info.kind, info.preset, info.extra) == ("official", "FFHQ256", {"ema_step": 5001})
    assert sorted(info.files_sha256) == ["config.pth", "ema.pth", "generator.pth"]
    loaded = GMPI.load(str(official_dir))
    for a, b in zip(gmpi.generator.state_dict().values(), loaded.generator.state_dict().values()):
        assert torch.equal(a, b)


def test_gmpi_render_opens_an_official_gmpi_checkpoint_folder(official_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "--model",
        str(official_dir),
        "--planes",
        "4",
        "--size",
        "32",
        "--mode",
        "image",
        "--out",
        str(out),
    ]
    assert render_main(args) == 0, capsys.readouterr().err
    assert "official GMPI checkpoint" in capsys.readouterr().out
    assert json.loads((out / "seed_0000" / "rendered.json").read_text())["n_planes"] == 4
    assert (out / "seed_0000" / "rendered.png").stat().st_size > 0


def test_gmpi_render_opens_a_stylegan2_pickle(sg2_pkl, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--model", str(sg2_pkl), "--planes", "4", "--mode", "image", "--out", str(out)]
    assert render_main(args) == 0, capsys.readouterr().err
    assert (out / "seed_0000" / "rendered.png").is_file()


def test_generate_draws_noise_from_its_generator_and_leaves_the_global_rng_alone():
    gmpi = GMPI.random("synthetic32", seed=0)
    with torch.no_grad():  # a fresh model's noise strengths are 0: make the noise visible
        for name, param in gmpi.generator.named_parameters():
            if name.endswith("noise_strength"):
                param.fill_(0.5)
    before = torch.get_rng_state()
    a = gmpi.generate(seeds=[4], n_planes=4).rgba  # default noise: seeded with the first seed
    assert torch.equal(torch.get_rng_state(), before)
    b = gmpi.generate(seeds=[4], n_planes=4, generator=gmpi.noise_generator(4)).rgba
    assert torch.equal(a, b)
    with torch.random.fork_rng(devices=[]):  # the generator's noise is what manual_seed(s) gives
        torch.manual_seed(9)
        c = gmpi.generate(z=gmpi.latents([4]), n_planes=4).rgba
    assert torch.equal(c, gmpi.generate(seeds=[4], n_planes=4, generator=gmpi.noise_generator(9)).rgba)
    assert not torch.equal(a, c)
    noise = gmpi.noise_generator(9)
    first = gmpi.generate(seeds=[4], n_planes=4, generator=noise).rgba
    assert not torch.equal(first, gmpi.generate(seeds=[4], n_planes=4, generator=noise).rgba)  # it advances


def test_an_official_checkpoint_renders_byte_identically_in_two_processes(official_dir, tmp_path):
    """Its fresh buffers (the constant noise) come from the load seed, not from whatever the RNG holds."""
    from .test_cli_render import _render_in_a_new_process

    args = ["--model", str(official_dir), "--noise-mode", "const", "--planes", "4", "--size", "32"]
    first = _render_in_a_new_process(tmp_path / "a", *args, "--mode", "image")
    second = _render_in_a_new_process(tmp_path / "b", *args, "--mode", "image")
    assert "seed_0000/rendered.png" in first and first == second


def test_gmpi_load_initialises_gmpi_from_a_native_2d_model(tmp_path):
    from gmpi_core.checkpoints.native import save_pretrained
    from gmpi_core.networks import StyleGAN2Generator

    net2d = StyleGAN2Generator(
        z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3, channel_base=256, channel_max=32,
        num_fp16_res=0, conv_clamp=256, mapping_layers=2,
    )  # fmt: skip
    save_pretrained(tmp_path / "2d", net2d)
    gmpi = GMPI.load(f"native2d:{tmp_path / '2d'}", preset="synthetic32")
    assert gmpi.config.name == "synthetic32" and gmpi.source == ModelSource("native2d", tmp_path / "2d")
    state = gmpi.generator.state_dict()
    for name, tensor in net2d.state_dict().items():  # every 2D tensor lands on its GMPI counterpart
        assert torch.equal(state[name], tensor), name
    assert gmpi.generate(seeds=[1], n_planes=4).rgba.shape == (1, 4, 4, 32, 32)

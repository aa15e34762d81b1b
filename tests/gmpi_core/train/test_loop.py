"""The training step (§6.4, §6.5): losses, R1, worst-view choice, lighting schedule, 2D mode, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gmpi_core.config import ExperimentConfig, preset
from gmpi_core.train.losses import r1_penalty, select_worst_views, worst_view_index


def tiny_config(data: Path | str | None, **train) -> ExperimentConfig:
    """synthetic32 with 8/16/32-channel networks, 4 planes and batch 2: a step takes well under a second."""
    train = {"batch_size": 2, "n_planes": 4, "sample_interval": 1000, "model_save_interval": 0, **train}
    return preset("synthetic32").with_updates(
        generator={"z_dim": 32, "w_dim": 32, "channel_base": 256, "channel_max": 32, "mapping_layers": 2},
        discriminator={"channel_base": 256, "channel_max": 32},
        train=train,
        dataset={"images": None if data is None else str(data)},
    )


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    from gmpi_core.data.synthetic import synthesize_dataset

    out = tmp_path_factory.mktemp("synth32") / "data"
    synthesize_dataset(out, 32, 8, seed=0, progress=False)
    return out


# --- losses -----------------------------------------------------------------------------------------------


def test_r1_of_a_linear_discriminator_is_half_gamma_times_squared_weight_norm():
    # D(x) = <w, x> per sample ⇒ ∇_x Σ D = w for every sample ⇒ R1 = γ/2 ‖w‖², and dR1/dw = γ w
    w = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    logits = (x * w).sum(dim=[1, 2, 3])[:, None]
    r1 = r1_penalty(logits, x, gamma=10.0)
    assert r1.item() == pytest.approx(5.0 * w.detach().square().sum().item(), rel=1e-12)
    (grad_w,) = torch.autograd.grad(r1, w)
    torch.testing.assert_close(grad_w, 10.0 * w.detach(), rtol=1e-12, atol=0)


def test_r1_of_a_tiny_discriminator_equals_per_sample_input_gradients_squared():
    from gmpi_core.networks import Discriminator

    torch.manual_seed(0)
    D = Discriminator(img_resolution=8, c_dim=16, channel_base=64, channel_max=8, num_fp16_res=0).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    c = torch.randn(3, 16, dtype=torch.float64)
    # independent reference: each sample's gradient on its own (mbstd group 1 ⇒ samples do not interact)
    norms = []
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(xi, c[i : i + 1]).sum(), xi)
        norms.append(g.square().sum().item())
    expected = 0.5 * 10.0 * sum(norms) / 3
    xb = x.clone().requires_grad_(True)
    r1 = r1_penalty(D(xb, c), xb, gamma=10.0)
    assert r1.item() == pytest.approx(expected, rel=1e-10)
    assert r1.requires_grad  # create_graph: D is trained through the penalty


def test_worst_view_selection_keeps_the_lowest_logit_view_of_every_latent():
    gen = torch.Generator().manual_seed(0)
    drawn: list[tuple[torch.Tensor, torch.Tensor]] = []
    bias = torch.tensor([0.0, 3.0, -2.0, 1.0, 0.5])  # per-latent offset: the choice must stay per latent

    def sample_poses(n):
        yaw, pitch = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
        drawn.append((yaw, pitch))
        return yaw, pitch

    def score(group, yaw, pitch):  # fake D: logit = sin(7 yaw) + pitch + per-latent bias
        m = group.stop - group.start
        return (torch.sin(7 * yaw) + pitch).reshape(m, 4) + bias[group, None]

    yaw, pitch = select_worst_views(5, 4, 2, sample_poses, score)  # groups of 2, 2, 1
    all_yaw = torch.cat([y.reshape(-1, 4) for y, _ in drawn])
    all_pitch = torch.cat([p.reshape(-1, 4) for _, p in drawn])
    logits = torch.sin(7 * all_yaw) + all_pitch
    for j in range(5):
        k = min(range(4), key=lambda v: logits[j, v].item())
        assert yaw[j] == all_yaw[j, k] and pitch[j] == all_pitch[j, k]
    assert worst_view_index(torch.tensor([[0.3, -1.0, 2.0], [5.0, 4.0, -4.0]])).tolist() == [1, 2]


# --- the step -----------------------------------------------------------------------------------------------


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_one_gmpi_step_gives_finite_losses_and_updates_G_D_and_the_ema(synthetic_data, tmp_path):
    from gmpi_core.train.loop import Trainer

    t = Trainer(tiny_config(synthetic_data), tmp_path, device="cpu", progress=False)
    g0, d0, e0 = _params(t.G), _params(t.D), [s.clone() for s in t.ema.shadow_params]
    stats = t.step()
    for key in ("loss_d", "loss_d_real", "loss_d_fake", "r1", "loss_g"):
        assert math.isfinite(stats[key]), key
    assert stats["loss_d"] == pytest.approx(stats["loss_d_real"] + stats["loss_d_fake"])
    assert stats["ema_decay"] == pytest.approx(2 / 11)  # torch_ema warm-up at t = 1 (docs/method.md §6.8)
    assert any(not torch.equal(a, b) for a, b in zip(g0, t.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, t.D.parameters()))
    # EMA moved by (1 − d)·(θ − θ_ema) toward the new G
    for before, shadow, p in zip(e0, t.ema.shadow_params, t.G.parameters()):
        torch.testing.assert_close(shadow, before + (1 - 2 / 11) * (p.detach() - before))
    assert t.step_idx == 1
    # sample grids (docs/method.md §6.9): 16 fixed latents as 4×4 tiles of 32², the 4 planes of one MPI
    from PIL import Image

    written = {p.name: Image.open(p).size for p in t.write_samples()}
    assert written == {
        "0000001_fixed_ema.png": (128, 128),
        "0000001_tilted_ema.png": (128, 128),
        "0000001_mpi_rgb.png": (65, 65),
        "0000001_mpi_alpha.png": (65, 65),
    }


def test_lighting_shades_mpis_only_after_start_iter(synthetic_data, tmp_path):
    from gmpi_core.train.loop import Trainer

    cfg = tiny_config(synthetic_data, batch_split=2, lighting={"start_iter": 3, "grow_n_iters": 100})
    t = Trainer(cfg, tmp_path, device="cpu", progress=False)
    assert not t.lighting_active(3) and t.lighting_active(4)  # official: s > start_iter
    t.step_idx = 3  # the schedule reads the step index (a resumed run sets it the same way)
    stats = t.step()
    assert t.lighting.n_calls == 0 and stats["ka"] == 0.0
    stats = t.step()  # s = 4: every D-step and G-step chunk is shaded: 2 + 2 calls
    assert t.lighting.n_calls == 4
    assert stats["ka"] == 0.0  # the official ramp starts at k_a = 0 (docs/method.md §12.2.1)
    stats = t.step()
    assert stats["ka"] == pytest.approx(0.9 * 4 / 100) and stats["kd"] == pytest.approx(0.1 * 4 / 100)


def test_missing_dataset_is_a_clear_error(tmp_path):
    from gmpi_core.train.loop import Trainer, TrainingError

    with pytest.raises(TrainingError, match="--data"):
        Trainer(tiny_config(None), tmp_path / "a", device="cpu")
    with pytest.raises(TrainingError, match="does not exist"):
        Trainer(tiny_config(tmp_path / "nowhere"), tmp_path / "b", device="cpu")


def test_cli_reports_missing_dataset_missing_poses_and_unknown_preset(tmp_path, capsys):
    from gmpi_core.train.cli import main

    assert (
        main(["--preset", "synthetic32", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "dataset not found" in capsys.readouterr().err
    (tmp_path / "ffhq.zip").write_bytes(b"")
    assert (
        main(["--preset", "FFHQ256", "--data", str(tmp_path / "ffhq.zip"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "--poses" in capsys.readouterr().err
    assert main(["--run_dataset", "FFHQ128", "--out", str(tmp_path / "o")]) == 2
    assert "unknown preset 'FFHQ128'" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["stylegan2", "gmpi"])
def test_lazy_r1_applies_gamma_times_interval_on_every_kth_step_and_nothing_between(
    synthetic_data, tmp_path, mode
):
    """R1 is γ/2·E‖∇D‖², linear in γ: at step 0 the lazy run (k = 3) must report exactly 3× the penalty of
    the every-step run (same seed, same D, same real batch); steps 1 and 2 carry none; step 3 does again."""
    from gmpi_core.train.loop import Trainer

    every = Trainer(tiny_config(synthetic_data), tmp_path / "a", mode=mode, device="cpu", progress=False)
    lazy = Trainer(
        tiny_config(synthetic_data, r1_interval=3), tmp_path / "b", mode=mode, device="cpu", progress=False
    )
    r_every, r_lazy = every.step()["r1"], [lazy.step()["r1"] for _ in range(4)]
    assert r_every > 0
    assert r_lazy[0] == pytest.approx(3 * r_every, rel=1e-5)
    assert r_lazy[1] == 0.0 and r_lazy[2] == 0.0
    assert r_lazy[3] > 0


def test_r1_interval_must_be_positive():
    with pytest.raises(ValueError, match="r1_interval"):
        tiny_config(None, r1_interval=0)


def test_stylegan2_mode_trains_and_its_export_initialises_gmpi(synthetic_data, tmp_path):
    from gmpi_core.train.loop import Trainer

    cfg = tiny_config(synthetic_data)
    t2d = Trainer(cfg, tmp_path / "2d", mode="stylegan2", device="cpu", progress=False, sample_every=0)
    stats = t2d.train(until=2)
    assert stats is not None and math.isfinite(stats["loss_g"]) and math.isfinite(stats["r1"])
    assert t2d.D.c_dim == 0
    assert (tmp_path / "2d" / "model" / "config.json").is_file()

    t = Trainer(
        cfg, tmp_path / "gmpi", init=f"native2d:{tmp_path / '2d' / 'model'}", device="cpu", progress=False
    )
    ema_2d = t2d.ema.named_shadow(t2d.G)
    g_state = t.G.state_dict()
    shared = [k for k in ema_2d if k in g_state]
    assert len(shared) == len(ema_2d)  # every 2D parameter has a GMPI counterpart
    for k in shared:  # G comes from the 2D EMA weights, by name
        torch.testing.assert_close(g_state[k], ema_2d[k], rtol=0, atol=0)
    d2, d = t2d.D.state_dict(), t.D.state_dict()
    assert d2["b4.out.weight"].shape[0] == 1 and d["b4.out.weight"].shape[0] == 16
    assert torch.equal(d["b4.out.weight"], d2["b4.out.weight"].expand(16, -1))  # broadcast copy (method §4.5)
    assert torch.equal(d["b8.conv0.weight"], d2["b8.conv0.weight"])
    assert math.isfinite(t.step()["loss_g"])


def test_stylegan2_pickle_init_copies_G_ema_and_D_by_name_and_rejects_a_mismatched_preset(
    synthetic_data, tmp_path
):
    from gmpi_core.train.loop import Trainer, TrainingError
    from tests.gmpi_core.checkpoints.fixtures import SG2Config, build_sg2_pickle

    sg2 = SG2Config(resolution=32, z_dim=32, w_dim=32, channel_base=256, channel_max=32, conv_clamp=256)
    fx = build_sg2_pickle("pass", config=sg2)
    pkl = tmp_path / "sg2.pkl"
    pkl.write_bytes(fx.data)
    cfg = tiny_config(synthetic_data)
    t = Trainer(cfg, tmp_path / "run", init=f"stylegan2_pkl:{pkl}", device="cpu", progress=False)
    g, d = t.G.state_dict(), t.D.state_dict()
    for name, tensor in fx.G_ema.items():  # G ← G_ema (not G), docs/method.md §4.5
        assert torch.equal(g[name], tensor), name
    assert torch.equal(d["b4.out.weight"], fx.D["b4.out.weight"].expand(16, -1))
    assert torch.equal(d["b32.fromrgb.weight"], fx.D["b32.fromrgb.weight"])
    assert math.isfinite(t.step()["loss_d"])
    with pytest.raises(TrainingError, match="channel_max"):
        Trainer(
            cfg.with_updates(generator={"channel_max": 16}), tmp_path / "bad", init=f"stylegan2_pkl:{pkl}"
        )


def test_the_trainers_init_opens_a_source_as_gmpi_load_does(synthetic_data, tmp_path):
    """``--init`` and ``GMPI.load`` share one opener of model sources (``pipeline.init_networks``): a native
    GMPI and (at the official seed and default heads) a StyleGAN2 pickle give the same generator; a 2D model
    the same tensors wherever the 2D model has them (the alpha branch is random, and the trainer draws the
    official 25 fixed latents before building it, GMPI.load does not)."""
    from gmpi_core.checkpoints.native import load_pretrained
    from gmpi_core.checkpoints.stylegan2_pkl import GMPI_INIT_SEED
    from gmpi_core.pipeline import GMPI
    from gmpi_core.train.loop import Trainer
    from tests.gmpi_core.checkpoints.fixtures import SG2Config, build_sg2_pickle

    cfg = tiny_config(synthetic_data)
    assert cfg.train.seed == GMPI_INIT_SEED

    def trainer_g(init: str, name: str) -> dict[str, torch.Tensor]:
        t = Trainer(cfg, tmp_path / name, init=init, device="cpu", progress=False, sample_every=0)
        return t.G.state_dict()

    def other(seed: int, mode: str, name: str) -> Path:  # one step: EMA and raw weights differ
        t = Trainer(cfg.with_updates(train={"seed": seed}), tmp_path / name, mode=mode, device="cpu",
                    progress=False, sample_every=0)  # fmt: skip
        t.train(until=1)
        return t.out / "model"

    native, model2d = other(1, "gmpi", "g"), other(2, "stylegan2", "2d")
    pkl = tmp_path / "sg2.pkl"
    sg2 = SG2Config(resolution=32, z_dim=32, w_dim=32, channel_base=256, channel_max=32, conv_clamp=256)
    pkl.write_bytes(build_sg2_pickle("pass", config=sg2).data)

    for init in (f"native:{native}", f"stylegan2_pkl:{pkl}"):
        g, loaded = trainer_g(init, init.partition(":")[0]), GMPI.load(init).generator.state_dict()
        assert g.keys() == loaded.keys()
        assert all(torch.equal(g[k], loaded[k]) for k in g), init
    g = trainer_g(f"native2d:{model2d}", "from2d")
    loaded = GMPI.load(f"native2d:{model2d}", seed=cfg.train.seed).generator.state_dict()
    names_2d = load_pretrained(model2d).state_dict().keys()
    assert g.keys() == loaded.keys() and names_2d < g.keys()
    assert all(torch.equal(g[k], loaded[k]) for k in names_2d)


def test_tensorboard_holds_the_losses_ema_decay_lighting_and_the_sample_grids(synthetic_data, tmp_path):
    """docs/method.md §6.9 logging: every logged scalar of log.jsonl is a TensorBoard scalar at the same step,
    and the sample grids are TensorBoard images."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gmpi_core.train.loop import Trainer

    t = Trainer(tiny_config(synthetic_data), tmp_path, device="cpu", progress=False, log_every=1)
    t.train(until=2)
    t.write_samples()
    t.close()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    for key in ("loss_g", "loss_d", "r1", "ema_decay", "ka", "kd"):
        assert f"train/{key}" in tags["scalars"], (key, tags["scalars"])
    for r in records:
        events = {e.step: e.value for e in acc.Scalars("train/loss_g")}
        assert events[r["step"]] == pytest.approx(r["loss_g"], rel=1e-6)
    assert {"samples/fixed_ema", "samples/tilted_ema", "samples/mpi_rgb", "samples/mpi_alpha"} <= set(
        tags["images"]
    )
    image = acc.Images("samples/fixed_ema")[-1]
    assert (image.step, image.width, image.height) == (2, 128, 128)

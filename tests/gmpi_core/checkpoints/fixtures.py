"""Test fixtures written in the foreign formats: StyleGAN2-ADA pickles, official GMPI checkpoints.

Nothing here imports ``torch_utils``/``dnnlib``/``yacs``. The streams are written with a pure-Python
pickler whose ``save_global`` writes chosen ``module.name`` pairs for placeholder objects, so the files
reference exactly the globals real ones do (``torch_utils.persistence._reconstruct_persistent_obj``,
``dnnlib.util.EasyDict``, ``yacs.config.CfgNode``, ...) without any fake module in ``sys.modules``.
Tensors are pickled by PyTorch itself: ``torch._utils._rebuild_tensor_v2`` over legacy (non-zip)
``torch.save`` blobs via ``torch.storage._load_from_bytes``, as in the 2020 pickles (docs/method.md §11.2).

The networks mirror StyleGAN2-ADA's class nesting (Generator → synthesis → b4 → conv1 → affine, ...),
its ``_init_args``/``_init_kwargs`` (method §11.3) and its tensor names and shapes (method §11.4).
"""

from __future__ import annotations

import io
import pickle
import types
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

SG2_RESAMPLE_FILTER = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64


class GlobalRef:
    """A placeholder pickled as the global ``module.name`` (calling it here is an error)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"placeholder for {self.module}.{self.name}")


class EasyDict(dict):
    """Pickled as ``dnnlib.util.EasyDict``."""


class CfgNode(dict):
    """Pickled as ``yacs.config.CfgNode`` with yacs' instance state (written by BUILD after the items)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__.update(
            {
                "__immutable__": True,
                "__deprecated_keys__": set(),
                "__renamed_keys__": {},
                "__new_allowed__": True,
            }
        )


class TFNetwork:
    """Pickled as ``dnnlib.tflib.network.Network`` (the TensorFlow StyleGAN2 stub)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.static_kwargs = {"resolution": 16}


CLASS_NAMES: dict[type, tuple[str, str]] = {
    EasyDict: ("dnnlib.util", "EasyDict"),
    CfgNode: ("yacs.config", "CfgNode"),
    TFNetwork: ("dnnlib.tflib.network", "Network"),
}
RECONSTRUCT = GlobalRef("torch_utils.persistence", "_reconstruct_persistent_obj")


_PurePythonPickler: Any = pickle._Pickler  # type: ignore[attr-defined]  # its save_global can be overridden


class FixturePickler(_PurePythonPickler):
    """Pure-Python pickler writing placeholder globals under their foreign names."""

    dispatch: ClassVar[dict[type, Any]] = dict(_PurePythonPickler.dispatch)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        ref = (obj.module, obj.name) if isinstance(obj, GlobalRef) else CLASS_NAMES.get(obj)  # type: ignore[call-overload]
        if ref is None:
            return super().save_global(obj, name)
        module, qualname = ref
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)
        return None

    dispatch[GlobalRef] = save_global


def dumps(obj: Any, protocol: int = 4) -> bytes:
    buf = io.BytesIO()
    FixturePickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


class Reduce:
    """An object pickled as ``func(*args)`` — to write payloads such as ``os.system('touch x')``."""

    def __init__(self, func: GlobalRef, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


# ---------------------------------------------------------------------------------------------------
# Persistent StyleGAN2-ADA networks


class Persistent:
    """Pickles as ``_reconstruct_persistent_obj(meta)``, like ``@persistence.persistent_class`` objects."""

    def __init__(self, class_name: str, state: dict[str, Any], module_src: str, version: int = 6) -> None:
        self.meta: dict[str, Any] = {
            "type": "class",
            "version": version,
            "module_src": module_src,
            "class_name": class_name,
            "state": state,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        return (RECONSTRUCT, (self.meta,), None)


def flatten(node: Persistent, prefix: str = "") -> dict[str, Tensor]:
    """PyTorch ``state_dict`` order: own parameters, own buffers, then children (docs/method.md §11.4)."""
    state = node.meta["state"]
    out: dict[str, Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, tensor in state[group].items():
            if tensor is not None:
                out[prefix + name] = tensor.detach()
    for name, child in state["_modules"].items():
        out.update(flatten(child, f"{prefix}{name}."))
    return out


class SG2Builder:
    """Builds persistent StyleGAN2-ADA network trees with seeded random tensors."""

    def __init__(self, seed: int, module_src: str, version: int = 6) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.module_src = module_src
        self.version = version

    def randn(self, *shape: int, scale: float = 1.0, offset: float = 0.0) -> Tensor:
        return torch.randn(shape, generator=self.gen) * scale + offset

    def module(
        self,
        class_name: str,
        *,
        params: dict[str, Tensor | None] | None = None,
        buffers: dict[str, Tensor] | None = None,
        children: dict[str, Persistent] | None = None,
        init_args: tuple[Any, ...] = (),
        init_kwargs: dict[str, Any] | None = None,
        **attrs: Any,
    ) -> Persistent:
        parameters = OrderedDict(
            (k, None if v is None else torch.nn.Parameter(v, requires_grad=False))
            for k, v in (params or {}).items()
        )
        state: dict[str, Any] = {
            "training": False,
            "_parameters": parameters,
            "_buffers": OrderedDict(buffers or {}),
            "_non_persistent_buffers_set": set(),
            "_backward_pre_hooks": OrderedDict(),
            "_backward_hooks": OrderedDict(),
            "_is_full_backward_hook": None,
            "_forward_hooks": OrderedDict(),
            "_forward_pre_hooks": OrderedDict(),
            "_state_dict_hooks": OrderedDict(),
            "_load_state_dict_pre_hooks": OrderedDict(),
            "_modules": OrderedDict(children or {}),
            "_init_args": init_args,
            "_init_kwargs": init_kwargs or {},
            **attrs,
        }
        return Persistent(class_name, state, self.module_src, self.version)

    # -- layers (SG2 training/networks.py, by their stored names and shapes) -------------------------

    def fc(
        self, in_f: int, out_f: int, *, bias_init: float = 0.0, lr: float = 1.0, act: str = "linear"
    ) -> Persistent:
        return self.module(
            "FullyConnectedLayer",
            params={
                "weight": self.randn(out_f, in_f, scale=1.0 / lr),
                "bias": self.randn(out_f, scale=0.1, offset=bias_init),
            },
            init_args=(in_f, out_f),
            init_kwargs={"activation": act, "lr_multiplier": lr, "bias_init": bias_init},
            activation=act,
            weight_gain=np.float64(lr / np.sqrt(in_f)),
            bias_gain=lr,
        )

    def synthesis_layer(
        self, c_in: int, c_out: int, w_dim: int, res: int, up: int, clamp: float | None
    ) -> Persistent:
        return self.module(
            "SynthesisLayer",
            params={
                "weight": self.randn(c_out, c_in, 3, 3),
                "noise_strength": self.randn(scale=0.3),
                "bias": self.randn(c_out, scale=0.1),
            },
            buffers={"resample_filter": SG2_RESAMPLE_FILTER.clone(), "noise_const": self.randn(res, res)},
            children={"affine": self.fc(w_dim, c_in, bias_init=1.0)},
            init_args=(c_in, c_out),
            init_kwargs={
                "w_dim": w_dim,
                "resolution": res,
                "up": up,
                "conv_clamp": clamp,
                "channels_last": False,
            },
            resolution=res,
            up=up,
            use_noise=True,
            activation="lrelu",
            conv_clamp=clamp,
            padding=1,
            act_gain=1.4142135623730951,
        )

    def torgb(self, c_in: int, img_channels: int, w_dim: int, clamp: float | None) -> Persistent:
        return self.module(
            "ToRGBLayer",
            params={
                "weight": self.randn(img_channels, c_in, 1, 1),
                "bias": self.randn(img_channels, scale=0.1),
            },
            children={"affine": self.fc(w_dim, c_in, bias_init=1.0)},
            init_args=(c_in, img_channels),
            init_kwargs={"w_dim": w_dim, "conv_clamp": clamp, "channels_last": False},
            conv_clamp=clamp,
            weight_gain=np.float64(1 / np.sqrt(c_in)),
        )

    def conv2d(
        self,
        c_in: int,
        c_out: int,
        k: int,
        *,
        bias: bool = True,
        down: int = 1,
        act: str = "lrelu",
        clamp: float | None = None,
    ) -> Persistent:
        return self.module(
            "Conv2dLayer",
            params={
                "weight": self.randn(c_out, c_in, k, k),
                "bias": self.randn(c_out, scale=0.1) if bias else None,
            },
            buffers={"resample_filter": SG2_RESAMPLE_FILTER.clone()},
            init_args=(c_in, c_out),
            init_kwargs={
                "kernel_size": k,
                "bias": bias,
                "down": down,
                "activation": act,
                "conv_clamp": clamp,
            },
            activation=act,
            down=down,
            weight_gain=np.float64(1 / np.sqrt(c_in * k * k)),
        )

    # -- networks -----------------------------------------------------------------------------------------

    def generator(self, cfg: SG2Config) -> Persistent:
        ch = {r: min(cfg.channel_base // r, cfg.channel_max) for r in cfg.block_resolutions}
        blocks: dict[str, Persistent] = {}
        for r in cfg.block_resolutions:
            children: dict[str, Persistent] = {}
            params: dict[str, Tensor | None] = {}
            if r == 4:
                params["const"] = self.randn(ch[4], 4, 4)
            else:
                children["conv0"] = self.synthesis_layer(ch[r // 2], ch[r], cfg.w_dim, r, 2, cfg.conv_clamp)
            children["conv1"] = self.synthesis_layer(ch[r], ch[r], cfg.w_dim, r, 1, cfg.conv_clamp)
            children["torgb"] = self.torgb(ch[r], 3, cfg.w_dim, cfg.conv_clamp)
            blocks[f"b{r}"] = self.module(
                "SynthesisBlock",
                params=params,
                buffers={"resample_filter": SG2_RESAMPLE_FILTER.clone()},
                children=children,
                init_args=(0 if r == 4 else ch[r // 2], ch[r]),
                init_kwargs=EasyDict(
                    w_dim=cfg.w_dim,
                    resolution=r,
                    img_channels=3,
                    is_last=r == cfg.resolution,
                    use_fp16=False,
                    conv_clamp=cfg.conv_clamp,
                ),
                num_conv=1 if r == 4 else 2,
                num_torgb=1,
                architecture="skip",
            )
        synthesis = self.module(
            "SynthesisNetwork",
            children=blocks,
            init_kwargs=EasyDict(
                w_dim=cfg.w_dim,
                img_resolution=cfg.resolution,
                img_channels=3,
                channel_base=cfg.channel_base,
                channel_max=cfg.channel_max,
                num_fp16_res=cfg.num_fp16_res,
                conv_clamp=cfg.conv_clamp,
            ),
            w_dim=cfg.w_dim,
            img_resolution=cfg.resolution,
            img_resolution_log2=int(np.log2(cfg.resolution)),
            block_resolutions=list(cfg.block_resolutions),
            num_ws=cfg.num_ws,
        )
        fcs = {
            f"fc{i}": self.fc(cfg.z_dim if i == 0 else cfg.w_dim, cfg.w_dim, lr=0.01, act="lrelu")
            for i in range(cfg.mapping_layers)
        }
        mapping = self.module(
            "MappingNetwork",
            buffers={"w_avg": self.randn(cfg.w_dim)},  # a trained, non-zero running mean
            children=fcs,
            init_kwargs={
                "z_dim": cfg.z_dim,
                "c_dim": 0,
                "w_dim": cfg.w_dim,
                "num_ws": cfg.num_ws,
                "num_layers": cfg.mapping_layers,
            },
            num_ws=cfg.num_ws,
            w_avg_beta=0.995,
        )
        return self.module(
            "Generator",
            children={"synthesis": synthesis, "mapping": mapping},  # synthesis is registered first
            init_kwargs=cfg.generator_init_kwargs(),
            z_dim=cfg.z_dim,
            c_dim=0,
            w_dim=cfg.w_dim,
            img_resolution=cfg.resolution,
            img_channels=3,
            num_ws=cfg.num_ws,
        )

    def discriminator(self, cfg: SG2Config) -> Persistent:
        resolutions = [r for r in reversed(cfg.block_resolutions) if r > 4]
        ch = {r: min(cfg.channel_base // r, cfg.channel_max) for r in [*resolutions, 4]}
        children: dict[str, Persistent] = {}
        for r in resolutions:
            block: dict[str, Persistent] = {}
            if r == cfg.resolution:
                block["fromrgb"] = self.conv2d(3, ch[r], 1, clamp=cfg.conv_clamp)
            block["conv0"] = self.conv2d(ch[r], ch[r], 3, clamp=cfg.conv_clamp)
            block["conv1"] = self.conv2d(ch[r], ch[r // 2], 3, down=2, clamp=cfg.conv_clamp)
            block["skip"] = self.conv2d(ch[r], ch[r // 2], 1, bias=False, down=2, act="linear")
            children[f"b{r}"] = self.module(
                "DiscriminatorBlock",
                buffers={"resample_filter": SG2_RESAMPLE_FILTER.clone()},
                children=block,
                init_args=(0 if r == cfg.resolution else ch[r], ch[r], ch[r // 2]),
                init_kwargs={"resolution": r, "img_channels": 3, "conv_clamp": cfg.conv_clamp},
                architecture="resnet",
            )
        children["b4"] = self.module(
            "DiscriminatorEpilogue",
            children={
                "mbstd": self.module(
                    "MinibatchStdLayer",
                    init_kwargs={"group_size": cfg.mbstd_group_size, "num_channels": 1},
                    group_size=cfg.mbstd_group_size,
                    num_channels=1,
                ),
                "conv": self.conv2d(ch[4] + 1, ch[4], 3, clamp=cfg.conv_clamp),
                "fc": self.fc(ch[4] * 16, ch[4], act="lrelu"),
                "out": self.fc(ch[4], 1),
            },
            init_args=(ch[4],),
            init_kwargs={
                "cmap_dim": 0,
                "resolution": 4,
                "img_channels": 3,
                "mbstd_group_size": cfg.mbstd_group_size,
                "conv_clamp": cfg.conv_clamp,
            },
        )
        return self.module(
            "Discriminator",
            children=children,
            init_kwargs={
                "c_dim": 0,
                "img_resolution": cfg.resolution,
                "img_channels": 3,
                "block_kwargs": EasyDict(),
                "mapping_kwargs": EasyDict(),
                "epilogue_kwargs": EasyDict(mbstd_group_size=cfg.mbstd_group_size),
                "channel_base": cfg.channel_base,
                "channel_max": cfg.channel_max,
                "num_fp16_res": cfg.num_fp16_res,
                "conv_clamp": cfg.conv_clamp,
            },
            c_dim=0,
            img_resolution=cfg.resolution,
            block_resolutions=resolutions,
        )


@dataclass(frozen=True)
class SG2Config:
    """A tiny StyleGAN2 at 16² (C_4, C_8, C_16 = 16, 8, 4 with the defaults)."""

    resolution: int = 16
    z_dim: int = 8
    w_dim: int = 8
    channel_base: int = 64
    channel_max: int = 16
    num_fp16_res: int = 0
    conv_clamp: float | None = 2.0  # small enough to be active, so a lost clamp changes images
    mapping_layers: int = 2
    mbstd_group_size: int = 2

    @property
    def block_resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(np.log2(self.resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        return 2 * len(self.block_resolutions)  # 1 conv at 4², 2 per other block, +1 for the last ToRGB

    def generator_init_kwargs(self) -> dict[str, Any]:
        """What SG2's training script passes (docs/method.md §11.3): no architecture, no defaults."""
        return {
            "z_dim": self.z_dim,
            "w_dim": self.w_dim,
            "mapping_kwargs": EasyDict(num_layers=self.mapping_layers),
            "synthesis_kwargs": EasyDict(
                channel_base=self.channel_base,
                channel_max=self.channel_max,
                num_fp16_res=self.num_fp16_res,
                conv_clamp=self.conv_clamp,
            ),
            "c_dim": 0,
            "img_resolution": self.resolution,
            "img_channels": 3,
        }

    def our_generator_kwargs(self) -> dict[str, Any]:
        """The kwargs of our StyleGAN2Generator for this network, written out by hand."""
        return {
            "z_dim": self.z_dim,
            "c_dim": 0,
            "w_dim": self.w_dim,
            "img_resolution": self.resolution,
            "img_channels": 3,
            "channel_base": self.channel_base,
            "channel_max": self.channel_max,
            "num_fp16_res": self.num_fp16_res,
            "conv_clamp": self.conv_clamp,
            "mapping_layers": self.mapping_layers,
        }


@dataclass
class SG2Fixture:
    """A pickle and the tensors it was built from (``flatten`` of each network tree)."""

    data: bytes
    config: SG2Config
    G: dict[str, Tensor]
    D: dict[str, Tensor]
    G_ema: dict[str, Tensor]


def executing_module_src(marker: str) -> str:
    """Source text that, if anyone executed it, would create ``marker`` and kill the interpreter."""
    return (
        "import os\n"
        f"open({marker!r}, 'w').write('module_src was executed')\n"
        f"os.system('touch {marker}')\n"
        "raise SystemExit('module_src was executed')\n"
    )


def build_sg2_pickle(
    module_src: str,
    *,
    config: SG2Config | None = None,
    seed: int = 0,
    version: int = 6,
    protocol: int = 4,
    with_augment_pipe: bool = False,
) -> SG2Fixture:
    cfg = config or SG2Config()
    builder = SG2Builder(seed, module_src, version)
    G, D, G_ema = builder.generator(cfg), builder.discriminator(cfg), builder.generator(cfg)
    augment = None
    if with_augment_pipe:
        augment = builder.module(
            "AugmentPipe", buffers={"p": torch.zeros([])}, init_kwargs={"xflip": 1}, xflip=1.0
        )
    snapshot = {
        "training_set_kwargs": {
            "class_name": "training.dataset.ImageFolderDataset",
            "path": "ffhq.zip",
            "resolution": cfg.resolution,
            "xflip": True,
        },
        "G": G,
        "D": D,
        "G_ema": G_ema,
        "augment_pipe": augment,
    }
    return SG2Fixture(dumps(snapshot, protocol), cfg, flatten(G), flatten(D), flatten(G_ema))


def build_tf_pickle() -> bytes:
    """The shape of an original TensorFlow StyleGAN2 pickle: a (G, D, Gs) tuple of Network stubs."""
    return dumps((TFNetwork("G"), TFNetwork("D"), TFNetwork("Gs")))


# ---------------------------------------------------------------------------------------------------
# Official GMPI checkpoint directories (docs/method.md §6.9)


def fixture_pickle_module() -> types.ModuleType:
    """A ``pickle_module`` for ``torch.save`` that writes :data:`CLASS_NAMES` under their foreign names."""
    module = types.ModuleType("fixture_pickle")
    module.Pickler = FixturePickler  # type: ignore[attr-defined]
    module.Unpickler = pickle.Unpickler  # type: ignore[attr-defined]
    module.dump = lambda obj, f, protocol=2: FixturePickler(f, protocol=protocol).dump(obj)  # type: ignore[attr-defined]
    return module


def official_config(dataset: str = "FFHQ256", **stylegan2: Any) -> dict[str, Any]:
    """An official config (after ``modify_curriculums``) as nested plain dicts, tiny channels by default."""
    res = {"FFHQ256": 256, "FFHQ512": 512, "FFHQ1024": 1024, "AFHQCat": 512, "MetFaces": 1024}[dataset]
    sg2 = {
        "G_final_img_act": "tanh",
        "truncation_psi": 1.0,
        "torgba_cond_on_pos_enc": "normalize_add_z",
        "torgba_cond_on_pos_enc_embed_func": "modulated_lrelu",
        "pos_enc_multires": 0,
        "torgba_sep_background": True,
        "build_background_from_rgb": True,
        "build_background_from_rgb_ratio": 0.05,
        "cond_on_pos_enc_only_alpha": True,
        "gen_alpha_largest_res": 256,
        "background_alpha_full": True,
        "mapping_kwargs": {"num_layers": 2},
        "synthesis_kwargs": {"channel_base": 2048, "channel_max": 8},  # fmaps 0.5 at 256² → 1024
        "discriminator": {
            "use_ori_mapping": False,
            "cmap_dim": 16,
            "use_mbstd_in_D": True,
            "mbstd_group_size": 1,
        },
        "max_out_dim": res,
        "max_out_dim_D": res,
    }
    sg2.update(stylegan2)
    return {
        "SEED": 123,
        "GMPI": {
            "TRAIN": {
                "dataset": dataset,
                "curriculum": "FFHQ",
                "normalized_xyz_range": "01",
                "D_cond_pose_dim": 16,
            },
            "MPI": {"n_gen_planes": 32, "depth2alpha_n_z_bins": 256, "distance_sample_method": "inverse"},
            "MODEL": {
                "use_pretrained_ckpt": True,
                "pretrained": "x.pkl",
                "pretrained_D": "x.pkl",
                "STYLEGAN2": sg2,
            },
        },
    }


def to_cfg_nodes(value: Any) -> Any:
    """Nested dicts → nested :class:`CfgNode` (how a config.pth holding yacs objects would look)."""
    if isinstance(value, dict):
        return CfgNode({k: to_cfg_nodes(v) for k, v in value.items()})
    return value


def write_official_checkpoint(
    directory: Any,
    generator_state: dict[str, Tensor],
    shadow_params: list[Tensor],
    config: dict[str, Any],
    *,
    yacs_nodes: bool = False,
    num_updates: int = 5001,
) -> None:
    """Write config.pth, generator.pth and ema.pth as the official training script does."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg_obj = to_cfg_nodes(config) if yacs_nodes else config
    torch.save({"config": cfg_obj}, directory / "config.pth", pickle_module=fixture_pickle_module())
    torch.save(OrderedDict(generator_state), directory / "generator.pth")
    ema = {
        "decay": 0.999,
        "num_updates": num_updates,
        "shadow_params": shadow_params,
        "collected_params": None,
    }
    torch.save(ema, directory / "ema.pth")

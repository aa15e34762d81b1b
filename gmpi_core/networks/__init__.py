"""Networks: StyleGAN2 layers with SG2-ADA-compatible names, the mapping network, the discriminator."""

from gmpi_core.networks.discriminator import (
    Discriminator,
    DiscriminatorBlock,
    DiscriminatorEpilogue,
    MinibatchStdLayer,
)
from gmpi_core.networks.layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    SynthesisLayer,
    ToRGBLayer,
    modulated_conv2d,
    normalize_2nd_moment,
)
from gmpi_core.networks.mapping import MappingNetwork

__all__ = [
    "Conv2dLayer",
    "Discriminator",
    "DiscriminatorBlock",
    "DiscriminatorEpilogue",
    "FullyConnectedLayer",
    "MappingNetwork",
    "MinibatchStdLayer",
    "SynthesisLayer",
    "ToRGBLayer",
    "modulated_conv2d",
    "normalize_2nd_moment",
]

from gmpi_core.networks.alpha import ALPHA_HEADS, AlphaHead, DepthEmbedding, PlaneLogits, make_alpha_head
from gmpi_core.networks.generator import GMPIGenerator, StyleGAN2Generator
from gmpi_core.networks.synthesis import MPISynthesisNetwork, SynthesisBlock, SynthesisNetwork

__all__ += [
    "ALPHA_HEADS",
    "AlphaHead",
    "DepthEmbedding",
    "GMPIGenerator",
    "MPISynthesisNetwork",
    "PlaneLogits",
    "StyleGAN2Generator",
    "SynthesisBlock",
    "SynthesisNetwork",
    "make_alpha_head",
]

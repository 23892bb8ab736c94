"""The 4-channel (RGB + mask) GAN: a DCGAN-class generator and a spectrally normalised discriminator.

Generator (DCGAN, Radford et al. 2016): z -> a small base map -> (nearest upsample, 3x3 conv, 3x3 conv)
per level, batch norm and ReLU after every convolution -> 4 channels, tanh, so image and mask come out
in [-1, 1] like the DDPM's samples. Samples are drawn in eval mode (running statistics), so a pair
depends only on its own z, whatever batch it is drawn in. (Pixel normalisation instead of batch norm
was tried: on ~100 phantom pairs it collapsed to one output within 400 steps where batch norm did not.)

Sizes that are not powers of two: the resolution is written as ``base * 2**levels`` with a base map
of 4-7 px (64 = 4 * 2**4, 96 = 6 * 2**4, 80 = 5 * 2**4); a size with a large odd factor (e.g. 100)
is generated at the next such size up (7 * 2**4 = 112) and centre-cropped.

Discriminator: 4 channels in, per level (3x3 conv, 4x4 stride-2 conv) with spectral normalisation on
every layer (Miyato et al. 2018), LeakyReLU 0.2, then a sum over positions and a spectrally
normalised linear layer: one logit per pair, for any input size.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

CHANNELS = 4  # RGB + mask
MIN_BASE, MAX_BASE = 4, 7


def layout(resolution: int) -> tuple[int, int]:
    """(base size, levels) with base * 2**levels >= resolution, base in 4..7, levels as many as possible."""
    if resolution < MIN_BASE:
        raise ValueError(f"resolution {resolution} is smaller than the {MIN_BASE} px base map")
    levels = max(0, int(math.floor(math.log2(resolution / MIN_BASE))))
    base = math.ceil(resolution / 2 ** levels)
    if base > MAX_BASE:   # cannot happen for levels chosen as above, kept as a guard
        levels += 1
        base = math.ceil(resolution / 2 ** levels)
    return base, levels


def level_channels(base_channels: int, levels: int) -> list[int]:
    """Channels from the coarsest map (index 0) to the finest (index ``levels``): halving, capped at 8x."""
    return [min(base_channels * 2 ** (levels - i), base_channels * 8) for i in range(levels + 1)]


@dataclass(frozen=True)
class GanArch:
    """What decides the shapes of the networks (stored beside the weights)."""

    resolution: int
    z_dim: int
    base_channels: int

    def to_dict(self) -> dict:
        return asdict(self)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class Generator(nn.Module):
    """z (N x z_dim) -> pairs (N x 4 x R x R) in [-1, 1]."""

    def __init__(self, arch: GanArch):
        super().__init__()
        self.arch = arch
        self.base, self.levels = layout(arch.resolution)
        ch = level_channels(arch.base_channels, self.levels)
        self.fc = nn.Linear(arch.z_dim, ch[0] * self.base * self.base)
        self.head = nn.Sequential(nn.BatchNorm2d(ch[0]), nn.ReLU())
        blocks = []
        for i in range(self.levels):
            blocks.append(nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(ch[i], ch[i + 1], 3, padding=1), nn.BatchNorm2d(ch[i + 1]), nn.ReLU(),
                nn.Conv2d(ch[i + 1], ch[i + 1], 3, padding=1), nn.BatchNorm2d(ch[i + 1]), nn.ReLU()))
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(ch[-1], CHANNELS, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], -1, self.base, self.base)
        x = self.blocks(self.head(x))
        x = torch.tanh(self.out(x))
        size, r = x.shape[-1], self.arch.resolution
        if size != r:
            o = (size - r) // 2
            x = x[:, :, o:o + r, o:o + r]
        return x


class Discriminator(nn.Module):
    """Pairs (N x 4 x H x W) -> logits (N,)."""

    def __init__(self, arch: GanArch):
        super().__init__()
        self.arch = arch
        _, levels = layout(arch.resolution)
        ch = level_channels(arch.base_channels, levels)[::-1]   # finest first
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(CHANNELS, ch[0], 3, padding=1)), _act()]
        for i in range(levels):
            layers += [spectral_norm(nn.Conv2d(ch[i], ch[i], 3, padding=1)), _act(),
                       spectral_norm(nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1)), _act()]
        layers += [spectral_norm(nn.Conv2d(ch[-1], ch[-1], 3, padding=1)), _act()]
        self.features = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(ch[-1], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).sum(dim=(2, 3))
        return self.linear(h).squeeze(1)


def build_models(arch: GanArch, seed: int) -> tuple[Generator, Discriminator]:
    """Freshly initialised G and D (seeded: every data-parallel rank starts identical)."""
    torch.manual_seed(seed)
    g = Generator(arch)
    d = Discriminator(arch)
    return g, d


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

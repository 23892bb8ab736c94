"""DiffAugment (Zhao et al., NeurIPS 2020) for 4-channel (RGB + mask) pairs.

Why: a GAN discriminator trained on a few hundred images memorises them and its feedback to the
generator collapses. DiffAugment applies the same random, *differentiable* augmentations to the real
and the generated batches every time the discriminator sees them, so the generator is trained through
them and the augmentations do not leak into its samples.

What changes for labelled pairs:

* ``color`` (brightness, saturation, contrast; the paper's magnitudes) acts on the RGB channels only:
  the mask is a label, not a colour.
* ``translation`` (up to 1/8 of the side) and ``cutout`` (a square of 1/2 of the side) move or blank
  the same pixels in all four channels, so the image and its mask stay aligned. The pixels shifted in
  at the border and the cut-out square are filled with -1 in every channel, i.e. black with no polyp
  (the original fills 0, mid-grey in [-1, 1]; for the mask channel 0 would be exactly the threshold).

Every random draw comes from the ``generator`` passed in (a CPU ``torch.Generator``), so a training
step is a pure function of its seed and a resumed run repeats the augmentations exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FILL = -1.0  # black, background
POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> list[str]:
    """``"color,translation,cutout"`` -> the list of parts ('' or 'none': no augmentation)."""
    parts = [p.strip() for p in (policy or "").split(",") if p.strip() and p.strip() != "none"]
    unknown = [p for p in parts if p not in POLICIES]
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(f"gan.diffaugment: unknown part(s) {', '.join(unknown)}; allowed: {', '.join(POLICIES)} "
                          "(comma-separated), or '' for none")
    return parts


def _rand(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=generator).to(device=like.device, dtype=like.dtype)


def _randint(low: int, high: int, shape, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=generator).to(device)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, saturation and contrast of channels 0-2; channel 3 (mask) untouched."""
    b = x.shape[0]
    rgb, rest = x[:, :3], x[:, 3:]
    rgb = rgb + (_rand((b, 1, 1, 1), generator, x) - 0.5)
    mean = rgb.mean(dim=1, keepdim=True)
    rgb = (rgb - mean) * (_rand((b, 1, 1, 1), generator, x) * 2) + mean
    mean = rgb.mean(dim=[1, 2, 3], keepdim=True)
    rgb = (rgb - mean) * (_rand((b, 1, 1, 1), generator, x) + 0.5) + mean
    return torch.cat([rgb, rest], dim=1)


def translation(x: torch.Tensor, generator: torch.Generator | None = None, ratio: float = 0.125) -> torch.Tensor:
    """Shift every sample by up to ``ratio`` of its size (same shift for all channels), fill -1."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = _randint(-sh, sh + 1, (b, 1, 1), generator, x.device)
    ty = _randint(-sw, sw + 1, (b, 1, 1), generator, x.device)
    gb, gx, gy = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1], value=FILL)
    return padded.permute(0, 2, 3, 1)[gb, gx, gy].permute(0, 3, 1, 2).contiguous()


def cutout(x: torch.Tensor, generator: torch.Generator | None = None, ratio: float = 0.5) -> torch.Tensor:
    """Blank a random square of ``ratio`` of the side in all four channels (fill -1)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = _randint(0, h + (1 - ch % 2), (b, 1, 1), generator, x.device)
    oy = _randint(0, w + (1 - cw % 2), (b, 1, 1), generator, x.device)
    gb, gx, gy = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")
    gx = torch.clamp(gx + ox - ch // 2, min=0, max=h - 1)
    gy = torch.clamp(gy + oy - cw // 2, min=0, max=w - 1)
    keep = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    keep[gb, gx, gy] = 0
    keep = keep.unsqueeze(1)
    return x * keep + FILL * (1 - keep)


_FUNCTIONS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: str | list[str], generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the policy's parts in the order colour, translation, cutout (as the original)."""
    parts = parse_policy(policy) if isinstance(policy, str) else list(policy)
    for name in POLICIES:
        if name in parts:
            x = _FUNCTIONS[name](x, generator)
    return x

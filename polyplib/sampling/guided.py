"""Styled-Diff's diffusion-guided style transfer, as the authors' code runs it.

Why: the paper's best synthetic set is not the inpainted pair itself but the pair pulled toward
the look of its source frame by a second, guided pass of the same DDPM (draft Table A.3; the
authors' ``optimization/image_editor.py``, built on DiffuseIT and ZeCon). What it does:

- its own respacing (``sampling.style.steps``, 200) of the model's chain; the inpainted 4-channel
  pair is forward-noised to index ``steps - 1 - skip_steps`` (119) and denoised for 120 steps;
- each step is an ancestral step with the model's variance (unclipped x0, as ``clip_denoised=False``)
  whose mean is shifted by variance x gradient (guided-diffusion's ``condition_mean``); the gradient
  is -d loss / d x_t through the model's x0 prediction, with the weighted losses (Table A.3):
  ``zecon`` 500: PatchNCE between the UNet encoder's features (input-block outputs 0, 2, 5, 8, 11 at
  timestep 0, 256 patches each) of x0 mixed with x_t and of the inpainted pair mixed with its noised
  copy (mixing factor sqrt(1 - alpha_bar)); ``vgg`` 100: conv1_1 + conv2_1 feature MSE of the x0
  RGB against that mixed inpainted RGB (ImageNet-normalised [-1, 1] values, as their code does);
  ``mse`` 5000: the same in pixels; ``dino`` 10000: MSE of the DINO ViT [CLS] token (last block,
  224 px) of x0 against the source frame's; ``l2`` 10000: pixel MSE of x0 against the source frame;
  ``divergence`` 40000: minus the [CLS] MSE against the previous step's x0, only while the index is
  above ``divergence_above`` (their ``diff_iter`` 50); ``range`` 200: squared excess of x0 beyond
  [-1, 1]. Their VGG / MSE gates ("t < 800", "t < 700") compare respaced indices and are always on.
- the output is the last step's x0 prediction (their ``pred_xstart``), all four channels.

The weights are the authors', tuned at 256 px. The pixel and feature losses are means over pixels,
so the same weight pulls each pixel about (256 / size)^2 times harder at a smaller size (16x at the
course's 64 px); they are not rescaled here (the tests with 32-px images scale them by hand).

The mask channel: the authors' style pass has no known region (``inpainting=False``), so it
redraws all four channels, and the styled pair's mask is the style pass's own mask channel (their
``refine_mask`` opening is applied to inpainted samples only). polyplib keeps that mask channel and
cleans and judges it like every other method's. The authors' pass restyles the whole frame, held
near the source by the L2 losses (the default, ``keep_context=false``: no seam at the region's
edge); with ``keep_context=true`` the real frame and mask are put back outside the dilated real
mask afterwards (and again after colour matching), so only the redrawn region changes. Every random draw comes from the pair's own generator; losses are summed
over pairs (each pair's as with the authors' batch of one), so a pair's result does not depend on
its batch mates beyond floating-point order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import StageError
from .feature_nets import VGG_LAYERS, FeatureNets
from .repaint import pair_tensor
from ..diffusion.unconditional import generators, split_pair

LOSS_TERMS = ("zecon", "vgg", "mse", "dino", "l2", "divergence", "range")
ZECON_LAYERS = (0, 2, 5, 8, 11)
NCE_TEMPERATURE = 0.07
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class StyleSettings:
    """The guided pass's settings, detached from the configuration (``sampling.style``, whose defaults are
    the authors': :meth:`paper`)."""

    steps: int
    skip_steps: int
    weights: dict
    divergence_above: int
    zecon_patches: int
    keep_context: bool

    @classmethod
    def from_section(cls, style) -> "StyleSettings":
        return cls(steps=style.steps, skip_steps=style.skip_steps,
                   weights={t: float(getattr(style, f"lambda_{t}")) for t in LOSS_TERMS},
                   divergence_above=style.divergence_above, zecon_patches=style.zecon_patches,
                   keep_context=style.keep_context)

    @classmethod
    def paper(cls) -> "StyleSettings":
        """Table A.3 (the configuration's defaults)."""
        from ..config import StyleSection

        return cls.from_section(StyleSection())

    def as_row(self) -> dict:
        """Flat manifest columns."""
        return {"style_steps": self.steps, "style_skip_steps": self.skip_steps,
                **{f"lambda_{t}": w for t, w in self.weights.items()},
                "divergence_above": self.divergence_above, "zecon_patches": self.zecon_patches,
                "keep_context": self.keep_context}

    @property
    def start(self) -> int:
        if not 0 <= self.skip_steps < self.steps:
            raise StageError(f"sampling.style.skip_steps={self.skip_steps} must be smaller than "
                             f"sampling.style.steps={self.steps}")
        return self.steps - 1 - self.skip_steps

    def active(self, term: str) -> bool:
        return self.weights.get(term, 0.0) != 0.0


# ----------------------------------------------------------------------------- feature extractors
def encoder_features(unet, x: torch.Tensor, timesteps: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of the UNet's input blocks (conv_in, then every down block's res samples): the
    feature list guided-diffusion's ``input_blocks`` give, which ZeCon indexes."""
    if getattr(unet, "class_embedding", None) is not None:
        raise StageError("ZeCon features: class-conditional UNets are not supported")
    emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=x.dtype))
    h = unet.conv_in(x)
    feats = [h]
    for block in unet.down_blocks:
        if hasattr(block, "skip_conv"):
            raise StageError(f"ZeCon features: down block {type(block).__name__} is not supported")
        h, res = block(hidden_states=h, temb=emb)
        feats.extend(res)
    return feats


def patch_nce(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """PatchNCE of one image: (P, C) query and key patches (L2-normalised), the matching key the
    positive, the image's other keys the negatives; mean over patches (CUT / ZeCon)."""
    k = k.detach()
    logits = q @ k.T
    eye = torch.eye(len(q), dtype=torch.bool, device=q.device)
    pos = logits.diagonal()[:, None]
    neg = logits.masked_fill(eye, -10.0)
    out = torch.cat([pos, neg], 1) / NCE_TEMPERATURE
    return F.cross_entropy(out, torch.zeros(len(q), dtype=torch.long, device=q.device), reduction="mean")


def vgg_maps(vgg, x: torch.Tensor) -> list[torch.Tensor]:
    """conv1_1 and conv2_1 outputs of VGG-19 ``features`` for ``x`` (ImageNet-normalised as given)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype)[:, None, None]
    h, out = (x - mean) / std, []
    for index, layer in enumerate(vgg):
        h = layer(h)
        if index in VGG_LAYERS.values():
            out.append(h)
        if index >= max(VGG_LAYERS.values()):
            break
    return out


def dino_cls(vit, x: torch.Tensor) -> torch.Tensor:
    """The [CLS] token after the ViT's last block (before its final norm), as Splicing-ViT's extractor
    reads it: ``x`` in [-1, 1] -> [0, 1] -> resized to the ViT's input size -> ImageNet-normalised."""
    from torchvision.transforms.functional import normalize, resize

    size = vit.patch_embed.img_size
    h = resize(0.5 * x + 0.5, list(size), antialias=True)
    h = normalize(h, IMAGENET_MEAN, IMAGENET_STD)
    h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(h))))
    for block in vit.blocks:
        h = block(h)
    return h[:, 0]


def _mean_per_pair(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


# ----------------------------------------------------------------------------- the losses
class StyleLoss:
    """The weighted losses of one guided step, per pair; a term whose weight is 0 is not computed."""

    def __init__(self, unet, nets: FeatureNets | None, settings: StyleSettings, chain, patch_generators):
        if nets is None and any(settings.active(t) for t in ("vgg", "dino", "divergence")):
            raise StageError("the guided style transfer's VGG / DINO losses need the feature networks")
        self.unet, self.nets, self.s, self.chain = unet, nets, settings, chain
        self.patch_generators = patch_generators
        self.calls = {"unet_encoder": 0, "vgg": 0, "dino": 0}

    def cls(self, x: torch.Tensor) -> torch.Tensor:
        self.calls["dino"] += len(x)
        return dino_cls(self.nets.dino, x)

    def _zecon(self, x_in: torch.Tensor, y_in: torch.Tensor) -> torch.Tensor:
        t0 = torch.zeros(len(x_in), dtype=torch.long, device=x_in.device)
        q_feats = encoder_features(self.unet, x_in, t0)
        with torch.no_grad():
            k_feats = encoder_features(self.unet, y_in, t0)
        self.calls["unet_encoder"] += 2 * len(x_in)
        total = torch.zeros(len(x_in), device=x_in.device, dtype=x_in.dtype)
        for layer in ZECON_LAYERS:
            if layer >= len(q_feats):
                continue
            q, k = (f.flatten(2).transpose(1, 2) for f in (q_feats[layer], k_feats[layer]))   # B, HW, C
            for b in range(len(x_in)):
                ids = torch.randperm(q.shape[1], generator=self.patch_generators[b])[: self.s.zecon_patches]
                ids = ids.to(q.device)
                total[b] = total[b] + patch_nce(F.normalize(q[b, ids], dim=1, eps=1e-7),
                                                F.normalize(k[b, ids], dim=1, eps=1e-7))
        return total

    def __call__(self, x: torch.Tensor, x0: torch.Tensor, i: torch.Tensor, init: torch.Tensor,
                 target_rgb: torch.Tensor, target_cls: torch.Tensor | None, prev_cls: torch.Tensor | None,
                 noises: Sequence[torch.Tensor], index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """({term: weighted loss per pair}, the [CLS] token of x0 when computed). ``noises``: the
        step's three forward-noise draws (ZeCon, VGG, MSE), drawn whether or not a term runs."""
        w, out = self.s.weights, {}
        rgb = x0[:, :3]
        fac = self.chain.noise_std(i, x)
        if self.s.active("l2"):
            out["l2"] = w["l2"] * _mean_per_pair((rgb - target_rgb) ** 2)
        cls = None
        if self.s.active("dino") or (self.s.active("divergence") and index > self.s.divergence_above):
            cls = self.cls(rgb)
            if self.s.active("dino"):
                out["dino"] = w["dino"] * _mean_per_pair((cls - target_cls) ** 2)
            if self.s.active("divergence") and index > self.s.divergence_above:
                out["divergence"] = -w["divergence"] * _mean_per_pair((cls - prev_cls) ** 2)
        if self.s.active("range"):
            out["range"] = w["range"] * _mean_per_pair((x0 - x0.clamp(-1, 1)) ** 2)
        if self.s.active("zecon"):
            y_in = init * fac + self.chain.q_sample(init, i, noises[0]) * (1 - fac)
            out["zecon"] = w["zecon"] * self._zecon(x0 * fac + x * (1 - fac), y_in)
        if self.s.active("vgg"):
            y_rgb = init[:, :3] * fac + self.chain.q_sample(init[:, :3], i, noises[1][:, :3]) * (1 - fac)
            self.calls["vgg"] += 2 * len(x)
            with torch.no_grad():
                ref = vgg_maps(self.nets.vgg, y_rgb)
            loss = sum(_mean_per_pair((a - b) ** 2) for a, b in zip(vgg_maps(self.nets.vgg, rgb), ref))
            out["vgg"] = w["vgg"] * loss
        if self.s.active("mse"):
            y_rgb = init[:, :3] * fac + self.chain.q_sample(init[:, :3], i, noises[2][:, :3]) * (1 - fac)
            out["mse"] = w["mse"] * _mean_per_pair((rgb - y_rgb) ** 2)
        return out, cls


# ----------------------------------------------------------------------------- the pass
def guided_style(unet, scheduler_config: dict, images: np.ndarray, masks: np.ndarray, targets: np.ndarray,
                 target_masks: np.ndarray, regions: np.ndarray, seeds: Sequence[int], settings: StyleSettings,
                 nets: FeatureNets | None, *, guide: bool = True,
                 callback: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Style the inpainted pairs ``images``/``masks`` (uint8 B,H,W,3 / bool B,H,W) toward their source
    frames ``targets`` (with ``target_masks`` and the dilated ``regions``, bool B,H,W).

    Returns (styled images uint8, raw mask channel uint8, info): info has per-pair ``costs`` (UNet
    forward / backward / encoder calls, VGG and DINO calls), ``loss_terms`` (the weighted terms at
    the last step, per pair) and ``final_loss``. ``guide=False`` runs the same pass, with the same
    random draws, without applying the gradient (the losses are still computed, for comparison).
    """
    from diffusers.utils.torch_utils import randn_tensor

    from ..diffusion.gaussian import Chain

    device, dtype = unet.device, unet.dtype
    chain = Chain.from_config(scheduler_config, settings.steps)
    variance = scheduler_config.get("variance_type", "fixed_small")
    start = settings.start
    init = pair_tensor(images, masks, device).to(dtype)
    target_rgb = pair_tensor(targets, target_masks, device).to(dtype)[:, :3]
    gens = generators(seeds)
    patch_gens = generators([(int(s) + 0x9E3779B9) % (2**63) for s in seeds])
    loss_fn = StyleLoss(unet, nets, settings, chain, patch_gens)
    n = len(init)

    def noise() -> torch.Tensor:
        return randn_tensor(init.shape, generator=gens, device=device, dtype=dtype)

    with torch.no_grad():
        target_cls = loss_fn.cls(target_rgb) if settings.active("dino") else None
        prev_cls = loss_fn.cls(init[:, :3]) if settings.active("divergence") and start > settings.divergence_above \
            else None
    x = chain.q_sample(init, chain.indices(start, n, device), noise())
    calls = {"unet_forward": 0, "unet_backward": 0}
    terms: dict[str, torch.Tensor] = {}
    x0 = init
    for index in range(start, -1, -1):
        i = chain.indices(index, n, device)
        noises = [noise() for _ in range(3)]
        step_noise = noise()
        with torch.set_grad_enabled(guide):
            xg = x.detach().requires_grad_(guide)
            out = unet(xg, chain.model_timesteps(i)).sample
            calls["unet_forward"] += n
            pmv = chain.p_mean_variance(out, xg, i, variance, clip=False)
            terms, cls = loss_fn(xg, pmv["pred_x0"], i, init, target_rgb, target_cls, prev_cls, noises, index)
            total = sum(terms.values()) if terms else None
            if guide and total is not None and total.requires_grad:
                grad = -torch.autograd.grad(total.sum(), xg)[0]
                calls["unet_backward"] += n
            else:
                grad = torch.zeros_like(x)
        mean = pmv["mean"].detach() + torch.exp(pmv["log_variance"].detach()) * grad
        nonzero = float(index != 0)
        x = mean + nonzero * torch.exp(0.5 * pmv["log_variance"].detach()) * step_noise
        x0 = pmv["pred_x0"].detach()
        if cls is not None:
            prev_cls = cls.detach()
        if callback is not None:
            callback(start - index + 1)
    out_images, out_masks = split_pair(x0.clamp(-1, 1))
    if settings.keep_context:
        keep = ~np.asarray(regions, bool)
        out_images[keep] = np.asarray(targets)[keep]
        out_masks[keep] = np.asarray(target_masks, bool)[keep].astype(np.uint8) * 255
    costs = {**{k: v // n for k, v in calls.items()}, **{f"{k}_calls": v // n for k, v in loss_fn.calls.items()}}
    loss_terms = {k: v.detach().float().cpu().numpy() for k, v in terms.items()}
    final = sum(loss_terms.values()) if loss_terms else np.zeros(n)
    return out_images, out_masks, {"costs": costs, "loss_terms": loss_terms, "final_loss": final}

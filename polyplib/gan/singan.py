"""SinGAN-Seg: a 4-channel (RGB + mask) multi-scale GAN trained on ONE labelled image.

After SinGAN (Shaham et al., ICCV 2019) as adapted by SinGAN-Seg (Thambawita et al., PLOS ONE 2022):
a pyramid of small fully convolutional generators G_0 (coarsest) ... G_N (the image's own size) is
trained coarse to fine on one image and its mask, stacked as 4 channels in [-1, 1]. Each G_n turns
noise plus the upsampled output of the scale below into a residual correction of it:
``x_n = up(x_{n-1}) + g_n(amp_n * z_n + up(x_{n-1}))``; G_0 starts from noise alone. Each scale has its
own patch critic D_n (no normalisation), trained with the WGAN-GP loss (gradient penalty weight 0.1),
3 critic and 3 generator steps per iteration, Adam (lr 5e-4, betas 0.5/0.999), learning rate x0.1
after 80 % of the iterations. The generator also minimises a reconstruction loss (weight 10): with
a fixed noise map at the coarsest scale and zero noise above, the pyramid must reproduce the real
pair exactly. The noise amplitude of scale n > 0 is 0.1 x the RMSE between the real pair and the
upsampled reconstruction from below (1 at the coarsest scale), so each scale adds as much variation
as the scale below left unexplained. When a scale has as many channels as the one below, it starts
from its weights (as SinGAN does).

Scales: geometric from a coarsest size of ``max(12 px, 0.75**(N-1) * size)`` to the image's size
(the receptive field of a 5-layer 3x3 generator is 11 px). Channels: ``gan.singan_channels``, doubled
every 4 scales, at most 128 (SinGAN: 32, 64, ...). Convolutions are zero-padded ("same"), so outputs
have the input's size (SinGAN pads the input once instead).

Random samples start from new noise at every scale (SinGAN's ``gen_start_scale=0``, the most varied)
and have the source's size; the mask channel goes through stage 03's post-processing. Every draw
comes from generators seeded by (gan.seed, source id, sample index), so a set is reproducible.
One model per source image: ``runs/<profile>/models/singan/<file>/`` (``singan.pt``, ``config.yaml``,
``train_state.json`` with the measured seconds); samples in ``runs/<profile>/synthetic/singan/``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import StageError
from ..synthetic.generate import pair_seed
from ..runs import Run, atomic_dir, atomic_write_json, atomic_write_text
from ..training import config_key, describe_device, read_json, resolve_device, torch_threads

SCALE_FACTOR = 0.75
MIN_SIZE = 12
MAX_CHANNELS = 128
LAYERS = 5
D_STEPS = G_STEPS = 3
LR = 5e-4
BETAS = (0.5, 0.999)
GP_WEIGHT = 0.1
REC_WEIGHT = 10.0
NOISE_AMP = 0.1
LR_DROP_AT = 0.8


@dataclass(frozen=True)
class SinGANSettings:
    scales: int
    iters: int
    channels: int
    seed: int = 0

    @classmethod
    def from_config(cls, cfg) -> "SinGANSettings":
        g = cfg.gan
        return cls(g.singan_scales, g.singan_iters, g.singan_channels, g.seed)


def pyramid_sizes(height: int, width: int, scales: int) -> list[tuple[int, int]]:
    """(h, w) of every scale, coarsest first, ending at the image's size."""
    if scales < 2:
        raise ValueError("SinGAN needs at least 2 scales")
    short = min(height, width)
    coarsest = min(short, max(MIN_SIZE, round(short * SCALE_FACTOR ** (scales - 1))))
    r = (coarsest / short) ** (1.0 / (scales - 1))
    sizes = [(max(1, round(height * r ** (scales - 1 - n))), max(1, round(width * r ** (scales - 1 - n))))
             for n in range(scales)]
    sizes[-1] = (height, width)
    return sizes


def scale_channels(base: int, n: int) -> int:
    return min(base * 2 ** (n // 4), MAX_CHANNELS)


def _conv_block(c_in: int, c_out: int, norm: bool) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1)] + ([nn.BatchNorm2d(c_out)] if norm else []) + [nn.LeakyReLU(0.2)]


class ScaleGenerator(nn.Module):
    """g_n: 5 conv layers (head, 3 body, tail -> 4 channels, tanh); returns prev + g_n(noisy input)."""

    def __init__(self, channels: int):
        super().__init__()
        layers = _conv_block(4, channels, True)
        for _ in range(LAYERS - 2):
            layers += _conv_block(channels, channels, True)
        self.body = nn.Sequential(*layers)
        self.tail = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.Tanh())

    def forward(self, noisy: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(noisy)) + prev


class ScaleCritic(nn.Module):
    """D_n: a patch critic, 5 conv layers, one score per position (no normalisation: WGAN-GP)."""

    def __init__(self, channels: int):
        super().__init__()
        layers = _conv_block(4, channels, False)
        for _ in range(LAYERS - 2):
            layers += _conv_block(channels, channels, False)
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        m.weight.data.normal_(0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (anti-aliased when shrinking); the identity at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _noise(size: tuple[int, int], gen: torch.Generator, device) -> torch.Tensor:
    return torch.randn((1, 4, *size), generator=gen).to(device)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """WGAN-GP on a random interpolate, per position (SinGAN: the norm over channels at every pixel)."""
    a = torch.rand((1, 1, 1, 1), generator=gen).to(real.device)
    mix = (a * real + (1 - a) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


@dataclass
class SinGANModel:
    """A trained pyramid: generators (eval mode), noise amplitudes, sizes, the fixed reconstruction noise."""

    generators: list[ScaleGenerator]
    channels: list[int]
    amps: list[float]
    sizes: list[tuple[int, int]]
    z_opt: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.z_opt.device

    @torch.no_grad()
    def draw(self, gen: torch.Generator, upto: int | None = None) -> torch.Tensor:
        """A random 1 x 4 x h x w sample at scale ``upto`` (default: the finest)."""
        upto = len(self.generators) - 1 if upto is None else upto
        x = torch.zeros((1, 4, *self.sizes[0]), device=self.device)
        for n in range(upto + 1):
            prev = resize(x, self.sizes[n]) if n else torch.zeros((1, 4, *self.sizes[0]), device=self.device)
            x = self.generators[n](self.amps[n] * _noise(self.sizes[n], gen, self.device) + prev, prev)
        return x

    @torch.no_grad()
    def reconstruct(self, upto: int | None = None) -> torch.Tensor:
        """The reconstruction path: fixed noise at the coarsest scale, none above."""
        upto = len(self.generators) - 1 if upto is None else upto
        x = torch.zeros((1, 4, *self.sizes[0]), device=self.device)
        for n in range(upto + 1):
            prev = resize(x, self.sizes[n]) if n else torch.zeros_like(self.z_opt)
            x = self.generators[n]((self.amps[n] * self.z_opt if n == 0 else 0) + prev, prev)
        return x

    def sample(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """One pair per seed: (uint8 N x H x W x 3 images, uint8 N x H x W raw mask channels)."""
        from ..diffusion.unconditional import split_pair

        out = [self.draw(torch.Generator().manual_seed(int(s))) for s in seeds]
        return split_pair(torch.cat(out))

    # -- storage
    def save(self, path: str | Path) -> None:
        import io

        from ..runs import atomic_write_bytes

        buf = io.BytesIO()
        torch.save({"generators": [{k: v.cpu() for k, v in g.state_dict().items()} for g in self.generators],
                    "channels": self.channels, "amps": self.amps, "sizes": [list(s) for s in self.sizes],
                    "z_opt": self.z_opt.cpu(), "info": self.info}, buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "SinGANModel":
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
        gens = []
        for state, c in zip(blob["generators"], blob["channels"]):
            g = ScaleGenerator(c)
            g.load_state_dict(state)
            gens.append(g.to(device).eval())
        return cls(gens, list(blob["channels"]), [float(a) for a in blob["amps"]],
                   [tuple(s) for s in blob["sizes"]], blob["z_opt"].to(device), dict(blob.get("info", {})))


def pair_tensor(image: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """(uint8 HxWx3, bool HxW) -> 1 x 4 x H x W in [-1, 1]."""
    from ..diffusion.dataset import to_tensor

    return to_tensor(image, mask)[None]


def train_singan(image: np.ndarray, mask: np.ndarray, settings: SinGANSettings, seed: int,
                 device: str | torch.device = "cpu", progress: bool = False, desc: str = "singan") -> SinGANModel:
    """Train the pyramid on one pair (deterministic for a seed on one device and thread count)."""
    from ..progress import tqdm

    device = torch.device(device)
    real = pair_tensor(image, mask).to(device)
    h, w = real.shape[-2:]
    sizes = pyramid_sizes(int(h), int(w), settings.scales)
    reals = [resize(real, s).clamp(-1, 1) for s in sizes]
    gen = torch.Generator().manual_seed(int(seed))
    z_opt = _noise(sizes[0], gen, device)
    model = SinGANModel([], [], [], sizes, z_opt)
    prev_g = prev_d = None
    rmse_list, started = [], time.perf_counter()
    bar = tqdm(total=settings.scales * settings.iters, desc=desc, disable=not progress, leave=False)
    for n, size in enumerate(sizes):
        c = scale_channels(settings.channels, n)
        torch.manual_seed(int(np.random.SeedSequence([int(seed), n]).generate_state(1)[0]))  # weights of scale n
        g, d = ScaleGenerator(c).to(device), ScaleCritic(c).to(device)
        g.apply(_init_weights)
        d.apply(_init_weights)
        if prev_g is not None and model.channels[-1] == c:
            g.load_state_dict(prev_g.state_dict())
            d.load_state_dict(prev_d.state_dict())
        if n == 0:
            rec_prev, amp, rmse = torch.zeros_like(reals[0]), 1.0, float("nan")
        else:
            rec_prev = resize(model.reconstruct(n - 1), size)
            rmse = float(torch.sqrt(F.mse_loss(rec_prev, reals[n])))
            amp = NOISE_AMP * rmse
        rmse_list.append(rmse)
        z_rec = amp * z_opt if n == 0 else torch.zeros_like(reals[n])
        opt_g = torch.optim.Adam(g.parameters(), lr=LR, betas=BETAS)
        opt_d = torch.optim.Adam(d.parameters(), lr=LR, betas=BETAS)
        drop = [max(1, int(LR_DROP_AT * settings.iters))]
        sched_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, drop, 0.1)
        sched_d = torch.optim.lr_scheduler.MultiStepLR(opt_d, drop, 0.1)
        g.train()
        d.train()
        for _ in range(settings.iters):
            for _ in range(D_STEPS):
                prev = resize(model.draw(gen, n - 1), size) if n else torch.zeros_like(reals[0])
                noise = _noise(size, gen, device)
                fake = g(amp * noise + prev, prev)
                loss_d = (-d(reals[n]).mean() + d(fake.detach()).mean()
                          + GP_WEIGHT * gradient_penalty(d, reals[n], fake, gen))
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
            for _ in range(G_STEPS):
                fake = g(amp * noise + prev, prev)
                rec = g(z_rec + rec_prev, rec_prev)
                loss_g = -d(fake).mean() + REC_WEIGHT * F.mse_loss(rec, reals[n])
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
            sched_g.step()
            sched_d.step()
            bar.update(1)
        g.eval()
        g.requires_grad_(False)
        model.generators.append(g)
        model.channels.append(c)
        model.amps.append(amp)
        prev_g, prev_d = g, d
    bar.close()
    final_rmse = float(torch.sqrt(F.mse_loss(model.reconstruct(), real)))
    model.info = {"seconds": round(time.perf_counter() - started, 3), "rmse_from_below": rmse_list,
                  "reconstruction_rmse": final_rmse, "iters": settings.iters, "scales": settings.scales}
    return model


# ----------------------------------------------------------------------------- the stage's part
def singan_dir(run: Run, file: str | None = None) -> Path:
    return run.path("models", "singan", file) if file else run.path("models", "singan")


def singan_sources(run: Run) -> list[str]:
    """A seeded choice of ``gan.singan_images`` training ids with a non-empty mask."""
    from ..data.prepared import load_dataset

    ds = load_dataset(run)
    m = ds.manifest.set_index("id")
    ids = [i for i in ds.ids("train") if not ("empty" in m and str(m.at[i, "empty"]) == "True")]
    n = min(run.cfg.gan.singan_images, len(ids))
    rng = np.random.default_rng([run.cfg.gan.seed, 0x516A])
    return [ids[i] for i in sorted(rng.choice(len(ids), size=n, replace=False))] if n else []


def model_key(cfg, source_id: str) -> str:
    """What decides one SinGAN-Seg model: its settings, the data, the source pair."""
    payload = {"settings": asdict(SinGANSettings.from_config(cfg)), "source": source_id,
               "data": {k: v for k, v in cfg.data.model_dump(mode="json").items() if k != "root"}}
    return config_key(payload)


def train_all(run: Run, force: bool = False) -> pd.DataFrame:
    """One SinGAN-Seg model per chosen source (finished ones are skipped): a row per model, with its seconds."""
    from ..data.prepared import load_dataset

    cfg = run.cfg
    ds = load_dataset(run)
    files = dict(zip(ds.manifest["id"], ds.manifest["file"]))
    settings = SinGANSettings.from_config(cfg)
    device = resolve_device(cfg.run.device)
    rows = []
    with torch_threads(cfg.run.torch_threads, device):
        for i, sid in enumerate(singan_sources(run), 1):
            folder, key = singan_dir(run, files[sid]), model_key(cfg, sid)
            state = read_json(folder / "train_state.json")
            status = "cached"
            if force or not (state and state.get("finished") and state.get("key") == key
                             and (folder / "singan.pt").exists()):
                image, mask = ds.load(sid)
                model = train_singan(image, mask, settings, pair_seed(settings.seed, f"singan-train|{sid}", 0),
                                     device, cfg.run.progress, desc=f"singan {i}")
                state = {"finished": True, "key": key, "source_id": sid, "file": files[sid],
                         "scales": settings.scales, "iters_per_scale": settings.iters,
                         "channels": model.channels, "sizes": [list(s) for s in model.sizes], "amps": model.amps,
                         "iterations": settings.scales * settings.iters, "seconds": model.info["seconds"],
                         "seconds_cumulative": True, "reconstruction_rmse": model.info["reconstruction_rmse"],
                         "device": describe_device(device)}
                with atomic_dir(folder) as tmp:
                    model.save(tmp / "singan.pt")
                    atomic_write_text(tmp / "config.yaml", cfg.to_yaml())
                    atomic_write_json(tmp / "train_state.json", state)
                status = "trained"
            rows.append({"model": f"singan-{files[sid]}", "source_id": sid, "status": status,
                         "scales": state["scales"], "iters_per_scale": state["iters_per_scale"],
                         "sizes": " > ".join(f"{h}x{w}" for h, w in state["sizes"]),
                         "seconds": state["seconds"], "reconstruction_rmse": round(state["reconstruction_rmse"], 4),
                         "device": state["device"], "path": str(folder)})
            print(f"SinGAN-Seg [{i}] {sid}: {status}, {state['scales']} scales x {state['iters_per_scale']} iters, "
                  f"{state['seconds']:.1f} s")
    return pd.DataFrame(rows, columns=["model", "source_id", "status", "scales", "iters_per_scale", "sizes",
                                       "seconds", "reconstruction_rmse", "device", "path"])


def sample_all(run: Run, force: bool = False) -> dict:
    """``gan.singan_samples_per_image`` pairs per trained model into ``synthetic/singan/`` (source_id set)."""
    from ..data.prepared import load_dataset
    from ..synthetic.catalogue import set_dir
    from ..synthetic.folder import set_summary
    from ..synthetic.generate import SetPlan, write_set
    from ..synthetic.postprocess import PostProcess

    cfg, method = run.cfg, "singan"
    ds = load_dataset(run)
    files = dict(zip(ds.manifest["id"], ds.manifest["file"]))
    post = PostProcess.from_config(cfg)
    k_per = cfg.gan.singan_samples_per_image
    sources = singan_sources(run)
    states = {}
    for sid in sources:
        state = read_json(singan_dir(run, files[sid]) / "train_state.json")
        if not (state and state.get("finished") and state.get("key") == model_key(cfg, sid)):
            raise StageError(f"{singan_dir(run, files[sid])}: no finished SinGAN-Seg model for '{sid}'; "
                             "train it first (polyplib.gan.singan.train_all)")
        states[sid] = state
    jobs = [{"id": f"{files[sid]}_g{k}", "file": f"{files[sid]}_g{k}", "source_id": sid, "cluster": -1,
             "model": f"singan-{files[sid]}", "method": method, "sampler": "singan",
             "steps": states[sid]["scales"], "nfe": states[sid]["scales"],
             "seed": pair_seed(cfg.gan.seed, f"singan|{sid}", k), "sample_index": k}
            for sid in sources for k in range(k_per)]
    key = config_key({"method": method, "models": [states[s]["key"] for s in sources], "post": post.as_row(),
                      "ids": [j["id"] for j in jobs], "seed": cfg.gan.seed})
    plan = SetPlan(method, [[j] for j in jobs], key, {"key": key, "params": post.as_row()})
    device = resolve_device(cfg.run.device)
    loaded: dict[str, SinGANModel] = {}

    def compute(batch: list[dict]):   # one pair at a time, one model in memory
        sid = batch[0]["source_id"]
        if sid not in loaded:
            loaded.clear()
            loaded[sid] = SinGANModel.load(singan_dir(run, files[sid]) / "singan.pt", device)
        images, raws = loaded[sid].sample([batch[0]["seed"]])
        return [(images[0], raws[0], {})]

    with torch_threads(cfg.run.torch_threads, device):
        table = write_set(set_dir(run, method), plan, compute, post, fresh=force, progress=cfg.run.progress)
    summary = set_summary(run, method, table, device=describe_device(device))
    atomic_write_json(set_dir(run, method) / "summary.json", summary)
    return summary


def load_models_table(run: Run) -> pd.DataFrame:
    """The per-image training records of this run's SinGAN-Seg models (from their train_state.json)."""
    rows = []
    for path in sorted(singan_dir(run).glob("*/train_state.json")):
        s = json.loads(path.read_text())
        rows.append({"model": f"singan-{s['file']}", "source_id": s["source_id"], "scales": s["scales"],
                     "iters_per_scale": s["iters_per_scale"], "seconds": s["seconds"], "device": s["device"]})
    return pd.DataFrame(rows)


def pyramid_figure_data(model: SinGANModel, seed: int = 0) -> list[np.ndarray]:
    """One random sample at every scale (uint8 RGB overlays ready), for a figure of the pyramid."""
    from ..plots import overlay
    from ..diffusion.unconditional import split_pair

    out = []
    for n in range(len(model.generators)):
        images, raws = split_pair(model.draw(torch.Generator().manual_seed(seed), n))
        out.append(overlay(images[0], raws[0] > 127))
    return out


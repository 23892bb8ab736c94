"""The authors' guided-diffusion checkpoints -> diffusers ``DDPMPipeline`` folders.

Why: the authors (github dsaragih/diffuse-gen) released 21 guided-diffusion ``UNetModel`` state
dicts (20 cluster models + the Full model, 256 px), but their sampling script passed attention "16"
while the models were trained with other attention levels, and users' loads failed with "missing /
unexpected keys". This module reads the network's shape from the checkpoint itself (width, channel
multipliers, res blocks, learned sigma, attention levels), checks it against the flags given
(default: the authors' published "16,8"), and on a mismatch raises one ``ConfigError`` that lists
the missing and unexpected keys and the flags the checkpoint was most likely made with. It never
silently switches to the inferred setting. A fitting checkpoint becomes a ``DDPMPipeline`` folder
(``polyplib.diffusion.model.unet_config`` network, the same network as guided-diffusion's, checked
by ``tests/test_guided_diffusion.py``) plus ``convert.json`` (source file, SHA-256, flags, and
the ``ddpm.*`` values that rebuild the network).

Not in the weights, so taken from the flags: ``--image-size`` (256; turns attention levels into
feature sizes) and ``--num-head-channels`` (64; a wrong value gives a different network with
the same keys). Convert all 21 (cluster numbering is the authors'; it matches polyplib's clusters
only with ``clustering.features=paper``)::

    for i in $(seq 0 19); do
        python -m polyplib.diffusion.convert authors/cluster_$i.pt converted/$(printf "cluster-%02d" $i)
    done
    python -m polyplib.diffusion.convert authors/full.pt converted/full
    python run_all.py --profile paper --set ddpm.pretrained=converted
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from ..data.imageio import file_sha256
from ..errors import ConfigError
from .model import IN_CHANNELS, out_channels, scheduler_kwargs, unet_config

AUTHORS_ATTENTION = (16, 8)   # feature sizes; guided-diffusion's attention_resolutions="16,8"
GD_GROUPS = 32                # guided-diffusion's normalization(): GroupNorm(32, channels)


class _Param(NamedTuple):
    """One guided-diffusion tensor: its key, expected shape, and how it becomes diffusers tensors."""

    key: str
    shape: tuple[int, ...]
    convert: Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _rename(new: str, squeeze: bool = False):
    return lambda t: {new: t[..., 0] if squeeze else t}


def _qkv(hf: str, suffix: str, heads: int):
    """QKVAttentionLegacy splits heads first: rows are [head0 q,k,v | head1 q,k,v | ...]."""
    def convert(t):
        c = t.shape[0] // 3
        t = t[..., 0] if t.dim() == 3 else t                      # conv1d kernel dim
        t = t.reshape(heads, 3, c // heads, *t.shape[1:])
        return {f"{hf}.to_{n}.{suffix}": t[:, i].reshape(c, *t.shape[3:]) for i, n in enumerate("qkv")}
    return convert


def _norm(gd, hf, c):
    return [_Param(f"{gd}.weight", (c,), _rename(f"{hf}.weight")), _Param(f"{gd}.bias", (c,), _rename(f"{hf}.bias"))]


def _conv(gd, hf, cin, cout, k=3):
    return [_Param(f"{gd}.weight", (cout, cin, k, k), _rename(f"{hf}.weight")),
            _Param(f"{gd}.bias", (cout,), _rename(f"{hf}.bias"))]


def _linear(gd, hf, cin, cout):
    return [_Param(f"{gd}.weight", (cout, cin), _rename(f"{hf}.weight")),
            _Param(f"{gd}.bias", (cout,), _rename(f"{hf}.bias"))]


def _res(gd, hf, cin, cout, emb, scale_shift):
    """guided-diffusion ResBlock -> diffusers ResnetBlock2D."""
    p = _norm(f"{gd}.in_layers.0", f"{hf}.norm1", cin) + _conv(f"{gd}.in_layers.2", f"{hf}.conv1", cin, cout)
    p += _linear(f"{gd}.emb_layers.1", f"{hf}.time_emb_proj", emb, 2 * cout if scale_shift else cout)
    p += _norm(f"{gd}.out_layers.0", f"{hf}.norm2", cout) + _conv(f"{gd}.out_layers.3", f"{hf}.conv2", cout, cout)
    if cin != cout:
        p += _conv(f"{gd}.skip_connection", f"{hf}.conv_shortcut", cin, cout, k=1)
    return p


def _attn(gd, hf, c, head_channels):
    """guided-diffusion AttentionBlock (legacy order) -> diffusers Attention."""
    heads = c // head_channels
    return _norm(f"{gd}.norm", f"{hf}.group_norm", c) + [
        _Param(f"{gd}.qkv.weight", (3 * c, c, 1), _qkv(hf, "weight", heads)),
        _Param(f"{gd}.qkv.bias", (3 * c,), _qkv(hf, "bias", heads)),
        _Param(f"{gd}.proj_out.weight", (c, c, 1), _rename(f"{hf}.to_out.0.weight", squeeze=True)),
        _Param(f"{gd}.proj_out.bias", (c,), _rename(f"{hf}.to_out.0.bias"))]


def _plan(ddpm, resolution: int) -> list[_Param]:
    """Every tensor of the guided-diffusion UNetModel that ``unet_config(ddpm, resolution)`` equals."""
    cfg = unet_config(ddpm, resolution)         # validates levels / heads the same way the model does
    ch = list(cfg["block_out_channels"])
    n, L, hc, ss = ddpm.layers_per_block, len(ch), ddpm.num_head_channels, ddpm.scale_shift_norm
    attn = [t.startswith("Attn") for t in cfg["down_block_types"]]
    emb = 4 * ch[0]
    p = _linear("time_embed.0", "time_embedding.linear_1", ch[0], emb)
    p += _linear("time_embed.2", "time_embedding.linear_2", emb, emb)
    p += _conv("input_blocks.0.0", "conv_in", IN_CHANNELS, ch[0])
    skips, cur, b = [ch[0]], ch[0], 1
    for lvl in range(L):
        for j in range(n):
            p += _res(f"input_blocks.{b}.0", f"down_blocks.{lvl}.resnets.{j}", cur, ch[lvl], emb, ss)
            cur = ch[lvl]
            if attn[lvl]:
                p += _attn(f"input_blocks.{b}.1", f"down_blocks.{lvl}.attentions.{j}", cur, hc)
            skips.append(cur)
            b += 1
        if lvl < L - 1:
            hf = f"down_blocks.{lvl}.downsamplers.0"
            p += (_res(f"input_blocks.{b}.0", hf, cur, cur, emb, ss) if ddpm.resblock_updown
                  else _conv(f"input_blocks.{b}.0.op", f"{hf}.conv", cur, cur))
            skips.append(cur)
            b += 1
    p += _res("middle_block.0", "mid_block.resnets.0", cur, cur, emb, ss)
    p += _attn("middle_block.1", "mid_block.attentions.0", cur, hc)
    p += _res("middle_block.2", "mid_block.resnets.1", cur, cur, emb, ss)
    b = 0
    for up, lvl in enumerate(reversed(range(L))):
        for j in range(n + 1):
            p += _res(f"output_blocks.{b}.0", f"up_blocks.{up}.resnets.{j}", cur + skips.pop(), ch[lvl], emb, ss)
            cur = ch[lvl]
            if attn[lvl]:
                p += _attn(f"output_blocks.{b}.1", f"up_blocks.{up}.attentions.{j}", cur, hc)
            if lvl and j == n:
                gd, hf = f"output_blocks.{b}.{1 + attn[lvl]}", f"up_blocks.{up}.upsamplers.0"
                p += (_res(gd, hf, cur, cur, emb, ss) if ddpm.resblock_updown
                      else _conv(f"{gd}.conv", f"{hf}.conv", cur, cur))
            b += 1
    p += _norm("out.0", "conv_norm_out", cur) + _conv("out.2", "conv_out", ch[0], out_channels(ddpm.variance))
    return p


# ----------------------------------------------------------------------------- reading a checkpoint
def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside ``obj`` ({"state_dict": ...} / {"model": ...} unwrapped, ``module.`` stripped)."""
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{source}: not a guided-diffusion state dict (expected a dict of tensors, "
                          f"got {type(obj).__name__})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def infer_flags(state: dict, image_size: int = 256, source: str = "checkpoint") -> dict:
    """The guided-diffusion flags a state dict was made with, read from its keys and shapes.

    Returns num_channels, channel_mult, num_res_blocks, attention (feature sizes at ``image_size``),
    learn_sigma, use_scale_shift_norm, resblock_updown, in_channels, out_channels.
    """
    try:
        mc = state["time_embed.0.weight"].shape[1]
        in_ch = state["input_blocks.0.0.weight"].shape[1]
        out_ch = state["out.2.weight"].shape[0]
        blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("output_blocks.")})
        n_out = len(blocks)
        ups = [i for i in blocks if any(k.startswith((f"output_blocks.{i}.1.", f"output_blocks.{i}.2."))
                                        and f"output_blocks.{i}.{k.split('.')[2]}.qkv.weight" not in state
                                        for k in state)]
        n1 = ups[0] + 1 if ups else n_out                 # res blocks per output level = num_res_blocks + 1
        levels = n_out // n1
        if n_out != levels * n1 or ups != [n1 * k - 1 for k in range(1, levels)]:
            raise KeyError("output_blocks")
        first = [1 + lvl * n1 for lvl in range(levels)]   # first input block of every level
        chans = [state[f"input_blocks.{b}.0.out_layers.3.weight"].shape[0] for b in first]
        emb_rows = state["input_blocks.1.0.emb_layers.1.weight"].shape[0]
        updown = levels > 1 and f"input_blocks.{n1}.0.in_layers.2.weight" in state
    except (KeyError, AttributeError, IndexError, ValueError) as e:
        raise ConfigError(f"{source}: not a guided-diffusion UNetModel state dict (cannot read {e} "
                          f"from its keys)") from None
    return dict(
        num_channels=mc, channel_mult=[c // mc for c in chans] if all(c % mc == 0 for c in chans) else None,
        num_res_blocks=n1 - 1,
        attention=[image_size // 2 ** lvl for lvl, b in enumerate(first) if f"input_blocks.{b}.1.qkv.weight" in state],
        learn_sigma=out_ch == 2 * in_ch, use_scale_shift_norm=emb_rows == 2 * chans[0],
        resblock_updown=bool(updown), in_channels=in_ch, out_channels=out_ch)


def _head(keys, k=4):
    keys = sorted(keys)
    return ", ".join(keys[:k]) + (", ..." if len(keys) > k else "")


def _cli_flags(flags: dict) -> dict[str, str]:
    return {"--num-channels": str(flags["num_channels"]),
            "--channel-mult": ",".join(map(str, flags["channel_mult"])) if flags["channel_mult"] else None,
            "--num-res-blocks": str(flags["num_res_blocks"]),
            "--attention": ",".join(map(str, flags["attention"])),
            "--scale-shift-norm": "" if flags["use_scale_shift_norm"] else None,
            "--no-scale-shift-norm": None if flags["use_scale_shift_norm"] else "",
            "--resblock-updown": "" if flags["resblock_updown"] else None,
            "--no-resblock-updown": None if flags["resblock_updown"] else ""}


def ddpm_flags(ddpm, resolution: int) -> dict:
    """``ddpm.*`` as the guided-diffusion flags of ``infer_flags`` (same keys)."""
    ch = list(ddpm.block_out_channels)
    return dict(num_channels=ch[0], channel_mult=[c // ch[0] for c in ch], num_res_blocks=ddpm.layers_per_block,
                attention=[resolution // 2 ** i for i in range(len(ch)) if resolution // 2 ** i in
                           set(ddpm.attention_resolutions)],
                learn_sigma=ddpm.variance == "learned_range", use_scale_shift_norm=ddpm.scale_shift_norm,
                resblock_updown=ddpm.resblock_updown, in_channels=IN_CHANNELS, out_channels=out_channels(ddpm.variance))


def _suggestion(state, ddpm, resolution, source) -> str:
    try:
        found = infer_flags(state, resolution, source)
    except ConfigError as e:
        return str(e)
    if found["in_channels"] != IN_CHANNELS:
        return (f"the checkpoint has {found['in_channels']} input channels; polyplib's DDPM has {IN_CHANNELS} "
                f"(RGB + mask), so this is not one of the authors' image+mask models")
    att = ",".join(map(str, found["attention"]))
    text = (f"the checkpoint has attention at {att} (feature sizes at {resolution} px): pass --attention {att}"
            if att else "the checkpoint has attention in no level but the middle block: pass --attention ''")
    given, want = _cli_flags(ddpm_flags(ddpm, resolution)), _cli_flags(found)
    other = [f"{k} {v}".strip() for k, v in want.items()
             if k != "--attention" and v is not None and given[k] != v]
    if other:
        text += " " + " ".join(other)
    return text


# ----------------------------------------------------------------------------- conversion
def convert_state_dict(gd_state: dict, ddpm, resolution: int, *, source: str = "checkpoint") -> dict:
    """A guided-diffusion UNetModel state dict as the state dict of ``UNet2DModel(**unet_config(ddpm, resolution))``.

    The checkpoint must fit ``ddpm`` exactly: otherwise one ConfigError names ``source``, the missing,
    unexpected and mis-shaped keys, and the flags the checkpoint was most likely made with.
    """
    state = unwrap_state_dict(gd_state, source)
    try:
        cfg = unet_config(ddpm, resolution)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    if cfg["norm_num_groups"] != GD_GROUPS:
        raise ConfigError(f"{source}: guided-diffusion normalises with {GD_GROUPS} groups; every "
                          f"ddpm.block_out_channels must be a multiple of {GD_GROUPS} "
                          f"(got {list(ddpm.block_out_channels)})")
    sizes = {resolution // 2 ** i for i in range(len(ddpm.block_out_channels))}
    if set(ddpm.attention_resolutions) - sizes:
        raise ConfigError(f"{source}: attention at {sorted(set(ddpm.attention_resolutions) - sizes)} is no feature "
                          f"size of this network at {resolution} px (sizes: {sorted(sizes, reverse=True)}); "
                          + _suggestion(state, ddpm, resolution, source))
    plan = _plan(ddpm, resolution)
    expected = {p.key: p.shape for p in plan}
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    shapes = {k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k]}
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing keys" + (f" ({_head(missing)})" if missing else ""),
                 f"{len(unexpected)} unexpected keys" + (f" ({_head(unexpected)})" if unexpected else "")]
        if shapes:
            k = sorted(shapes)[0]
            parts.append(f"{len(shapes)} keys of another shape (e.g. {k}: {tuple(state[k].shape)}, "
                         f"expected {expected[k]})")
        flags = ", ".join(f"{k}={v}" for k, v in ddpm_flags(ddpm, resolution).items())
        raise ConfigError(f"{source}: does not fit the guided-diffusion flags {flags} at image size {resolution}: "
                          + "; ".join(parts) + ". " + _suggestion(state, ddpm, resolution, source))
    out = {}
    for p in plan:
        out.update({k: v.detach().to(torch.float32).contiguous().clone() for k, v in p.convert(state[p.key]).items()})
    return out


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint file's state dict (``weights_only``); anything else is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"{path}: not a torch state dict file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return unwrap_state_dict(obj, str(path))


def convert_checkpoint(path: str | Path, out_dir: str | Path, *, attention=None, image_size: int = 256,
                       num_head_channels: int = 64, timesteps: int = 1000, num_channels: int | None = None,
                       channel_mult=None, num_res_blocks: int | None = None, scale_shift_norm: bool = True,
                       resblock_updown: bool = True, beta_schedule: str = "linear") -> Path:
    """Convert one authors' checkpoint into a ``DDPMPipeline`` folder ``out_dir`` (written atomically).

    ``attention`` (feature sizes; default the authors' 16,8), ``scale_shift_norm`` and
    ``resblock_updown`` (default the authors' True) are checked, never replaced; ``num_channels``,
    ``channel_mult``, ``num_res_blocks`` default to what the checkpoint has; learned sigma
    (``variance``) is read from the output width.
    """
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from ..config import DDPMSection
    from ..runs import atomic_dir, atomic_write_json, package_versions

    path = Path(path)
    state = load_checkpoint(path)
    found = infer_flags(state, image_size, str(path))
    mc = num_channels or found["num_channels"]
    mult = list(channel_mult or found["channel_mult"] or [])
    if not mult:
        raise ConfigError(f"{path}: level widths are no multiples of num_channels={mc}; pass --channel-mult")
    if mult[0] != 1:
        raise ConfigError(f"{path}: channel_mult must start with 1 (diffusers embeds timesteps with the width of "
                          f"the first level), got {mult}")
    variance = "learned_range" if found["out_channels"] == 2 * IN_CHANNELS else "fixed_small"
    try:
        ddpm = DDPMSection(block_out_channels=[mc * m for m in mult],
                           layers_per_block=num_res_blocks or found["num_res_blocks"],
                           attention_resolutions=list(AUTHORS_ATTENTION if attention is None else attention),
                           num_head_channels=num_head_channels, scale_shift_norm=scale_shift_norm,
                           resblock_updown=resblock_updown, dropout=0.0, variance=variance,
                           num_train_timesteps=timesteps, beta_schedule=beta_schedule)
    except ValueError as e:   # pydantic ValidationError
        raise ConfigError(f"{path}: flags out of range: {e}") from None
    weights = convert_state_dict(state, ddpm, image_size, source=str(path))

    with torch.device("meta"):
        unet = UNet2DModel(**unet_config(ddpm, image_size))
    unet.load_state_dict(weights, strict=True, assign=True)
    left = [n for n, t in [*unet.named_parameters(), *unet.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"convert: tensors left unset: {left[:5]}")
    fields = ("block_out_channels", "layers_per_block", "attention_resolutions", "num_head_channels",
              "scale_shift_norm", "resblock_updown", "dropout", "variance", "num_train_timesteps", "beta_schedule")
    record = {
        "source": path.name, "source_path": str(path.resolve()), "sha256": file_sha256(path),
        "source_dtypes": sorted({str(t.dtype) for t in state.values()}),
        "flags": dict(image_size=image_size, in_channels=IN_CHANNELS, num_channels=mc, channel_mult=mult,
                      num_res_blocks=ddpm.layers_per_block,
                      attention_resolutions=",".join(map(str, ddpm.attention_resolutions)),
                      num_head_channels=num_head_channels, learn_sigma=variance == "learned_range",
                      use_scale_shift_norm=scale_shift_norm, resblock_updown=resblock_updown,
                      diffusion_steps=timesteps, noise_schedule=beta_schedule, use_new_attention_order=False),
        "inferred_from_checkpoint": found,
        "ddpm": {f: getattr(ddpm, f) for f in fields},
        "data": {"resolution": image_size},
        "versions": package_versions(),
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        scheduler = DDPMScheduler(**scheduler_kwargs(timesteps, beta_schedule, variance))
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(tmp))
        atomic_write_json(tmp / "convert.json", record)
    return out_dir


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv=None) -> int:
    """``python -m polyplib.diffusion.convert <authors_model.pt> <out_dir> [--attention 16,8] ...``"""
    ap = argparse.ArgumentParser(prog="python -m polyplib.diffusion.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="guided-diffusion UNetModel state dict (.pt)")
    ap.add_argument("out_dir", help="DDPMPipeline folder to write (replaced whole)")
    ap.add_argument("--attention", type=_ints, default=list(AUTHORS_ATTENTION),
                    help="feature sizes with attention, as guided-diffusion's attention_resolutions (default 16,8)")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--num-head-channels", type=int, default=64)
    ap.add_argument("--timesteps", type=int, default=1000, help="diffusion_steps (linear schedule)")
    ap.add_argument("--num-channels", type=int, default=None, help="default: read from the checkpoint")
    ap.add_argument("--channel-mult", type=_ints, default=None,
                    help="e.g. 1,1,2,2,4,4; default: read from the checkpoint")
    ap.add_argument("--num-res-blocks", type=int, default=None, help="default: read from the checkpoint")
    ap.add_argument("--scale-shift-norm", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--resblock-updown", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    try:
        out = convert_checkpoint(args.checkpoint, args.out_dir, attention=args.attention, image_size=args.image_size,
                                 num_head_channels=args.num_head_channels, timesteps=args.timesteps,
                                 num_channels=args.num_channels, channel_mult=args.channel_mult,
                                 num_res_blocks=args.num_res_blocks, scale_shift_norm=args.scale_shift_norm,
                                 resblock_updown=args.resblock_updown)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rec = json.loads((out / "convert.json").read_text())
    print(f"wrote {out}/ (DDPMPipeline: unet/, scheduler/, model_index.json; convert.json) from {rec['source']} "
          f"sha256 {rec['sha256'][:12]}...; ddpm: {json.dumps(rec['ddpm'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

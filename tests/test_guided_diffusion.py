"""polyplib's diffusers UNet is guided-diffusion's UNetModel: converted weights give the same outputs.

Tiny models (32 px, widths 32/64/64) with the authors' flags and random weights; the comparison
runs in fp32 on CPU. GroupNorm weights are drawn around 1 (as in trained models), so attention is
far from uniform and a wrong head split shows in the outputs.
"""
import hashlib
import json
import warnings

import pytest
import torch

with warnings.catch_warnings():   # guided-diffusion's import-time torch.cuda.amp deprecation warnings
    warnings.simplefilter("ignore", FutureWarning)
    pytest.importorskip("guided_diffusion")
    from guided_diffusion.unet import UNetModel

from polyplib.config import DDPMSection  # noqa: E402
from polyplib.diffusion.convert import convert_checkpoint, convert_state_dict, infer_flags, main  # noqa: E402
from polyplib.diffusion.model import unet_config  # noqa: E402
from polyplib.errors import ConfigError  # noqa: E402

SIZE, TOL = 32, 1e-5
pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models: faster on a shared 2-core CPU


def gd_model(attention="16,8", learn_sigma=True, updown=True, scale_shift=True, seed=0):
    """guided-diffusion's UNetModel as its create_model builds it (4 in-channels), random weights.

    guided-diffusion zero-initialises output convolutions, so every parameter is re-drawn. The last
    convolution is drawn smaller so that outputs stay about 1 (fp32 rounding grows with them).
    """
    model = UNetModel(image_size=SIZE, in_channels=4, model_channels=32, out_channels=8 if learn_sigma else 4,
                      num_res_blocks=2, attention_resolutions=tuple(SIZE // int(r) for r in attention.split(",")),
                      dropout=0.0, channel_mult=(1, 2, 2), num_head_channels=16, use_fp16=False,
                      use_scale_shift_norm=scale_shift, resblock_updown=updown).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
                std = 0.02 if m is model.out[2] else 0.05
                for p in m.parameters():
                    p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def ddpm_section(**kw):
    base = dict(block_out_channels=[32, 64, 64], layers_per_block=2, attention_resolutions=[16, 8],
                num_head_channels=16, scale_shift_norm=True, resblock_updown=True, variance="learned_range")
    return DDPMSection(**{**base, **kw})


def polyp_unet(ddpm, weights):
    from diffusers import UNet2DModel

    unet = UNet2DModel(**unet_config(ddpm, SIZE)).eval()
    unet.load_state_dict(weights, strict=True)
    return unet


@torch.no_grad()
def outputs(gd, unet):
    """Both networks on the same 4-channel inputs at timesteps 3 and 870 (fp32)."""
    x = torch.randn(2, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 870])
    return gd(x, t), unet(x, t).sample


@pytest.mark.parametrize("learn_sigma,updown,scale_shift", [(True, True, True), (False, True, True),
                                                            (True, False, False)],
                         ids=["authors", "fixed-sigma", "plain-resample-norm"])
def test_converted_weights_give_guided_diffusion_outputs(learn_sigma, updown, scale_shift):
    gd = gd_model(learn_sigma=learn_sigma, updown=updown, scale_shift=scale_shift)
    flags = infer_flags(gd.state_dict(), SIZE)
    assert flags == dict(num_channels=32, channel_mult=[1, 2, 2], num_res_blocks=2, attention=[16, 8],
                         learn_sigma=learn_sigma, use_scale_shift_norm=scale_shift, resblock_updown=updown,
                         in_channels=4, out_channels=8 if learn_sigma else 4)
    ddpm = ddpm_section(scale_shift_norm=scale_shift, resblock_updown=updown,
                        variance="learned_range" if learn_sigma else "fixed_small")
    a, b = outputs(gd, polyp_unet(ddpm, convert_state_dict(gd.state_dict(), ddpm, SIZE)))
    diff = (a - b).abs().max().item()
    print(f"learn_sigma={learn_sigma} resblock_updown={updown} scale_shift={scale_shift}: "
          f"max |out| {a.abs().max().item():.3f}, max abs diff {diff:.2e}")
    assert a.shape == b.shape == (2, 8 if learn_sigma else 4, SIZE, SIZE)
    assert a.abs().max() > 0.3          # not trivially zero
    assert diff <= TOL


def test_wrong_attention_names_keys_and_suggests_the_checkpoints(tmp_path):
    path = tmp_path / "model_16_8.pt"
    torch.save(gd_model("16,8").state_dict(), path)
    with pytest.raises(ConfigError) as e:
        convert_checkpoint(path, tmp_path / "out", attention=[16], image_size=SIZE, num_head_channels=16)
    msg = str(e.value)
    assert str(path) in msg and "missing keys (" in msg and "unexpected keys (" in msg
    assert "input_blocks.7.1.qkv.weight" in msg or "input_blocks.7.1.norm.bias" in msg   # the 8 px attention
    assert "pass --attention 16,8" in msg
    assert not (tmp_path / "out").exists()

    path = tmp_path / "model_32_16_8.pt"   # the authors' other guess; the default 16,8 does not fit it
    torch.save(gd_model("32,16,8").state_dict(), path)
    with pytest.raises(ConfigError, match=r"0 missing keys.*30 unexpected keys.*pass --attention 32,16,8"):
        convert_state_dict(torch.load(path, weights_only=True), ddpm_section(), SIZE, source=str(path))


def test_polyplib_unet_with_another_flag_is_another_network():
    gd = gd_model()
    weights = convert_state_dict(gd.state_dict(), ddpm_section(), SIZE)
    with pytest.raises(RuntimeError, match="size mismatch"):        # time_emb_proj: 2C rows vs C
        polyp_unet(ddpm_section(scale_shift_norm=False), weights)
    with pytest.raises(RuntimeError):                               # downsamplers: resnet vs conv keys
        polyp_unet(ddpm_section(resblock_updown=False), weights)
    # same keys and shapes, other head split: loads, but computes something else
    a, b = outputs(gd, polyp_unet(ddpm_section(num_head_channels=32), weights))
    diff = (a - b).abs().max().item()
    print(f"num_head_channels 32 instead of 16: max abs diff {diff:.2e}")
    assert diff > 1e-3


def test_cli_round_trip(tmp_path, capsys):
    from diffusers import DDPMPipeline

    gd = gd_model()
    path = tmp_path / "authors.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in gd.state_dict().items()}}, path)
    out = tmp_path / "converted" / "cluster-00"
    assert main([str(path), str(out), "--image-size", str(SIZE), "--num-head-channels", "16", "--timesteps", "50"]) == 0
    assert str(out) in capsys.readouterr().out

    pipe = DDPMPipeline.from_pretrained(str(out))
    a, b = outputs(gd, pipe.unet.eval())
    diff = (a - b).abs().max().item()
    print(f"CLI round trip: max abs diff {diff:.2e}")
    assert diff <= TOL
    assert pipe.scheduler.config.variance_type == "learned_range"
    assert pipe.scheduler.config.num_train_timesteps == 50

    rec = json.loads((out / "convert.json").read_text())
    assert rec["source"] == "authors.pt"
    assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rec["flags"]["attention_resolutions"] == "16,8" and rec["data"]["resolution"] == SIZE
    ddpm = DDPMSection(**rec["ddpm"])          # the ddpm.* values rebuild the saved network
    assert {k: pipe.unet.config[k] for k in unet_config(ddpm, SIZE)} == {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in unet_config(ddpm, SIZE).items()}

    assert main([str(path), str(tmp_path / "bad"), "--image-size", str(SIZE), "--num-head-channels", "16",
                 "--attention", "16"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "pass --attention 16,8" in err
    assert not (tmp_path / "bad").exists()


def test_a_file_that_is_no_state_dict_is_a_config_error(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    for path in (text, tensor, tmp_path / "absent.pt"):
        with pytest.raises(ConfigError, match=str(path)):
            convert_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("attention", ["16,8", "32,16,8"])
def test_paper_size_network_maps_key_for_key(attention):
    """The authors' 256 px flags (no weights allocated): every tensor lands on a UNet2DModel tensor of its shape."""
    from diffusers import UNet2DModel

    sizes = [int(r) for r in attention.split(",")]
    with torch.device("meta"):
        gd = UNetModel(image_size=256, in_channels=4, model_channels=256, out_channels=8, num_res_blocks=2,
                       attention_resolutions=tuple(256 // r for r in sizes), channel_mult=(1, 1, 2, 2, 4, 4),
                       num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True)
        ddpm = DDPMSection(attention_resolutions=sizes)          # the paper defaults otherwise
        unet = UNet2DModel(**unet_config(ddpm, 256))
    assert infer_flags(gd.state_dict(), 256)["attention"] == sizes
    weights = convert_state_dict(gd.state_dict(), ddpm, 256)
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in unet.state_dict().items()}


# ----------------------------------------------------------------------------- converted models in the study
def test_stage_02_uses_converted_models_and_stage_03_samples_them(tmp_path):
    """``ddpm.pretrained``: stage 02 trains nothing and says so; RePaint redraws with the converted model."""
    import pandas as pd

    from polyplib.data.stage import run_stage as prepare_data
    from polyplib.diffusion.train import train_all, train_one
    from polyplib.errors import StageError
    from polyplib.runs import open_run
    from polyplib.sampling.stage import run_stage as sample_all
    from polyplib.sampling.repaint import count_evaluations

    ckpt = tmp_path / "authors_full.pt"
    torch.save(gd_model().state_dict(), ckpt)
    converted = tmp_path / "converted"
    assert main([str(ckpt), str(converted / "full"), "--image-size", str(SIZE), "--num-head-channels", "16"]) == 0
    run = open_run("smoke", [
        "data.phantom.n_source=30", "data.phantom.n_target=8", "data.split.n_train=6", "data.split.n_test=6",
        f"data.resolution={SIZE}", "run.progress=false", "run.workers=1", "ddpm.train_clusters=false",
        f"ddpm.pretrained={converted}", "sampling.model=full", "sampling.style.guided=false",
        "sampling.style.mkl_only=false", "sampling.n_unconditional=0",
        "sampling.steps=6", "sampling.jump_length=2", "sampling.jump_n_sample=2"], tmp_path / "run")
    prepare_data(run)
    summary = train_all(run)
    assert summary[["model", "status"]].values.tolist() == [["full", "pretrained"]]
    assert not run.path("models", "ddpm", "full").exists()                    # nothing trained or copied
    with pytest.raises(StageError, match="ddpm.pretrained"):
        train_one(run, "full")
    result = sample_all(run)
    manifest = pd.read_csv(run.path("synthetic", "full-diff", "manifest.csv"))
    assert len(manifest) == 6 and set(manifest["model"]) == {"full"}
    assert set(manifest["nfe"]) == {count_evaluations(6, 2, 2)}
    assert result["methods"][0]["nfe_per_pair"] == count_evaluations(6, 2, 2)

    run.cfg.ddpm.train_full, run.cfg.ddpm.train_clusters = False, True     # cluster-NN models are not there
    with pytest.raises(StageError, match=r"no converted model 'cluster-00'.*polyplib.diffusion.convert"):
        train_all(run)

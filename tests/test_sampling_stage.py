"""Stage 03 end to end on tiny random models: same seed -> same bytes, resume after a kill,
exact regeneration, the real frame kept outside the dilated mask, a set PreparedSet reads."""
import functools
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from polyplib.errors import StageError

OVERRIDES = [
    "data.phantom.n_source=40", "data.phantom.n_target=12", "data.split.n_train=12", "data.split.n_test=10",
    "data.resolution=32", "run.progress=false", "run.workers=1",
    "sampling.steps=10", "sampling.skip_steps=2", "sampling.jump_length=2", "sampling.jump_n_sample=2",
    "sampling.samples_per_image=2", "sampling.batch_size=4", "sampling.also_full=true",
    "sampling.unconditional_samplers=[ddim, dpm++]", "sampling.unconditional_steps=[4]",
    "sampling.n_unconditional=3", "sampling.style.steps=6", "sampling.style.skip_steps=2",
]


@functools.lru_cache(maxsize=1)
def tiny_random_style_weights() -> tuple[str, ...]:
    """Overrides naming feature-network files with RANDOM weights (VGG-19 features, a ViT-Tiny/16 as the
    'DINO' model): they let the guided Styled-Diff pass run through the stage here; never real results."""
    import tempfile

    import timm

    from polyplib.sampling.feature_nets import vgg_features

    folder = Path(tempfile.mkdtemp(prefix="tiny-random-style-"))
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in vgg_features(full=True).state_dict().items()}, folder / "vgg.pth")
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).state_dict(),
               folder / "vit.pth")
    return (f"sampling.style.vgg_weights={folder / 'vgg.pth'}", f"sampling.style.dino_weights={folder / 'vit.pth'}",
            "sampling.style.dino_model=vit_tiny_patch16_224")


@pytest.fixture(scope="module", autouse=True)
def stage_03_registered():
    """Stage 03 is registered by the lead in polyplib/stages.py; until then, register it here."""
    from polyplib import stages

    if any(s.id == "03" for s in stages.STAGES):
        yield
        return
    upstream = tuple(s.id for s in stages.STAGES if s.id in ("01", "02"))   # data and models
    mp = pytest.MonkeyPatch()
    mp.setattr(stages, "STAGES", stages.STAGES + (
        stages.Stage("03", "sampling", "03_sampling.ipynb", "Sampling", ("sampling",), upstream),))
    yield
    mp.undo()


def make_run(folder: Path, extra=()):
    """A prepared tiny run with stage-02 artefacts: clusters.csv and tiny random 4-channel DDPMs."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from polyplib.data.stage import run_stage as prepare_data
    from polyplib.data.prepared import load_dataset
    from polyplib.runs import open_run

    run = open_run("smoke", OVERRIDES + list(tiny_random_style_weights()) + list(extra), folder)
    prepare_data(run)
    ids = load_dataset(run).ids("train")
    pd.DataFrame({"id": ids, "cluster": [i % 2 for i in range(len(ids))]}).to_csv(run.path("clusters.csv"), index=False)
    for seed, name in enumerate(["cluster-00", "cluster-01", "full"]):
        torch.manual_seed(seed)
        unet = UNet2DModel(sample_size=32, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                           layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler(1000)).save_pretrained(run.path("models", "ddpm", name))
    return run


def files(run) -> dict[str, bytes]:
    """Every pair file and table of the synthetic sets (timings excluded: they are wall-clock)."""
    out = {}
    for p in sorted(run.path("synthetic").rglob("*")):
        rel = str(p.relative_to(run.dir))
        if p.suffix == ".png":
            out[rel] = p.read_bytes()
        elif p.name in ("manifest.csv", "rejected.csv"):
            out[rel] = pd.read_csv(p).drop(columns=["seconds"], errors="ignore").to_csv(index=False).encode()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from polyplib.sampling.stage import run_stage as sample_all

    run = make_run(tmp_path_factory.mktemp("ref"))
    return run, sample_all(run)


def test_every_planned_method_and_pair_is_written(reference):
    from polyplib.data.prepared import PreparedSet, load_dataset
    from polyplib.sampling.stage import planned_methods, summary_table
    from polyplib.synthetic.folder import load_set as load_synthetic

    run, summary = reference
    methods = ["diff", "full-diff", "mkl-diff", "mkl-full-diff", "styled-diff", "full-styled-diff", "uncond-ddim-4",
               "uncond-dpm++-4"]
    assert planned_methods(run.cfg) == methods == [m["method"] for m in summary["methods"]]
    sources = [i for i in load_dataset(run).ids("train")
               if not load_dataset(run).manifest.set_index("id").at[i, "empty"]]
    by = {m["method"]: m for m in summary["methods"]}
    assert by["diff"]["pairs"] == by["full-diff"]["pairs"] == 2 * len(sources)
    assert by["mkl-diff"]["pairs"] == by["mkl-diff"]["accepted"] == by["diff"]["accepted"]
    assert by["styled-diff"]["pairs"] == by["diff"]["accepted"] and by["styled-diff"]["nfe_per_pair"] == 4
    assert by["styled-diff"]["unet_backward_per_pair"] == 4 and by["styled-diff"]["dino_calls_per_pair"] == 5
    assert summary["absent"] == []
    assert by["uncond-ddim-4"]["pairs"] == 3 and by["uncond-ddim-4"]["nfe_per_pair"] == 4
    assert by["diff"]["models"] == ["cluster-00", "cluster-01"] and by["full-diff"]["models"] == ["full"]
    for method in methods:
        ds = PreparedSet(run.path("synthetic", method))
        assert len(ds) == by[method]["accepted"] and len(set(ds.ids())) == len(ds)
        for col in ("id", "file", "source_id", "cluster", "model", "sampler", "steps", "seed", "sample_index",
                    "accepted", "reason", "coverage"):
            assert col in ds.manifest
        for pair_id in ds.ids()[:3]:
            image, mask = ds.load(pair_id)
            assert image.shape == (32, 32, 3) and mask.any()
    assert len(load_synthetic(run, "diff")) == by["diff"]["accepted"]
    assert list(summary_table(summary)["method"]) == methods
    assert run.stage("03").is_done()


def test_outside_the_dilated_mask_the_real_pair_is_kept_exactly(reference):
    from polyplib.data.prepared import load_dataset
    from polyplib.sampling.figures import load_pair
    from polyplib.synthetic.postprocess import dilate
    from polyplib.synthetic.folder import read_records

    run, summary = reference
    ds = load_dataset(run)
    changed = []
    for rec in read_records(run.path("synthetic", "diff")).to_dict("records"):
        image, mask = ds.load(rec["source_id"])
        region = dilate(mask, summary["dilation_px"])
        new_image, new_mask = load_pair(run, "diff", rec)
        assert np.array_equal(new_image[~region], image[~region])     # exact: no rounding drift
        assert not new_mask[~region].any()
        changed.append((new_image[region] != image[region]).mean())
    assert np.mean(changed) > 0.5


def test_same_seed_same_bytes_and_a_killed_run_resumes_without_gaps_or_duplicates(reference, tmp_path):
    from polyplib.sampling.stage import run_stage as sample_all

    ref_run, ref_summary = reference
    run = make_run(tmp_path / "killed")
    seen = []

    def kill_after(k):
        def hook(record):
            seen.append((record["method"], record["id"]))
            if len(seen) == k:
                raise KeyboardInterrupt("killed")
        return hook

    with pytest.raises(KeyboardInterrupt):
        sample_all(run, on_pair=kill_after(6))        # mid-batch: batches hold 4 pairs
    assert not run.stage("03").is_done()
    assert len(list(run.path("synthetic", "diff", "records").glob("*.json"))) == 6
    first = list(seen)
    seen.clear()
    summary = sample_all(run, on_pair=lambda r: seen.append((r["method"], r["id"])))
    assert not set(first) & set(seen)                 # finished pairs were not redone
    total = sum(m["pairs"] for m in summary["methods"])
    assert total == sum(m["pairs"] for m in ref_summary["methods"])
    assert len(set(first) | set(seen)) == len(first) + len(seen) == total
    assert files(run) == files(ref_run)               # identical to the uninterrupted run, byte for byte
    assert run.stage("03").is_done()


def test_regenerate_redraws_single_pairs_exactly(reference):
    from polyplib.data.imageio import read_image, read_mask
    from polyplib.sampling.stage import regenerate
    from polyplib.synthetic.folder import read_records

    run, _ = reference
    for method in ("diff", "uncond-dpm++-4", "mkl-diff", "styled-diff"):
        rec = read_records(run.path("synthetic", method)).iloc[-1].to_dict()
        folder = run.path("synthetic", method) / ("" if rec["accepted"] else "rejected")
        pair = regenerate(run, method, rec["id"])
        assert np.array_equal(pair["image"], read_image(folder / "images" / f"{rec['file']}.png"))
        assert np.array_equal(pair["mask"], read_mask(folder / "masks" / f"{rec['file']}.png"))
        assert pair["record"]["seed"] == rec["seed"]
    with pytest.raises(StageError, match="not planned"):
        regenerate(run, "diff", "no-such-pair")


def test_changed_settings_restart_a_method_and_cached_stage_loads(reference, tmp_path):
    from polyplib.runs import Run
    from polyplib.config import load_config
    from polyplib.sampling.stage import run_stage as sample_all

    ref_run, ref_summary = reference
    assert sample_all(ref_run) == ref_summary                          # cached: loaded, not recomputed
    no_style = ["sampling.style.guided=false", "sampling.style.mkl_only=false"]
    run = make_run(tmp_path / "changed", ["sampling.n_unconditional=0", "sampling.also_full=false", *no_style])
    sample_all(run)
    before = (run.path("synthetic", "diff", "plan.json")).read_text()
    run2 = Run(load_config("smoke", OVERRIDES + ["sampling.n_unconditional=0", "sampling.also_full=false",
                                                 *no_style, "sampling.seed=1"]), run.dir)
    summary = sample_all(run2)
    assert run2.path("synthetic", "diff", "plan.json").read_text() != before
    assert summary["methods"][0]["pairs"] == ref_summary["methods"][0]["pairs"]


def test_without_feature_weights_styled_diff_is_absent_and_nothing_bears_its_name(tmp_path):
    from polyplib.sampling.stage import absent_table, planned_methods, run_stage as sample_all
    from polyplib.synthetic.folder import absent_methods

    run = make_run(tmp_path / "noweights", ["sampling.n_unconditional=0", "sampling.also_full=false",
                                            "sampling.style.vgg_weights=null", "sampling.style.dino_weights=null"])
    assert planned_methods(run.cfg) == ["diff", "mkl-diff", "styled-diff"]
    summary = sample_all(run)
    assert [m["method"] for m in summary["methods"]] == ["diff", "mkl-diff"]
    assert absent_table(summary)["method"].tolist() == ["styled-diff"]
    reason = absent_methods(run)["styled-diff"]
    assert "sampling.style.vgg_weights" in reason and "sampling.style.dino_weights" in reason
    assert not run.path("synthetic", "styled-diff").exists()
    assert run.path("synthetic", "mkl-diff", "manifest.csv").exists()


def test_missing_models_fail_with_a_clear_error(tmp_path):
    from polyplib.sampling.stage import run_stage as sample_all

    run = make_run(tmp_path / "nomodels", ["sampling.n_unconditional=0", "sampling.also_full=false"])
    shutil.rmtree(run.path("models", "ddpm", "cluster-01"))
    with pytest.raises(StageError, match="cluster-01.*stage 02"):
        sample_all(run)
    run.path("clusters.csv").unlink()
    with pytest.raises(StageError, match="clusters.csv"):
        sample_all(run)


def test_the_variance_ablation_set_is_redrawn_by_its_own_model(tmp_path):
    """``ddpm.compare_variance``: full-diff-fixed-sigma redraws every source with the full-fixed-sigma model."""
    import shutil

    from polyplib.sampling.stage import planned_methods, run_stage as sample_all

    run = make_run(tmp_path, ["ddpm.compare_variance=true", "sampling.samples_per_image=1"])
    shutil.copytree(run.path("models", "ddpm", "cluster-01"), run.path("models", "ddpm", "full-fixed-sigma"))
    assert "full-diff-fixed-sigma" in planned_methods(run.cfg)
    summary = sample_all(run, methods=["full-diff", "full-diff-fixed-sigma"])
    ablation = pd.read_csv(run.path("synthetic", "full-diff-fixed-sigma", "manifest.csv"), dtype={"id": str})
    full = pd.read_csv(run.path("synthetic", "full-diff", "manifest.csv"), dtype={"id": str})
    assert set(ablation["model"]) == {"full-fixed-sigma"} and set(full["model"]) == {"full"}
    both = ablation.merge(full, on="id", suffixes=("", "_full"))         # accepted in both sets
    assert len(both) and (both["seed"] == both["seed_full"]).all()      # the same per-pair seeds
    assert [m["nfe_per_pair"] for m in summary["methods"]] == [full["nfe"].iloc[0]] * 2


def test_the_budget_study_redraws_the_same_sources_per_sampler_and_stays_out_of_the_sets(tmp_path):
    """sampling.budget_study: one folder per sampler and budget under synthetic/budget/, the same sources
    and seeds in each, the UNet calls each point's schedule costs; no training set or FID row sees them;
    stage 04's table pairs them by source and refuses KID below metrics.min_images."""
    from polyplib.metrics.stage import discover_sets
    import matplotlib.pyplot as plt

    from polyplib.metrics.budget import budget_summary, budget_table
    from polyplib.metrics.figures import budget_display, budget_figure
    from polyplib.sampling.stage import budget_points, planned_methods, run_stage as sample_all
    from polyplib.synthetic.catalogue import set_dir as synthetic_dir
    from polyplib.synthetic.folder import read_records

    points = ("sampling.budget_study.points=[{sampler: repaint, steps: 8, jump_length: 2, jump_n_sample: 2}, "
              "{sampler: repaint-ddim, steps: 6, jump_length: 2, jump_n_sample: 2}, {sampler: dpm++, steps: 5}]")
    run = make_run(tmp_path, ["sampling.budget_study.pairs=3", points, "sampling.n_unconditional=0",
                              "sampling.style.guided=false", "sampling.style.mkl_only=false", "metrics.min_images=3"])
    names = list(budget_points(run.cfg))
    assert names == ["budget-repaint-14", "budget-repaint-ddim-10", "budget-dpm++-5"]
    assert planned_methods(run.cfg)[-3:] == names
    sample_all(run)
    records = {n: read_records(synthetic_dir(run, n)).sort_values("id", ignore_index=True) for n in names}
    first = records[names[0]]
    assert len(first) == 3 and first["model"].eq("full").all()
    for name, df in records.items():
        assert synthetic_dir(run, name).parent == run.path("synthetic", "budget")
        assert df[["source_id", "seed"]].astype(str).values.tolist() == first[["source_id", "seed"]].astype(str).values.tolist()
        assert set(df["nfe"]) == {int(name.rsplit("-", 1)[1])}
    assert not any(k.startswith("budget") for k in discover_sets(run, 1))

    def features(crops):       # a plain pixel feature (the KID arithmetic is tested against torch-fidelity)
        from PIL import Image

        return np.stack([np.asarray(Image.fromarray(c).resize((8, 8)), np.float64).reshape(-1) / 255 for c in crops])

    table = budget_table(run, features)
    assert list(table["method"]) == names and table["status"].eq("ok").all()
    assert budget_summary(run.cfg, table).startswith("3 sources, reference budget-repaint-14 (14 UNet calls per pair)")
    shown = budget_display(table)
    assert list(shown["set"]) == names and shown.loc[0, "indistinguishable"] == "reference"
    assert shown.loc[2, "jumps"] == "none" and shown.loc[1, "jumps"] == "2 x 2"
    fig = budget_figure(table)
    assert len(fig.axes) == 2 and len(fig.axes[1].patches) == 3         # one cost bar per point
    plt.close(fig)
    assert table.loc[0, "kid_minus_reference"] == 0 and table.loc[0, "speedup"] == 1
    assert table["accepted"].le(3).all() and table["real_mask_coverage"].between(0, 1).all()
    run.cfg.metrics.min_images = 4
    refused = budget_table(run, lambda crops: pytest.fail("Inception features extracted for a refused study"))
    assert refused["status"].str.contains("too few").all() and refused["kid"].isna().all()
    assert not refused["indistinguishable"].any()
    assert "too few" in budget_summary(run.cfg, refused) and "min_images = 4" in budget_summary(run.cfg, refused)
    assert "off in the 'smoke' profile" in budget_summary(run.cfg, refused.iloc[:0])

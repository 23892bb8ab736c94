"""The `gpu` profile and `benchmarks/bench_gpu.py` where no GPU is (#28): the profile's whole study shrunk to a
CPU's size, the benchmark at toy sizes, and the batch search that only a GPU's memory ends, with the device's
out-of-memory error raised at a chosen batch."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

#: the gpu profile at the smoke's sizes (data, widths, steps, sets); its method settings untouched
SHRUNK = ["data.phantom.n_source=64", "data.phantom.n_target=24", "data.phantom.scale=0.4", "data.split.n_train=32",
          "data.split.n_test=16", "clustering.features=handcrafted", "clustering.min_size=2",
          "ddpm.block_out_channels=[16,32,32,32]", "ddpm.num_head_channels=16",
          "ddpm.batch_size=4", "ddpm.max_steps=20", "ddpm.checkpoint_every=10", "ddpm.sample_every=10",
          "ddpm.sample_steps=5", "ddpm.num_train_timesteps=100", "sampling.steps=20", "sampling.jump_length=5",
          "sampling.jump_n_sample=2", "sampling.batch_size=16", "sampling.n_unconditional=4",
          "sampling.unconditional_steps=[10]", "sampling.style.steps=20", "sampling.style.skip_steps=8",
          "metrics.kid_subset_size=50", "metrics.msssim_pairs=100", "metrics.review_per_source=4",
          "gan.base_channels=16", "gan.max_steps=20", "gan.checkpoint_every=10", "gan.n_samples=32",
          "gan.singan_images=2", "gan.singan_scales=3", "gan.singan_iters=15", "gan.singan_samples_per_image=2",
          "segmentation.epochs=2", "segmentation.patience=1", "segmentation.lr_drop_epoch=1",
          "segmentation.batch_size=8", "segmentation.small_n=[16]", "segmentation.num_workers=0",
          "run.workers=2"]


@pytest.mark.slow
def test_the_gpu_profile_runs_the_whole_study_shrunk_on_a_cpu_and_keeps_the_authors_method(tmp_path):
    """``run.device: auto`` falls back to the CPU; learned sigma, the pure-noise start, Full-Diff and the report's
    'Equal to the paper' lines come through, and bench_gpu.py summarises the run."""
    from bench_gpu import study_summary

    run = tmp_path / "gpu"
    cmd = [sys.executable, str(ROOT / "run_all.py"), "--profile", "gpu", "--run-dir", str(run),
           "--figures-dir", str(tmp_path / "figures"), "--quiet", *[f"--set={o}" for o in SHRUNK]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((run / "run_meta.json").read_text())
    assert meta["profile"] == "gpu" and meta["config"]["run"]["device"] == "auto"
    assert meta["config"]["ddpm"]["variance"] == "learned_range" and meta["config"]["sampling"]["start"] == "noise"
    sets = {m["method"] for m in json.loads((run / "synthetic" / "summary.json").read_text())["methods"]}
    assert {"diff", "full-diff", "mkl-diff"} <= sets
    report = (run / "report.md").read_text()
    equal = report[report.index("## Equal to the paper"):report.index("## Added by this study")]
    assert "- **Variance:** learned sigma" in equal and "- **RePaint start:** pure noise" in equal
    summary = study_summary(run)
    assert summary["all_stages_ran"] and set(summary["stages"]) == {f"0{i}" for i in range(1, 8)}
    assert summary["diff_pairs"] > 0 and 0 <= summary["diff_kept_share"] <= 1
    assert summary["test_iou_real_only"] is not None and summary["test_iou_diff_only"] is not None


@pytest.mark.slow
def test_bench_gpu_runs_at_toy_sizes_on_a_cpu(tmp_path):
    """The benchmark's every part at toy sizes: throughput per batch from the trainer's own log, FLOPs and MFU
    below 1, and the paper profile's hours computed from the paper profile's settings."""
    from bench_gpu import main

    from polyplib import paper
    from polyplib.config import load_config

    out = tmp_path / "gpu.json"
    assert main(["--tiny", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    trainer = record["trainer"]
    assert [b["batch"] for b in trainer["batches"]] == [1, 2, 4] and trainer["search_stopped"] == "--max-batch 4 reached"
    assert trainer["variance"] == "learned_range" and trainer["train_flops_per_image"] > 0
    for b in trainer["batches"]:
        assert b["images_per_s"] > 0 and 0 < b["mfu"] < 1 and b["peak_memory_gb"] is None   # no device memory on a CPU
    cfg = load_config("paper")
    hours = record["paper_profile"]
    assert hours["stage_02"]["models"] == cfg.clustering.k + 1 == 21
    assert hours["stage_02"]["images_seen"] == 21 * cfg.ddpm.max_steps * cfg.ddpm.batch_size
    batch1 = trainer["batches"][0]["images_per_s"]
    assert hours["stage_02"]["hours_at_paper_batch"] == pytest.approx(hours["stage_02"]["images_seen"] / batch1 / 3600,
                                                                      abs=0.06)
    assert hours["stage_03"]["unet_calls_per_pair"] == paper.REPAINT_CALLS_PER_PAIR.value
    assert hours["stage_03"]["pairs"] == 3 * 348 * 2
    assert record["forward"]["evaluations_per_s"] > 0


def test_the_batch_search_stops_at_the_first_batch_that_runs_out_of_memory(monkeypatch):
    """What only a GPU's memory ends: torch's OutOfMemoryError at batch 8 ends the search with 1, 2 and 4 measured;
    any other error is not taken for a full device."""
    import torch

    import bench_gpu
    from polyplib.config import load_config

    def fake(cfg, batch, steps=bench_gpu.STEPS):
        if batch >= 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"batch": batch, "images_per_s": float(batch), "seconds_per_step": 1.0, "peak_memory_gb": None}

    monkeypatch.setattr(bench_gpu, "trainer_throughput", fake)
    cfg = load_config("paper", ["run.device=cpu"])
    rows, why = bench_gpu.largest_batch(cfg, 256)
    assert [r["batch"] for r in rows] == [1, 2, 4] and why == "out of memory at batch 8"

    def broken(cfg, batch, steps=bench_gpu.STEPS):
        raise RuntimeError("shapes cannot be multiplied")

    monkeypatch.setattr(bench_gpu, "trainer_throughput", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        bench_gpu.largest_batch(cfg, 256)

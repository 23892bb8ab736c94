"""Stage 07 units (duplicates counted once, per-domain tables and paired tests) and the study report."""
import numpy as np
import pandas as pd
import pytest

from polyplib.config import load_config
from polyplib.errors import StageError
from polyplib.runs import Run
from polyplib.transfer.stage import IN_DOMAIN, target_sets, transfer_tables, unique_ids


def test_duplicate_frames_count_once_and_order_is_kept():
    ids = ["a", "b", "c", "d", "e"]
    assert unique_ids(ids, [["d", "b"], ["e", "c", "a"]]) == ["a", "b"]
    assert unique_ids(ids, []) == ids


def _per_image(rng, target: str, gain: float) -> pd.DataFrame:
    base = dict(source="none", n_real="all", per_real=0, augmentation="control", model="unet")
    rows = []
    for seed in (0, 1):
        for i in range(40):
            real = float(np.clip(0.5 + 0.2 * np.sin(i) + rng.normal(0, 0.02), 0, 1))
            rows.append({**base, "regime": "real", "seed": seed, "image_id": f"{i:03d}", "dice": real, "iou": real})
            mixed = float(np.clip(real + gain + rng.normal(0, 0.02), 0, 1))
            rows.append({**base, "regime": "mixed", "source": "styled-diff", "per_real": 1, "seed": seed,
                         "image_id": f"{i:03d}", "dice": mixed, "iou": mixed})
    return pd.DataFrame(rows).assign(target=target)


def test_transfer_tables_test_each_domain_against_real_on_the_same_images():
    rng = np.random.default_rng(0)
    per_image = pd.concat([_per_image(rng, IN_DOMAIN, 0.10), _per_image(rng, "cvc-clinicdb", 0.0)])
    cfg = load_config("smoke", ["segmentation.bootstrap=500"])
    summary, paired, wide = transfer_tables(per_image, cfg)
    assert set(summary["target"]) == {IN_DOMAIN, "cvc-clinicdb"} and (summary["n_images"] == 40).all()
    gain = paired.set_index("target")
    assert gain.loc[IN_DOMAIN, "diff"] == pytest.approx(0.10, abs=0.02) and gain.loc[IN_DOMAIN, "p"] < 1e-4
    assert gain.loc[IN_DOMAIN, "diff_lo"] > 0
    assert abs(gain.loc["cvc-clinicdb", "diff"]) < 0.02 and gain.loc["cvc-clinicdb", "diff_lo"] < 0 < \
        gain.loc["cvc-clinicdb", "diff_hi"]
    assert list(wide.columns) == ["configuration", f"IoU {IN_DOMAIN}", "IoU cvc-clinicdb",
                                  f"ΔIoU vs real {IN_DOMAIN}", "ΔIoU vs real cvc-clinicdb"]
    mixed = wide[wide["configuration"].str.startswith("real + styled-diff")].iloc[0]
    assert mixed[f"ΔIoU vs real {IN_DOMAIN}"].startswith("+0.1")
    assert wide[wide["configuration"].str.startswith("real ·")].iloc[0][f"ΔIoU vs real {IN_DOMAIN}"] == "—"


def test_no_target_set_is_a_clear_error(tmp_path):
    from polyplib.data.stage import run_stage as prepare_data
    from polyplib.runs import open_run
    from polyplib.transfer.stage import score_on_targets

    run = open_run("smoke", ["data.phantom.n_source=20", "data.phantom.n_target=0", "data.split.n_train=10",
                             "data.split.n_test=6", "data.resolution=32", "run.progress=false"], tmp_path / "run")
    prepare_data(run)
    assert target_sets(run).empty
    run.save_table("06_segmentation", pd.DataFrame({"name": []}))
    run.save_table("06_per_image", pd.DataFrame({"image_id": []}))
    with pytest.raises(StageError, match="n_target"):
        score_on_targets(run)


def test_report_names_unrun_stages_and_fills_nothing_in(tmp_path):
    from polyplib.report import write_report

    run = Run(load_config("smoke"), tmp_path / "run")
    paths = write_report(run)
    text = open(paths["markdown"]).read()
    assert text.count("has not finished in this run") == 4 and "| " not in text
    assert "**Data:** the embedded procedural phantom" in text and "**Resolution:** `data.resolution` = 64 (paper: 256)" in text
    assert "<table" not in open(paths["html"]).read()


def test_report_differences_follow_the_configuration(tmp_path):
    from polyplib.report import differences

    paper = " ".join(differences(Run(load_config("paper"), tmp_path / "run")))
    smoke = " ".join(differences(Run(load_config("smoke"), tmp_path / "smoke")))
    assert "phantom" not in paper and "Resolution" not in paper and "DDPM training" not in paper
    assert "phantom" in smoke and "**Resolution:**" in smoke and "**DDPM training:**" in smoke
    assert "**Test images:**" in paper and "**Test images:**" in smoke       # no run can equal the unseeded draw

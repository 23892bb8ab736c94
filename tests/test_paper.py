"""The paper profile is the authors' method: its resolved configuration equals Tables A.1-A.3."""
import pytest

from polyplib import paper
from polyplib.config import load_config


def test_paper_profile_equals_tables_a1_a2_value_for_value():
    cfg = load_config("paper")
    assert paper.differences(cfg) == []
    for key, fact in paper.SETTINGS.items():
        assert cfg.section(key) == fact.value, key


@pytest.mark.parametrize("override,key", [
    ("ddpm.attention_resolutions=[16]", "ddpm.attention_resolutions"),
    ("ddpm.variance=fixed_small", "ddpm.variance"),
    ("ddpm.resblock_updown=false", "ddpm.resblock_updown"),
    ("ddpm.scale_shift_norm=false", "ddpm.scale_shift_norm"),
    ("sampling.start=sdedit", "sampling.start"),
    ("sampling.jump_n_sample=3", "sampling.jump_n_sample"),
    ("sampling.style.keep_context=true", "sampling.style.keep_context"),
    ("sampling.style.skip_steps=40", "sampling.style.skip_steps"),
    ("sampling.style.lambda_zecon=0", "sampling.style.lambda_zecon"),
    ("sampling.style.dino_model=vit_small_patch16_224.dino", "sampling.style.dino_model"),
])
def test_a_changed_setting_is_named_as_a_difference(override, key):
    found = paper.differences(load_config("paper", [override]))
    assert [d[0] for d in found] == [key]
    assert found[0][2] == paper.SETTINGS[key].value and found[0][3]      # the paper's value and its source


def test_the_code_reproduces_the_authors_call_counts():
    from polyplib.sampling.repaint import count_calls, repaint_schedule

    s = load_config("paper").sampling
    calls = count_calls(repaint_schedule(s.steps, s.jump_length, s.jump_n_sample, s.start, s.skip_steps))
    assert calls == (paper.REPAINT_CALLS_PER_PAIR.value, paper.REPAINT_RENOISE_STEPS_PER_PAIR.value)


def test_smoke_runs_the_authors_path_and_the_course_names_where_it_leaves_it():
    """Smoke exercises the authors' learned sigma and noise start; the course (a 900-step model that cannot
    train its variance head, #18) uses a fixed variance and the SDEdit start, and its report says so."""
    cfg = load_config("smoke")
    assert cfg.ddpm.variance == "learned_range" and cfg.sampling.start == "noise"
    cfg = load_config("course")
    assert cfg.ddpm.variance == "fixed_small" and cfg.sampling.start == "sdedit"
    lines = _lines("course")
    assert lines["Variance"].status == "differs" and "fixed posterior variance" in lines["Variance"].text
    assert lines["RePaint start"].status == "differs" and "sampling.skip_steps" in lines["RePaint start"].text
    assert lines["DDPM training"].status == "differs" and "ddpm.learning_rate" in lines["DDPM training"].text


def _lines(profile, overrides=(), ctx=None):
    from polyplib.differences import compare

    return {line.topic: line for line in compare(load_config(profile, list(overrides)), ctx)}


WEIGHTS = ["sampling.style.vgg_weights=/w/vgg19.pth", "sampling.style.dino_weights=/w/dino.pth"]


def test_the_paper_profile_differs_only_where_no_setting_can_equal_the_authors():
    """What remains with every input the authors had: the unseeded test draw and one run per configuration."""
    lines = _lines("paper", WEIGHTS + ["gan.singan_published=/data/singan-seg"])
    assert sorted(t for t, line in lines.items() if line.status == "differs") == ["Segmentation runs", "Test images"]
    lines = _lines("paper")                                     # as shipped: no feature weights, no published set
    assert sorted(t for t, line in lines.items() if line.status == "differs") == [
        "Segmentation runs", "SinGAN-Seg", "Styling", "Test images"]
    assert "osf.io/xrgz8" in lines["SinGAN-Seg"].text and "sampling.style.vgg_weights" in lines["Styling"].text


def test_every_paper_setting_is_stated_once_with_the_value_paper_py_holds():
    """No false fact: each setting's line quotes the paper's value from paper.py, and nothing else about it."""
    from polyplib.differences import _show

    text = "\n".join(line.text for line in _lines("paper", WEIGHTS).values())
    for key, fact in paper.SETTINGS.items():
        if key.startswith(("sampling.style.", "clustering.")) or key == "sampling.skip_steps":
            continue                                     # stated in words (Table A.3 summarised, the assignment)
        assert text.count(f"`{key}` = ") == 1 and f"`{key}` = {_show(fact.value)}" in text, key
    assert "960 UNet calls and 760 re-noising steps" in text
    assert "140,000" not in text and "128-512" not in text


@pytest.mark.parametrize("override,topic", [
    ("data.source=phantom", "Data"), ("data.resolution=128", "Resolution"), ("data.split.n_test=100", "Split"),
    ("data.split.kind=random", "Split"), ("clustering.k=10", "Clusters"), ("clustering.features=inception", "Clusters"),
    ("ddpm.layers_per_block=1", "UNet"), ("ddpm.attention_resolutions=[16]", "UNet"),
    ("ddpm.variance=fixed_small", "Variance"), ("ddpm.num_train_timesteps=250", "Noise schedule"),
    ("ddpm.max_steps=1000", "DDPM training"), ("ddpm.snr_gamma=5", "DDPM training"), ("ddpm.ema_decay=0.999", "EMA"), ("ddpm.mixed_precision=bf16", "Precision"),
    ("sampling.start=sdedit", "RePaint start"), ("sampling.jump_n_sample=3", "RePaint schedule"),
    ("sampling.dilation_px=10", "Inpainted region"), ("sampling.style.lambda_vgg=0", "Styling"),
    ("sampling.style.guided=false", "Styling"), ("metrics.fid_resize=legacy-tf", "FID protocol"),
    ("metrics.fid_sets=1", "FID sets"), ("gan.singan_published=null", "SinGAN-Seg"),
    ("segmentation.encoder=resnet34", "Segmentation model"), ("segmentation.epochs=10", "Segmentation training"),
    ("segmentation.augmentation=[control]", "Segmentation data"),
    ("segmentation.patience=5", "Segmentation training"),
    ("segmentation.synthetic_validation=real", "Synthetic-only validation"),
    ("segmentation.synthetic_filter=0.5", "Use of synthetic pairs"),
    ("segmentation.synthetic_schedule=[mixed,pretrain]", "Use of synthetic pairs"),
    ("segmentation.synthetic_weight=0.5", "Use of synthetic pairs"),
])
def test_changing_a_setting_changes_its_line_and_only_its_line(override, topic):
    base = WEIGHTS + ["gan.singan_published=/data/singan-seg"]
    before, after = _lines("paper", base), _lines("paper", base + [override])
    assert before[topic].status == "equal" and after[topic].status == "differs", after[topic]
    key = override.split("=")[0]
    if key in paper.SETTINGS and topic not in ("Data", "Clusters") and key != "sampling.style.guided":  # in words
        assert f"`{key}`" in after[topic].text and "paper:" in after[topic].text
    also = {"sampling.start=sdedit": {"RePaint schedule"}}.get(override, set())   # fewer UNet calls per pair
    assert {t for t in before if before[t] != after[t]} == {topic} | also


def test_the_paper_split_states_the_training_images_it_used_not_n_train():
    """The paper split reads the shipped list of 348 images, whatever `data.split.n_train` says (#31)."""
    lines = _lines("paper", ["data.split.n_train=300", "data.split.n_test=150", "metrics.fid_sets=1"])
    assert "the paper's 348 named training images" in lines["Split"].text
    assert "`data.split.n_train` = 300" not in lines["Split"].text and "`data.split.n_test` = 150" in lines["Split"].text
    assert "(348 here)" in lines["FID sets"].text
    assert _lines("paper", ["data.split.n_train=300"])["Split"].status == "equal"
    random = _lines("paper", ["data.split.kind=random", "data.split.n_train=300"])["Split"].text
    assert "`data.split.n_train` = 300 (paper: 348)" in random


def test_patience_and_the_validation_choice_say_what_they_do():
    train = _lines("paper", ["segmentation.patience=4", "segmentation.epochs=40"])["Segmentation training"]
    assert "`segmentation.patience` = 4 (paper: None)" in train.text and "4 epoch(s)" in train.text
    assert "after 40 epochs" in train.text and "still improving" in train.text
    chosen = _lines("paper", ["segmentation.synthetic_validation=real"])["Synthetic-only validation"]
    assert chosen.status == "differs" and "best IoU on the real validation images" in chosen.text
    assert "`segmentation.synthetic_validation` = real (paper: synthetic)" in chosen.text
    assert paper.SYNTHETIC_VALIDATION.value == load_config("paper").segmentation.synthetic_validation == "synthetic"


def test_seeds_and_singan_sources_change_their_lines():
    from polyplib.differences import Context

    assert "seeds [0]" in _lines("paper", ["segmentation.seeds=[0]"])["Segmentation runs"].text
    line = _lines("paper", [], Context(singan_sources=7))["SinGAN-Seg"]
    assert "trained here on 7 source image(s)" in line.text and "1,000" in line.text


def test_the_smoke_report_names_at_least_14_differences(tmp_path):
    from polyplib.report import comparison, render_markdown
    from polyplib.runs import open_run

    run = open_run("smoke", [], tmp_path / "smoke")
    groups = comparison(run)
    assert len(groups["differs"]) >= 14 and len(groups["equal"]) >= 3
    md = render_markdown(run, [])
    assert f"## Differences from the paper ({len(groups['differs'])})" in md and "## Equal to the paper" in md


def test_the_report_says_whether_styled_diff_is_the_authors_method_differs_or_is_absent(tmp_path):
    import json

    from polyplib.differences import Context, styling
    from polyplib.runs import open_run

    line = styling(load_config("paper", WEIGHTS), Context())
    assert line.status == "equal" and f"all {len(paper.STYLE)} settings equal to Table A.3" in line.text
    line = styling(load_config("paper", WEIGHTS + ["sampling.style.keep_context=true"]), Context())
    assert "`sampling.style.keep_context` = True (paper: False)" in line.text
    run = open_run("paper", WEIGHTS, tmp_path / "c")          # weights given, but stage 03 reported the set absent
    reason = "a DINO weights file did not match vit_base_patch8_224.dino"
    run.path("synthetic").mkdir(parents=True)
    run.path("synthetic", "summary.json").write_text(json.dumps(
        {"methods": [], "absent": [{"method": "styled-diff", "reason": reason}]}))
    line = styling(run.cfg, Context.of(run))
    assert "Styled-Diff absent" in line.text and reason in line.text and "Nothing is reported under its name" in line.text


def test_no_paper_number_is_written_outside_paper_py():
    """The distinctive values of the paper's tables and its training length live in polyplib/paper.py only."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    values = {f"{v:.2f}" for f in paper.FID_PER_SET.values() for v in f.value}
    values |= {f"{paper.MSSSIM['real'].value:.4f}"}
    values |= {f"{v:.3f}" for f in paper.IOU_SYNTHETIC_ONLY.values() for v in f.value.values()}
    values |= {f"{f.value:.3f}" for f in paper.IOU_REAL_PLUS.values()} | {f"{v:.3f}" for f in paper.IOU_SMALL.values()
                                                                  for v in f.value}
    values |= {f"{paper.REVIEW_KAPPA.value:.3f}", "110_000", "110000", "118.4"}
    pattern = re.compile(r"(?<![\d.])(" + "|".join(re.escape(v) for v in sorted(values)) + r")(?![\d])")
    files = [p for p in (root / "polyplib").rglob("*.py") if p.name != "paper.py"]
    files += [root / "run_all.py", *(root / "notebooks").glob("*.ipynb"), *(root / "polyplib" / "profiles").glob("*.yaml")]
    stray = [f"{p.relative_to(root)}: {m.group(0)}" for p in files for m in pattern.finditer(p.read_text())]
    assert not stray, stray


def test_a_diffusion_set_of_another_method_gets_no_paper_value():
    """Variance and RePaint start make the method; scale does not (smoke keeps the paper's numbers beside it)."""
    from pathlib import Path

    from polyplib.metrics.stage import SetInfo

    assert paper.method_departures(load_config("smoke")) == ()
    assert paper.method_departures(load_config("smoke", ["sampling.start=sdedit"])) == ("sampling.start",)
    departures = paper.method_departures(load_config("course"))
    assert departures == ("ddpm.variance", "sampling.start")
    for method in ("diff", "mkl-diff", "styled-diff", "full-diff"):
        assert paper.like_for_like(method) == method and paper.like_for_like(method, None, departures) is None
        assert SetInfo(method, Path("x"), departures=departures).paper_key is None
    assert paper.like_for_like("gan", None, departures) == "gan"
    assert paper.fid(SetInfo("diff", Path("x")).paper_key) == paper.fid("diff") > 0
    assert paper.iou_synthetic_only(paper.like_for_like("diff", None, departures), 1) is None
    assert "Paper values withheld" not in _lines("smoke")
    line = _lines("course")["Paper values withheld"]
    assert line.status == "note" and "`sampling.start` = sdedit" in line.text


def test_a_faster_inpainting_sampler_is_another_method_and_the_report_counts_its_calls():
    cfg = load_config("smoke", ["sampling.sampler=dpm++", "sampling.steps=20"])
    assert paper.method_departures(cfg) == ("sampling.sampler",)
    assert paper.like_for_like("diff", None, paper.method_departures(cfg)) is None
    line = _lines("smoke", ["sampling.sampler=dpm++", "sampling.steps=20"])["RePaint schedule"]
    assert line.status == "differs" and "`sampling.sampler` = dpm++" in line.text and "20 UNet calls" in line.text
    ddim = _lines("smoke", ["sampling.sampler=repaint-ddim"])["RePaint schedule"]
    assert "`sampling.sampler` = repaint-ddim" in ddim.text
    assert _lines("paper")["RePaint schedule"].status == "equal"


def test_the_gpu_profile_is_the_authors_method_at_another_scale():
    """#28: the `gpu` profile keeps every setting that makes the authors' method (variance and hybrid loss, noise
    schedule, learning rate, RePaint on their jump schedule from pure noise, cluster and Full models, colour
    matching, Styled-Diff), and its report says so; it differs in scale only, and says that too."""
    cfg = load_config("gpu")
    assert paper.method_departures(cfg) == ()
    method = [k for k in paper.SETTINGS if k.startswith(("ddpm.", "sampling.")) and k not in SCALE_KEYS]
    assert [d[0] for d in paper.differences(cfg, {k: paper.SETTINGS[k] for k in method})] == []
    assert cfg.ddpm.train_clusters and cfg.ddpm.train_full and cfg.sampling.also_full
    assert cfg.sampling.style.guided and cfg.sampling.style.colour_match and cfg.run.device == "auto"
    lines = _lines("gpu")
    for topic in ("Variance", "Noise schedule", "RePaint start", "RePaint schedule"):
        assert lines[topic].status == "equal", lines[topic]
    assert "960 UNet calls" in lines["RePaint schedule"].text
    assert "`ddpm.max_steps` = 1,500 (paper: 110,000)" in lines["DDPM training"].text
    assert "ddpm.learning_rate" not in lines["DDPM training"].text
    assert {t for t, line in lines.items() if line.status == "differs"} >= {"Resolution", "UNet", "DDPM training", "EMA"}
    # gpu-real is gpu on real data, as course-real is the course on it
    real, gpu = load_config("gpu-real").to_dict(), cfg.to_dict()
    changed = {(s, k) for s in real if isinstance(real[s], dict) for k in real[s] if real[s][k] != gpu[s][k]}
    assert changed == {("data", "source"), ("data", "train"), ("segmentation", "synthetic_filter")}


#: settings of scale, not of method: what the `gpu` profile sizes to one GPU
SCALE_KEYS = {"ddpm.block_out_channels", "ddpm.batch_size", "ddpm.max_steps", "ddpm.ema_decay", "ddpm.mixed_precision",
              "sampling.samples_per_image"}

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


def test_smoke_and_course_run_the_learned_sigma_path():
    for profile in ("smoke", "course"):
        cfg = load_config(profile)
        assert cfg.ddpm.variance == "learned_range" and cfg.sampling.start == "noise", profile


def test_the_report_states_model_and_repaint_differences_from_paper_py(tmp_path):
    from polyplib.report import _model_and_sampling_differences
    from polyplib.runs import open_run

    lines = _model_and_sampling_differences(open_run("paper", [], tmp_path / "paper"))
    assert "equal to Table A.1" in lines[0] and "equal to Table A.1" in lines[1]
    assert "pure noise, 960 UNet calls and 760 re-noising steps" in lines[2] and "equal to Table A.2" in lines[2]
    lines = _model_and_sampling_differences(open_run("paper", [
        "ddpm.variance=fixed_small", "sampling.start=sdedit", "ddpm.pretrained=/models/converted"], tmp_path / "ab"))
    assert "converted checkpoints from `/models/converted`" in lines[0] and "not trained in this run" in lines[0]
    assert "`ddpm.variance` = fixed_small (paper: learned_range)" in lines[1]
    assert "forward-noised real pair, 600 UNet calls" in lines[3] and "`sampling.start` = sdedit" in lines[3]


def test_the_report_says_whether_styled_diff_is_the_authors_method_differs_or_is_absent(tmp_path):
    import json

    from polyplib.report import _styling_difference
    from polyplib.runs import open_run

    weights = ["sampling.style.vgg_weights=/w/vgg19.pth", "sampling.style.dino_weights=/w/dino.pth"]
    line = _styling_difference(open_run("paper", weights, tmp_path / "a"))
    assert f"every setting equal to Table A.3 ({len(paper.STYLE)} settings)" in line
    line = _styling_difference(open_run("paper", weights + ["sampling.style.keep_context=true"], tmp_path / "b"))
    assert "`sampling.style.keep_context` = True (paper: False)" in line
    run = open_run("paper", [], tmp_path / "c")                # no weights: stage 03 reports the set absent
    reason = "needs ImageNet VGG-19 and DINO ViT weights"
    run.path("synthetic").mkdir(parents=True)
    run.path("synthetic", "summary.json").write_text(json.dumps(
        {"methods": [], "absent": [{"method": "styled-diff", "reason": reason}]}))
    line = _styling_difference(run)
    assert "Styled-Diff absent" in line and reason in line and "Nothing is reported under its name" in line
    assert "not a paper method" in _styling_difference(open_run("smoke", [], tmp_path / "d"))

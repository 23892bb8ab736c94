"""Profiles, overrides and the errors a user sees before any work starts."""
import pytest

from polyplib.config import config_from_dict, load_config, parse_override, profiles
from polyplib.errors import ConfigError
from polyplib.stages import STAGES, stage_keys


def test_shipped_profiles_load_and_differ():
    assert set(profiles()) >= {"smoke", "course", "paper"}
    smoke, course, paper = (load_config(p) for p in ("smoke", "course", "paper"))
    assert smoke.data.source == course.data.source == "phantom"
    assert paper.data.source == "real" and paper.data.resolution == 256 and paper.data.split.kind == "paper"
    assert smoke.data.resolution <= course.data.resolution < paper.data.resolution
    assert smoke.data.split.n_train < course.data.split.n_train and smoke.ddpm.max_steps < course.ddpm.max_steps
    assert smoke.profile == "smoke"


def test_override_values_are_typed():
    cfg = load_config("smoke", ["data.resolution=48", "data.resize=pad", "run.progress=false",
                                "data.datasets={x: X}"])
    assert cfg.data.resolution == 48 and cfg.data.resize == "pad" and cfg.run.progress is False
    assert cfg.data.datasets == {"x": "X"}
    assert parse_override("a.b=1.5") == ("a.b", 1.5)


@pytest.mark.parametrize("profile, overrides, must_name", [
    ("nope", [], ["nope", "smoke", "course", "paper"]),
    ("smoke", ["data.resolutoin=3"], ["data.resolutoin", "resolution"]),
    ("smoke", ["dta.resolution=3"], ["dta", "data"]),
    ("smoke", ["data.resolution=abc"], ["data.resolution", "abc"]),
    ("smoke", ["data.resolution=8"], ["data.resolution", "16"]),
    ("smoke", ["data.source=web"], ["data.source", "'phantom'", "'real'"]),
    ("smoke", ["data.split.kind=loo"], ["data.split.kind", "'random'"]),
    ("smoke", ["data.resolution"], ["data.resolution", "key=value"]),
    ("smoke", ["data.resolution.x=1"], ["data.resolution.x"]),
    ("smoke", ["segmentation.patience=0"], ["segmentation.patience", "greater than or equal to 1"]),
    ("smoke", ["segmentation.patience=some"], ["segmentation.patience", "some", "int | None"]),
    ("smoke", ["segmentation.synthetic_validation=test"], ["segmentation.synthetic_validation", "'synthetic'", "'real'"]),
])
def test_bad_configuration_names_the_key_and_allowed_values(profile, overrides, must_name):
    with pytest.raises(ConfigError) as err:
        load_config(profile, overrides)
    for text in must_name:
        assert text in str(err.value)


def test_profile_file_with_unknown_key_and_bad_yaml(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("data:\n  resolution: 64\n  colour: red\n")
    with pytest.raises(ConfigError, match="data.colour"):
        load_config(str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml.*YAML"):
        load_config(str(broken))
    good = tmp_path / "mine2.yaml"
    good.write_text("data:\n  source: phantom\n  resolution: 40\n")
    cfg = load_config(str(good))
    assert cfg.profile == "mine2" and cfg.data.resolution == 40


def test_saved_config_round_trips():
    cfg = load_config("course", ["data.split.seed=7"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and again.data.split.seed == 7


def test_stage_keys_change_only_with_what_a_stage_depends_on():
    base = stage_keys(load_config("smoke"))
    assert list(base) == [s.id for s in STAGES]
    assert stage_keys(load_config("smoke", ["run.workers=1", "run.progress=false"])) == base
    changed = stage_keys(load_config("smoke", ["data.split.seed=3"]))
    assert all(changed[k] != base[k] for k in base)  # data feeds every later stage


def test_course_real_is_the_course_on_real_data_and_the_quality_gate_beside_the_papers_way():
    real, course = load_config("course-real").to_dict(), load_config("course").to_dict()
    changed = {(s, k) for s in real if isinstance(real[s], dict) for k in real[s] if real[s][k] != course[s][k]}
    assert changed == {("data", "source"), ("data", "train"), ("segmentation", "synthetic_filter")}
    assert real["profile"] == "course-real"
    assert real["data"]["source"] == "real" and real["data"]["train"] == "kvasir-seg"
    # the paper's way first (every table but Table 4 uses it), the gate beside it in Table 4
    assert real["segmentation"]["synthetic_filter"] == [None, 0.5]


def test_a_profile_extends_another_and_a_cycle_is_named(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: course\nddpm:\n  max_steps: 50\n")
    cfg = load_config(str(mine))
    assert cfg.profile == "mine" and cfg.ddpm.max_steps == 50 and cfg.ddpm.batch_size == load_config("course").ddpm.batch_size
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"))


def test_min_images_default_profiles_and_validation():
    """metrics.min_images: 100 by default and in every shipped profile (smoke keeps it, so that its small sets
    show the refusal); below 2 (the least any FID needs) or not a number is an error naming the key."""
    for name in ("smoke", "course", "course-real", "paper"):
        assert load_config(name).metrics.min_images == 100, name
    assert load_config("smoke", ["metrics.min_images=8"]).metrics.min_images == 8
    for bad, text in (("1", "greater than or equal to 2"), ("many", "many")):
        with pytest.raises(ConfigError) as err:
            load_config("smoke", [f"metrics.min_images={bad}"])
        assert "metrics.min_images" in str(err.value) and text in str(err.value)


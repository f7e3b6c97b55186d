from pathlib import Path

import pytest
import yaml

from cattle_yolo.config import ConfigError, TrainConfig, parse_overrides


def test_defaults_are_the_hand_fixed_values() -> None:
    cfg = TrainConfig()
    expected = {
        "lr": 1e-3,
        "weight_decay": 5e-4,
        "batch": 4,
        "accumulate": 4,
        "warmup_epochs": 10,
        "warmup_start_fraction": 0.5,
        "iou_start": 0.25,
        "iou_end": 0.45,
        "iou_ramp_epochs": 30,
        "score_threshold": 0.25,
        "focal_gamma": 2.0,
        "box_loss_weight": 7.5,
        "cls_loss_weight": 0.5,
        "wh_clamp": 4.0,
        "imgsz": 384,
        "epochs": 150,
    }
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(lr=3e-4, epochs=7, data="some/data.yaml", box_loss="ciou")
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml") == cfg


def test_file_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("lr: 0.002\nepochs: 5\n")
    cfg = TrainConfig.load(tmp_path / "c.yaml", ["epochs=9", "box_loss_weight=3"])
    assert (cfg.lr, cfg.epochs, cfg.box_loss_weight) == (0.002, 9, 3.0)
    assert isinstance(cfg.box_loss_weight, float)


def test_search_export_with_config_section_loads(tmp_path: Path) -> None:
    (tmp_path / "best.yaml").write_text(yaml.safe_dump({"config": {"lr": 0.0005}, "metric": 0.3}))
    assert TrainConfig.load(tmp_path / "best.yaml").lr == 0.0005


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("lrr: 0.1\n", "unknown key 'lrr' (did you mean 'lr'?)"),
        ("epochs: ten\n", "key 'epochs' must be int"),
        ("epochs: 2.5\n", "key 'epochs' must be int"),
        ("lr: -1\n", "key 'lr' = -1.0 is out of range"),
        ("imgsz: 100\n", "must be a multiple of 32"),
        ("iou_start: 0.5\niou_end: 0.3\n", "must be >= iou_start"),
        ("box_loss: l1\n", "one of 'giou', 'ciou'"),
        ("", "file is empty"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        TrainConfig.load(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_bad_override() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        TrainConfig.load(None, ["lr"])
    with pytest.raises(ConfigError, match="did you mean 'focal_gamma'"):
        TrainConfig.load(None, ["focal_gama=2"])


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "replacement"), [("obj_loss_weight", "cls_loss_weight"), ("focal_alpha", "focal_gamma")]
)
def test_retired_keys_name_their_replacement(tmp_path: Path, key: str, replacement: str) -> None:
    (tmp_path / "old.yaml").write_text(f"{key}: 0.5\n")
    with pytest.raises(ConfigError, match=f"{key}.*retired.*{replacement}") as err:
        TrainConfig.load(tmp_path / "old.yaml")
    assert str(tmp_path / "old.yaml") in str(err.value)
    with pytest.raises(ConfigError, match="retired"):
        TrainConfig.load(overrides=[f"{key}=0.5"])


@pytest.mark.parametrize("text", ["3e-3", "3E-3", "0.003", " 3e-3 ", "3.0e-3", ".003"])
def test_floats_in_every_form_float_takes(text: str, tmp_path: Path) -> None:
    # YAML 1.1 reads 3e-3 (no dot) as a string; a config file, key=value and --set all take it.
    assert TrainConfig.from_dict({"lr": text}).lr == pytest.approx(0.003)
    assert parse_overrides([f"lr={text}"])["lr"] == pytest.approx(0.003)
    path = tmp_path / "c.yaml"
    path.write_text(f"lr: {text}\n")
    assert TrainConfig.load(path).lr == pytest.approx(0.003)
    with pytest.raises(ConfigError, match="must be float, got 'fast'"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(ConfigError, match="out of range"):
        TrainConfig.from_dict({"lr": "inf"})


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("lr_typo", "lr"),
        ("learning_rate", "lr"),
        ("box_weight", "box_loss_weight"),
        ("img_size", "imgsz"),
        ("batch_size", "batch"),
        ("imgsize", "imgsz"),
    ],
)
def test_unknown_keys_name_the_closest_by_prefix_alias_and_spelling(key: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown key '{key}' \\(did you mean '{hint}'\\?\\)"):
        TrainConfig.from_dict({key: 1})


@pytest.mark.parametrize(
    ("value", "expected"), [(True, "auto"), (False, "off"), ("bf16", "bf16"), ("auto", "auto")]
)
def test_amp_takes_the_precision_names_and_the_old_bools(value: bool | str, expected: str) -> None:
    assert TrainConfig.load(None, {"amp": value}).amp == expected
    assert TrainConfig(amp=value).amp == expected  # type: ignore[arg-type]  # old bools too
    assert TrainConfig().replace(amp=value).amp == expected


def test_amp_refuses_other_values() -> None:
    with pytest.raises(ConfigError, match="'amp'"):
        TrainConfig.load(None, {"amp": "fp8"})
    with pytest.raises(ConfigError, match="'amp'"):
        TrainConfig(amp="half")  # type: ignore[arg-type]  # the fault under test

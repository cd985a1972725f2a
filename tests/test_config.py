"""Config loading, overrides, validation messages and the resume architecture check."""
import os

import pytest
import yaml

from estimator_gan import config as config_lib
from estimator_gan.config import ConfigError, load_config

CONFIG_DIR = config_lib.SHIPPED_DIR


def test_defaults_are_the_offline_default_job():
    config = load_config()
    assert config.data.source == "digits"
    assert config.model.architecture == "dcgan"
    assert config.loss.name == "non_saturating"


@pytest.mark.parametrize("name", config_lib.shipped_configs())
def test_shipped_configs_load(name):
    """Loading means: every key is known and valid, the file sets what it says it sets, and the
    same config comes back by name, by path, and after a round trip through config.yaml."""
    path = os.path.join(CONFIG_DIR, name + ".yaml")
    raw = yaml.safe_load(open(path))
    config = load_config(path)
    assert load_config(name) == config == load_config(name + ".yaml")
    assert config_lib.config_from_dict(config.to_dict()) == config
    for section, values in raw.items():
        for key, value in values.items():
            loaded = getattr(getattr(config, section), key)
            if isinstance(value, dict):
                for sub, sub_value in value.items():
                    assert getattr(loaded, sub) == sub_value, f"{section}.{key}.{sub}"
            else:
                assert loaded == value, f"{section}.{key}"
    assert config.data.source == raw["data"]["source"]
    assert config.train.max_steps == raw["train"]["max_steps"]


def test_config_by_name_path_and_mistakes(tmp_path):
    assert load_config("mixture_ring").data.source == "mixture2d"
    with pytest.raises(ConfigError, match=r"config file not found: nope \(shipped configs: [a-z0-9_, ]*digits_dcgan, "):
        load_config("nope")
    with pytest.raises(ConfigError, match=f"config path {tmp_path} is a directory, not a YAML file"):
        load_config(str(tmp_path))


def test_dotted_overrides_parse_yaml_values():
    config = load_config(None, ["train.max_steps=7", "train.generator_optimizer.learning_rate=1e-3",
                                "model.generator.hidden_units=[4, 5]", "data.cache=false"])
    assert config.train.max_steps == 7
    assert config.train.generator_optimizer.learning_rate == pytest.approx(1e-3)
    assert config.model.generator.hidden_units == [4, 5]
    assert config.data.cache is False


@pytest.mark.parametrize("overrides, fragment", [
    (["train.max_stepz=3"], "train.max_stepz: unknown key"),
    (["train.max_steps=abc"], "train.max_steps:"),
    (["data.batch_size=0"], "data.batch_size:"),
    (["train.d_steps=0"], "train.d_steps:"),
    (["train.generator_optimizer.learning_rate=-1"], "train.generator_optimizer.learning_rate:"),
    (["loss.name=fancy"], "unknown loss 'fancy'"),
    (["data.mixture.kind=grid", "data.mixture.modes=8"], "square number of modes"),
    (["train.max_steps"], "expected key=value"),
    (["data.batch_size=true"], "data.batch_size: expected a number, not true/false"),
    (["model.generator.hidden_units=[4, false]"], "model.generator.hidden_units: expected a number"),
    (["data.source=pictures"], "unknown data source 'pictures'; choose one of digits, mixture2d"),
])
def test_bad_values_give_one_line_errors_naming_the_field(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_unknown_key_in_a_file_and_missing_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sauce: digits\n")
    with pytest.raises(ConfigError, match=r"data.sauce: unknown key"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))


def test_saved_config_round_trips(tmp_path):
    config = load_config(None, ["train.max_steps=11", "model.sample_shape=[16,16,1]"])
    path = config_lib.save_config(config, str(tmp_path))
    assert yaml.safe_load(open(path))["train"]["max_steps"] == 11
    assert config_lib.load_model_dir_config(str(tmp_path)) == config


def test_architecture_differences_name_the_field():
    a = load_config(None, ["model.z_dim=8"])
    b = load_config(None, ["model.z_dim=16", "train.max_steps=9"])
    assert config_lib.architecture_differences(a, b) == [
        "model.z_dim: 8 in the checkpoint's config, 16 now"]
    assert config_lib.architecture_differences(a, a) == []


def test_digits_config_file_is_the_default_job():
    # The file spells out the widths the defaults leave to the architecture (null: dcgan's 64).
    assert config_lib.resolve(load_config(os.path.join(CONFIG_DIR, "digits_dcgan.yaml"))) == \
        config_lib.resolve(load_config())

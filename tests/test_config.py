"""Config: YAML + overrides, and errors that name the offending key."""

import pytest

from alpagasus_ray.core.config import ConfigError, load_config, parse_override
from alpagasus_ray.filter.config import FilterJobConfig

BASE = """
input: {uri: data.jsonl}
output: {uri: out}
judge: {model: some/model}
"""


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(BASE)
    return path


def test_defaults_are_the_papers(cfg_file):
    cfg = load_config(cfg_file, model=FilterJobConfig)
    assert isinstance(cfg, FilterJobConfig)
    assert cfg.filter.threshold == 4.5
    assert cfg.judge.rubric == "accuracy" and cfg.judge.rubric_file is None
    assert cfg.judge.mode == "logprobs"
    assert cfg.judge.layout == "prefix"
    assert cfg.judge.max_new_tokens == 256


def test_overrides_are_typed_from_yaml(cfg_file):
    cfg = load_config(
        cfg_file,
        [
            "filter.threshold=4.0",
            "judge.mode=generate",
            "judge.replicas=[2, 8]",
            "input.columns.input=context",
            "input.columns.output=response",
            "storage.endpoint_url=http://127.0.0.1:9000",
        ],
        model=FilterJobConfig,
    )
    assert cfg.filter.threshold == 4.0
    assert cfg.judge.mode == "generate"
    assert cfg.judge.replicas == (2, 8)
    assert cfg.input.columns.input == "context"
    assert cfg.storage.s3_options()["endpoint_url"] == "http://127.0.0.1:9000"


def test_unknown_key_is_named(cfg_file):
    with pytest.raises(ConfigError, match=r"judge\.modle"):
        load_config(cfg_file, ["judge.modle=x"], model=FilterJobConfig)


def test_bad_value_is_named(cfg_file):
    with pytest.raises(ConfigError, match=r"filter\.threshold"):
        load_config(cfg_file, ["filter.threshold=7"], model=FilterJobConfig)
    with pytest.raises(ConfigError, match=r"judge\.mode"):
        load_config(cfg_file, ["judge.mode=vibes"], model=FilterJobConfig)
    with pytest.raises(ConfigError, match=r"judge\.replicas"):
        load_config(cfg_file, ["judge.replicas=[4, 2]"], model=FilterJobConfig)
    with pytest.raises(ConfigError, match=r"stop_after_score_line is for mode generate"):
        load_config(
            cfg_file, ["judge.stop_after_score_line=true"], model=FilterJobConfig
        )  # logprobs: one token


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf"])
@pytest.mark.parametrize("key", ["filter.threshold", "judge.min_score_mass"])
def test_a_number_that_is_not_one_is_refused_as_such(cfg_file, key, value):
    """NaN passes no bound check silently (`nan <= 5` is False, and so is `nan >= 0`): it
    is refused as what it is, naming the key."""
    with pytest.raises(ConfigError) as e:
        load_config(cfg_file, [f"{key}={value}"], model=FilterJobConfig)
    assert str(e.value).endswith(f"{key}: Input should be a finite number"), e.value


def test_missing_required_key_is_named(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: {uri: x}\noutput: {uri: y}\n")
    with pytest.raises(ConfigError, match=r"judge"):
        load_config(path, model=FilterJobConfig)


def test_malformed_override_and_files(tmp_path, cfg_file):
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("judge.model")
    with pytest.raises(ConfigError, match="not a section"):
        load_config(cfg_file, ["judge.model.name=x"], model=FilterJobConfig)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", model=FilterJobConfig)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad, model=FilterJobConfig)


def test_secrets_never_appear_in_the_redacted_config(cfg_file):
    cfg = load_config(
        cfg_file,
        ["storage.access_key_id=AKIAEXAMPLE", "storage.secret_access_key=very-secret-value"],
        model=FilterJobConfig,
    )
    dumped = str(cfg.redacted())
    assert "very-secret-value" not in dumped and "AKIAEXAMPLE" not in dumped
    assert cfg.storage.s3_options()["secret"] == "very-secret-value"
    assert "very-secret-value" not in repr(cfg)


@pytest.mark.parametrize(
    ("sets", "line"),
    [
        (["filter.threshold=7"],
         "invalid configuration (filter.threshold): filter.threshold 7 is outside judge.scale "
         "[0, 5]"),
        (["judge.engine=openai"],
         "invalid configuration (judge.engine): judge.engine=openai needs judge.api.base_url"),
    ],
)  # fmt: skip
def test_a_check_across_keys_names_the_key_it_is_about(sets, line):
    """Not `(<root>)` or `(judge)` and pydantic's "Value error, ": the key to change."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["input.uri=x", "output.uri=y", "judge.model=m", *sets],
                    model=FilterJobConfig)  # fmt: skip
    assert str(err.value) == line


def test_a_config_error_is_one_line_naming_each_key():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["input.uri=x", "output.uri=y", "judge.model=m", "judge.mode=logprob",
                           "filter.keep_fraction=7"], model=FilterJobConfig)  # fmt: skip
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("invalid configuration (judge.mode, filter.keep_fraction): ")
    assert "judge.mode: Input should be 'logprobs' or 'generate'" in message

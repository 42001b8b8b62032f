"""The typed config: file formats, precedence, and one-line errors naming the field."""

import pytest

from mmrag.config import ConfigError, MmragConfig, load_config


def test_defaults_are_the_original_design_settings():
    cfg = load_config()
    assert cfg.chunking.strategy == "paragraph" and cfg.chunking.min_chars == 30
    assert cfg.chunking.window_chars == 256 and cfg.chunking.window_overlap == 0.25
    assert cfg.embed.name == "minilm"
    assert cfg.fetch.respect_robots is True


def test_yaml_and_toml_files_and_cli_override(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("store:\n  db_uri: /tmp/a\nembed:\n  batch_size: 8\n")
    toml_file = tmp_path / "c.toml"
    toml_file.write_text('[store]\ndb_uri = "/tmp/b"\n[chunking]\nstrategy = "window"\n')
    assert load_config(yaml_file).store.db_uri == "/tmp/a"
    assert load_config(yaml_file).embed.batch_size == 8
    cfg = load_config(toml_file, {"store.db_uri": "/tmp/cli", "embed.batch_size": None})
    assert cfg.store.db_uri == "/tmp/cli"  # CLI beats file
    assert cfg.chunking.strategy == "window"  # file beats default
    assert load_config(yaml_file, {"embed.batch_size": None}).embed.batch_size == 8  # None means "flag not given"


def test_env_vars_sit_below_file_and_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("MMRAG_FETCH__READ_TIMEOUT_S", "3.5")
    monkeypatch.setenv("MMRAG_EMBED__BATCH_SIZE", "16")
    f = tmp_path / "c.yaml"
    f.write_text("embed:\n  batch_size: 4\n")
    cfg = load_config(f)
    assert cfg.fetch.read_timeout_s == 3.5
    assert cfg.embed.batch_size == 4


@pytest.mark.parametrize(
    "content, field",
    [
        ("embed:\n  batch_size: -1\n", "embed.batch_size"),
        ("chunking:\n  strategy: sentences\n", "chunking.strategy"),
        ("fetch:\n  timeout: 3\n", "fetch.timeout"),
        ("unknown_section: 1\n", "unknown_section"),
    ],
)
def test_invalid_values_give_one_line_naming_the_field(tmp_path, content, field):
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    message = str(info.value)
    assert field in message and "\n" not in message


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[store\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    other = tmp_path / "c.json"
    other.write_text("{}")
    with pytest.raises(ConfigError, match=".yaml"):
        load_config(other)


def test_chunking_key_names_tables():
    assert MmragConfig().chunking.key() == "paragraph-m48-ctx"  # the defaults: merged short paragraphs, with context
    plain = {"chunking.context": "none", "chunking.merge_min_tokens": 0}
    assert load_config(None, plain).chunking.key() == "paragraph"
    assert load_config(None, {**plain, "chunking.strategy": "window"}).chunking.key() == "window-256-25"
    assert load_config(None, {**plain, "chunking.strategy": "tokens", "chunking.max_tokens": 128}).chunking.key() == "tokens-128"
    assert load_config(None, {"chunking.strategy": "tokens", "chunking.max_tokens": 128}).chunking.key() == "tokens-128-ctx"
    assert load_config(None, {"search.preset": "seed"}).chunking.key() == "paragraph"  # the design's chunks

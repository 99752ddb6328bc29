"""Settings: layering (file < environment < overrides), one-line errors, the results hash."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from segpipe.config import SegpipeConfig, config_hash, load_config
from segpipe.errors import ConfigError


def test_defaults():
    cfg = load_config()
    assert isinstance(cfg, SegpipeConfig)
    assert cfg.infer.model == "nuclei" and cfg.ingest.chunk == 1024 and cfg.run.concurrency >= 1


def test_toml_and_yaml_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[ingest]\nchunk = 512\n[infer]\nmodel = "classical"\n[run]\nexclude = ["*/tmp/*"]\n')
    cfg = load_config(toml)
    assert cfg.ingest.chunk == 512 and cfg.infer.model == "classical" and cfg.run.exclude == ["*/tmp/*"]
    yaml = tmp_path / "c.yaml"
    yaml.write_text("infer:\n  batch: 3\ntissue:\n  enabled: false\n")
    cfg = load_config(yaml)
    assert cfg.infer.batch == 3 and cfg.tissue.enabled is False


@pytest.mark.parametrize("text, fragment", [
    ("[infer]\nbacth = 3\n", "unknown key 'infer.bacth'"),
    ("[nope]\nx = 1\n", "unknown key 'nope'"),
    ('[infer]\nbatch = "many"\n', "infer.batch"),
    ("[ingest]\nchunk = 8\n", "ingest.chunk"),
    ("[ingest]\nchunk = 256\nshard = 300\n", "multiple of chunk"),
    ("[run]\nconcurrency = 0\n", "run.concurrency"),
    ("[infer\n", "not valid TOML"),
])
def test_file_errors_are_one_line_naming_file_and_key(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and fragment in msg and "\n" not in msg


def test_unknown_key_lists_valid_ones(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("infer:\n  modle: x\n")
    with pytest.raises(ConfigError, match="valid keys here: model, batch"):
        load_config(path)


def test_missing_or_unknown_format(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "c.ini").write_text("x")
    with pytest.raises(ConfigError, match="unknown config format"):
        load_config(tmp_path / "c.ini")


def test_environment_overrides_file_and_overrides_win(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("[infer]\nbatch = 2\n[run]\nconcurrency = 3\n")
    monkeypatch.setenv("SEGPIPE_INFER__BATCH", "5")
    cfg = load_config(path)
    assert cfg.infer.batch == 5 and cfg.run.concurrency == 3
    cfg = load_config(path, {"infer.batch": 7, "run": {"concurrency": 4}, "run.cluster": None})
    assert cfg.infer.batch == 7 and cfg.run.concurrency == 4 and cfg.run.cluster is None
    monkeypatch.setenv("SEGPIPE_RUN__INCLUDE", '["*.svs"]')
    assert load_config().run.include == ["*.svs"]


def test_environment_errors_name_the_variable(monkeypatch):
    monkeypatch.setenv("SEGPIPE_INFER__BATCH", "lots")
    with pytest.raises(ConfigError, match="SEGPIPE_INFER__BATCH: infer.batch"):
        load_config()


def test_override_errors_name_the_option():
    with pytest.raises(ConfigError, match=r"^option: run.concurrency"):
        load_config(None, {"run.concurrency": -1})
    with pytest.raises(ConfigError, match="unknown key 'infer.nope'"):
        load_config(None, {"infer.nope": 1})


def test_dask_address_env(monkeypatch):
    monkeypatch.setenv("SEGPIPE_DASK_ADDRESS", "tcp://sched:8786")
    assert load_config().run.cluster == "tcp://sched:8786"
    assert load_config(None, {"run.cluster": "tcp://other:1"}).run.cluster == "tcp://other:1"


def test_config_hash_covers_only_result_settings():
    base = config_hash(load_config())
    assert len(base) == 16
    for same in ({"run.concurrency": 9}, {"run.cluster": "tcp://x:1"}, {"infer.batch": 64},
                 {"infer.device": "cpu"}, {"run.retries": 0}, {"infer.model": "classical"}):
        assert config_hash(load_config(None, same)) == base, same
    for other in ({"ingest.chunk": 512}, {"infer.halo": 8}, {"tissue.enabled": False}):
        assert config_hash(load_config(None, other)) != base, other


def test_ingest_spec():
    spec = load_config(None, {"ingest.chunk": 256, "ingest.shard": 512}).ingest_spec()
    assert (spec.chunk, spec.shard, spec.compression) == (256, 512, "zstd")


def test_settings_are_frozen():
    cfg = load_config()
    with pytest.raises(ValidationError):
        cfg.infer.batch = 3  # type: ignore[misc]


def test_example_config_loads_and_lists_every_key():
    import re
    from pathlib import Path

    from segpipe.config import SegpipeConfig

    path = Path(__file__).resolve().parents[1] / "deploy" / "segpipe.example.toml"
    assert config_hash(load_config(path)) == config_hash(load_config())
    text = path.read_text()
    for section, field in SegpipeConfig.model_fields.items():
        assert f"[{section}]" in text
        for key in field.annotation.model_fields:
            assert re.search(rf"^#? ?{key} =", text, re.M), f"{section}.{key}"

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest

from aggregator.config import Settings, load_settings, parse_duration, parse_size, setting_for_env
from aggregator.errors import ConfigError

from .conftest import REPO, ConfigWriter


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("500ms", 0.5), (45, 45)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "soon", "10x", "-5m", 0, True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"), [("10MB", 10_000_000), ("1MiB", 1_048_576), ("512KB", 512_000), (2048, 2048)]
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_repository_config_is_the_contract() -> None:
    settings = load_settings(REPO / "config" / "aggregator.yaml", environ={})
    assert settings.database_url == "sqlite:///data/aggregator.db"
    assert settings.feeds_file == REPO / "config" / "feeds.yaml"
    assert settings.fetch.interval == timedelta(minutes=30)
    assert settings.fetch.max_bytes == 10_000_000
    assert settings.fetch.allow_private_networks is False
    assert settings.digest.send_at == time(7, 0)
    assert settings.smtp is None  # no smtp: section -> the outbox
    assert settings.feeds


def test_example_config_loads_and_lists_every_key() -> None:
    settings = load_settings(REPO / "config" / "aggregator.example.yaml", environ={})
    assert settings.smtp is not None
    example = (REPO / "config" / "aggregator.example.yaml").read_text()
    for section in ("fetch", "extract", "digest", "smtp", "service"):
        model = type(getattr(settings, section))
        for name, info in model.model_fields.items():
            assert f"{info.alias or name}:" in example, f"{section}.{name} is not documented"
    for name in Settings.model_fields:
        assert f"{name}:" in example, f"{name} is not documented"


def test_embedded_defaults_without_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, environ={})
    assert settings.database_url == "sqlite:///data/aggregator.db"
    assert settings.smtp is None
    assert settings.feeds == ()
    assert settings.source is None


def test_config_path_from_environment(write_config: ConfigWriter) -> None:
    path = write_config(feeds=[{"url": "https://example.org/feed"}])
    settings = load_settings(None, environ={"AGGREGATOR_CONFIG": str(path)})
    assert [f.url for f in settings.feeds] == ["https://example.org/feed"]


def test_environment_overrides(write_config: ConfigWriter) -> None:
    path = write_config()
    settings = load_settings(
        path,
        environ={
            "AGGREGATOR_DATABASE_URL": "postgresql://u@db/agg",
            "AGGREGATOR_SMTP_HOST": "mail.example.net",
            "AGGREGATOR_SMTP_PORT": "2525",
            "AGGREGATOR_SMTP_STARTTLS": "false",
            "AGGREGATOR_FETCH_TIMEOUT": "45s",
            "AGGREGATOR_DIGEST_SEND_AT": "6:30",
            "AGGREGATOR_DIGEST_TO": "a@example.com, b@example.com",
            "AGGREGATOR_DIGEST_FROM": "News <news@example.com>",
            "AGGREGATOR_TEST_POSTGRES_URL": "ignored",
            "AGGREGATOR_NOT_A_SETTING": "ignored",
        },
    )
    assert settings.database_url == "postgresql://u@db/agg"
    assert settings.smtp is not None
    assert (settings.smtp.host, settings.smtp.port, settings.smtp.starttls) == (
        "mail.example.net",
        2525,
        False,
    )
    assert settings.fetch.timeout == timedelta(seconds=45)
    assert settings.digest.send_at == time(6, 30)
    assert settings.digest.to == ["a@example.com", "b@example.com"]
    assert settings.digest.from_ == "News <news@example.com>"


def test_setting_for_env_names() -> None:
    assert setting_for_env("AGGREGATOR_SMTP_HOST") == ("smtp", "host")
    assert setting_for_env("AGGREGATOR_FETCH_ALLOW_PRIVATE_NETWORKS") == (
        "fetch",
        "allow_private_networks",
    )
    assert setting_for_env("AGGREGATOR_DATABASE_URL") == (None, "database_url")
    assert setting_for_env("AGGREGATOR_SMTP_HOSTNAME") is None


def test_smtp_password_comes_from_environment_or_file(write_config: ConfigWriter, tmp_path: Path) -> None:
    path = write_config(smtp={"host": "localhost", "username": "me"})
    settings = load_settings(path, environ={})
    assert settings.smtp is not None
    assert settings.smtp.password({"AGGREGATOR_SMTP_PASSWORD": "s3cret"}) == "s3cret"
    assert settings.smtp.password({}) is None
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    path = write_config(smtp={"host": "localhost", "password_file": str(secret)})
    settings = load_settings(path, environ={})
    assert settings.smtp is not None and settings.smtp.password({}) == "from-file"
    assert "from-file" not in repr(settings)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"fetch": {"timeout": "soon"}}, "fetch.timeout: 'soon' is not a duration"),
        ({"fetch": {"concurency": 3}}, "fetch.concurency: unknown key"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"digest": {"timezone": "Mars/Olympus"}}, "digest.timezone: unknown time zone"),
        ({"digest": {"send_at": "25:00"}}, "digest.send_at:"),
        ({"digest": {"to": ["not-an-address"]}}, "digest.to:"),
        ({"smtp": {"port": 25}}, "smtp.host: required key is missing"),
        ({"digest": {"subject": "News {when}"}}, "digest.subject: bad placeholder"),
        ({"smtp": {"host": "x", "ssl": True}}, "choose one of ssl"),
    ],
)
def test_bad_values_name_the_file_and_key(
    write_config: ConfigWriter, settings: dict[str, object], expected: str
) -> None:
    path = write_config(**settings)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_bad_feed_entry_names_the_entry(write_config: ConfigWriter) -> None:
    path = write_config(feeds=[{"url": "https://ok.example/feed"}, {"url": "ftp://nope", "tags": []}])
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    assert "feeds.yaml: feed #2 (ftp://nope): url:" in message


def test_duplicate_feed_is_an_error(write_config: ConfigWriter) -> None:
    path = write_config(feeds=[{"url": "https://a.example/f"}, {"url": "https://a.example/f"}])
    with pytest.raises(ConfigError, match="listed twice"):
        load_settings(path, environ={})


def test_invalid_yaml_reports_line(write_config: ConfigWriter) -> None:
    path = write_config()
    path.write_text("fetch: {interval: 30m\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line"):
        load_settings(path, environ={})


def test_missing_explicit_config_or_feeds_file(write_config: ConfigWriter, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "nope.yaml", environ={})
    path = write_config(feeds_file="missing.yaml")
    with pytest.raises(ConfigError, match="feeds_file"):
        load_settings(path, environ={})


def test_feed_defaults(write_config: ConfigWriter) -> None:
    path = write_config(
        feeds=[
            {"url": "https://www.example.org/feed/"},
            {"url": "https://b.example/rss", "name": "B", "interval": "1h", "full_text": False},
        ],
        extract={"enabled": True},
    )
    settings = load_settings(path, environ={})
    first, second = settings.feeds
    assert first.display_name == "example.org"
    assert settings.interval_for(first) == timedelta(minutes=30)
    assert settings.interval_for(second) == timedelta(hours=1)
    assert settings.full_text_for(first) is True
    assert settings.full_text_for(second) is False

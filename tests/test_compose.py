"""docker-compose.yml and the Dockerfile agree with the product: settings, CLI, config paths.

No Docker engine is needed: these tests only read the files and check them against the code.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from aggregator.cli import build_parser
from aggregator.config import load_settings, setting_for_env

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "README.md"
# AGGREGATOR_* variables the program reads that are not settings: the SMTP password (smtp.password_env),
# the config path and the CLI's --log-format default.
NOT_SETTINGS = {"AGGREGATOR_SMTP_PASSWORD", "AGGREGATOR_CONFIG", "AGGREGATOR_LOG_FORMAT"}
# `pip install -e .` exactly: not `-e .[test]` nor `-e ./other`.
PIP_INSTALL_EDITABLE = re.compile(r"pip install -e \.(?![\w\[./-])")


# -- reading the files -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text(encoding="utf-8"))


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose.get("services") or {}
    assert name in services, f"docker-compose.yml has no service {name!r}"
    return services[name] or {}


def _interpolate(value: str, host_env: dict[str, str]) -> str:
    """Resolve ${VAR}, ${VAR:-default} and $VAR as compose does, from ``host_env``."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        if name in host_env and (host_env[name] or match.group(2) != ":-"):
            return host_env[name]
        return match.group(3) or ""

    return re.sub(r"\$\{(\w+)(?:(:?-)([^}]*))?\}|\$(\w+)", one, value.replace("$$", "\0")).replace("\0", "$")


def _environment(service: dict[str, Any], host_env: dict[str, str] | None = None) -> dict[str, str]:
    """Return the service's environment as the container sees it, with nothing set on the host."""
    host_env = host_env or {}
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = [item.partition("=")[::2] if "=" in item else (item, None) for item in raw]
    else:
        pairs = list(raw.items())
    env = {}
    for name, value in pairs:
        if value is None:  # passed through from the host
            if name in host_env:
                env[name] = host_env[name]
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[name] = _interpolate(str(value), host_env)
    return env


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert command, "the service has no command"
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (source, target) for each of the service's volumes."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            parts = str(volume).split(":")
            mounts.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return mounts


def _is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def _instructions(text: str) -> list[tuple[str, str]]:
    """Return the Dockerfile's (INSTRUCTION, arguments), continuation lines joined."""
    instructions = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and current):
            continue
        if not line:
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, rest = (current + line).strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def _args(rest: str) -> list[str]:
    """Split an instruction's arguments, exec (JSON) form or shell form."""
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def _dockerfile_env(dockerfile: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile:
        if keyword != "ENV":
            continue
        tokens = shlex.split(rest)
        if tokens and "=" not in tokens[0]:  # legacy form: ENV NAME value
            env[tokens[0]] = rest.partition(" ")[2].strip()
        else:
            env.update(token.split("=", 1) for token in tokens)
    return env


def _useradd(run: str) -> tuple[str | None, str]:
    """Return (uid, name) of the first useradd in a RUN command."""
    words = shlex.split(run, posix=True)
    words = words[words.index("useradd") + 1 :]
    for i, word in enumerate(words):
        if word in ("&&", ";", "||"):
            words = words[:i]
            break
    uid = None
    for i, word in enumerate(words):
        if word in ("-u", "--uid"):
            uid = words[i + 1]
        elif word.startswith("--uid="):
            uid = word.split("=", 1)[1]
    return uid, words[-1]


def _parse_cli(argv: list[str]) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        valid = False
    assert valid, f"`aggregator {' '.join(argv)}` is not a valid command line"


def _compose_settings(compose: dict[str, Any]) -> Any:
    """Load the repo's config file with the aggregator service's environment applied."""
    service = _service(compose, "aggregator")
    return load_settings(_host_config_path(service), environ=_environment(service))


def _host_config_path(service: dict[str, Any]) -> Path:
    """Return the repo file that the service's --config path is mounted from."""
    config = _parse_cli(_command(service)[1:]).config
    assert config, "the aggregator command passes no --config"
    container_path = PurePosixPath(config)
    for source, target in _mounts(service):
        if source.startswith(".") and container_path.is_relative_to(target):
            return (ROOT / source / container_path.relative_to(target)).resolve()
    pytest.fail(f"--config {config} is not inside any directory mounted from the repo")


# -- docker-compose.yml ----------------------------------------------------------------------


def test_compose_has_the_three_services(compose: dict[str, Any]) -> None:
    assert _service(compose, "aggregator").get("build") in (".", {"context": "."})
    assert str(_service(compose, "postgres").get("image", "")).startswith("postgres:16")
    assert str(_service(compose, "mailpit").get("image", "")).startswith("axllent/mailpit")


def test_aggregator_environment_variables_are_settings(compose: dict[str, Any]) -> None:
    names = [
        name
        for name in _environment(_service(compose, "aggregator"))
        if name.startswith("AGGREGATOR_") and name not in NOT_SETTINGS
    ]
    assert names, "the aggregator service sets no AGGREGATOR_* settings"
    assert [name for name in names if setting_for_env(name) is None] == []


def test_dockerfile_environment_variables_are_settings(dockerfile: list[tuple[str, str]]) -> None:
    names = [n for n in _dockerfile_env(dockerfile) if n.startswith("AGGREGATOR_") and n not in NOT_SETTINGS]
    assert names, "the Dockerfile sets no AGGREGATOR_* settings"
    assert [name for name in names if setting_for_env(name) is None] == []


def test_compose_environment_points_at_postgres(compose: dict[str, Any]) -> None:
    url = make_url(_compose_settings(compose).database_url)
    postgres_env = _environment(_service(compose, "postgres"))
    assert url.get_backend_name() == "postgresql"
    assert url.host == "postgres"
    assert (url.username, url.password, url.database) == (
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_PASSWORD"],
        postgres_env["POSTGRES_DB"],
    )


def test_compose_environment_sends_through_mailpit(compose: dict[str, Any]) -> None:
    smtp = _compose_settings(compose).smtp
    assert smtp is not None, "the compose environment leaves the smtp section unset (outbox delivery)"
    assert (smtp.host, smtp.port, smtp.starttls, smtp.ssl) == ("mailpit", 1025, False, False)
    # The password passed through from the host is the variable the service reads.
    assert smtp.password_env in _environment(_service(compose, "aggregator"))


def test_command_is_the_run_subcommand(compose: dict[str, Any]) -> None:
    command = _command(_service(compose, "aggregator"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert command[0] in scripts, f"{command[0]!r} is not a console script of the package"
    assert _parse_cli(command[1:]).command == "run"


def test_config_path_is_inside_the_config_mount(compose: dict[str, Any]) -> None:
    service = _service(compose, "aggregator")
    assert ("./config", "/app/config") in [(s, t.removesuffix(":ro")) for s, t in _mounts(service)]
    path = _host_config_path(service)
    assert path.is_relative_to(ROOT / "config")
    assert path.is_file(), f"{path} does not exist"


def test_health_reads_the_same_config_as_run(
    compose: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    # `aggregator health` takes no --config here: it reads $AGGREGATOR_CONFIG.
    service = _service(compose, "aggregator")
    env = {**_dockerfile_env(dockerfile), **_environment(service)}
    assert env.get("AGGREGATOR_CONFIG") == _parse_cli(_command(service)[1:]).config


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = {
        source
        for service in (compose.get("services") or {}).values()
        for source, _target in _mounts(service or {})
        if _is_named_volume(source)
    }
    assert {"pgdata", "aggregator-data"} <= used
    assert used - declared == set()


def test_data_volume_is_the_directory_the_image_makes_writable(
    compose: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    targets = {t for s, t in _mounts(_service(compose, "aggregator")) if _is_named_volume(s)}
    assert "/app/data" in targets
    assert any(k == "RUN" and "chown" in rest and "/app/data" in rest for k, rest in dockerfile)


def test_postgres_healthcheck_gates_the_aggregator(compose: dict[str, Any]) -> None:
    postgres = _service(compose, "postgres")
    env = _environment(postgres)
    test = postgres.get("healthcheck", {}).get("test")
    assert test, "postgres has no healthcheck"
    words = shlex.split(test) if isinstance(test, str) else [w for part in test for w in shlex.split(part)]
    assert "pg_isready" in words
    assert words[words.index("-U") + 1] == env["POSTGRES_USER"]
    assert words[words.index("-d") + 1] == env["POSTGRES_DB"]
    depends_on = _service(compose, "aggregator").get("depends_on")
    assert isinstance(depends_on, dict), "depends_on needs the long form to carry conditions"
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["mailpit"]["condition"] == "service_started"


def test_aggregator_healthcheck_runs_health(compose: dict[str, Any]) -> None:
    test = _service(compose, "aggregator").get("healthcheck", {}).get("test")
    assert isinstance(test, list), "the aggregator service has no healthcheck in list form"
    assert test[0] in ("CMD", "CMD-SHELL")
    words = shlex.split(test[1]) if test[0] == "CMD-SHELL" else test[1:]
    assert words[0] == "aggregator"
    assert _parse_cli(words[1:]).command == "health"


def test_aggregator_can_be_scaled(compose: dict[str, Any]) -> None:
    service = _service(compose, "aggregator")
    assert "container_name" not in service
    assert not service.get("ports")
    # Several processes need PostgreSQL: a second service on SQLite refuses to start.
    url = make_url(_environment(service)["AGGREGATOR_DATABASE_URL"])
    assert url.get_backend_name() == "postgresql"
    for text in (COMPOSE.read_text(encoding="utf-8"), README.read_text(encoding="utf-8")):
        assert "docker compose up -d --scale aggregator=3" in text


# -- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_base_workdir_and_cmd(dockerfile: list[tuple[str, str]]) -> None:
    assert dockerfile[0] == ("FROM", "python:3.11-slim")
    assert ("WORKDIR", "/app") in dockerfile
    commands = [_args(rest) for keyword, rest in dockerfile if keyword == "CMD"]
    assert commands[-1:] == [["aggregator", "run"]]
    assert _parse_cli(commands[-1][1:]).command == "run"
    assert _dockerfile_env(dockerfile).get("PYTHONUNBUFFERED") == "1"


def test_dockerfile_runs_as_a_non_root_user(dockerfile: list[tuple[str, str]]) -> None:
    users = [rest.split(":")[0] for keyword, rest in dockerfile if keyword == "USER"]
    assert users, "the Dockerfile has no USER: the container would run as root"
    assert users[-1] not in ("root", "0")
    created = [_useradd(rest) for keyword, rest in dockerfile if keyword == "RUN" and "useradd" in rest]
    assert ("10001", "aggregator") in created, f"no useradd of aggregator with uid 10001: {created}"
    assert users[-1] in ("10001", "aggregator")


def test_dockerfile_healthcheck_calls_aggregator_health(dockerfile: list[tuple[str, str]]) -> None:
    checks = [rest for keyword, rest in dockerfile if keyword == "HEALTHCHECK"]
    assert checks, "the Dockerfile has no HEALTHCHECK"
    options, _, command = checks[-1].partition("CMD ")
    words = _args(command.strip())
    assert words[0] == "aggregator"
    assert _parse_cli(words[1:]).command == "health"
    assert dict(o.lstrip("-").split("=", 1) for o in shlex.split(options)) == {
        "interval": "30s",
        "timeout": "10s",
        "start-period": "60s",
        "retries": "3",
    }


def test_dockerfile_installs_like_the_readme(dockerfile: list[tuple[str, str]]) -> None:
    assert PIP_INSTALL_EDITABLE.search(README.read_text(encoding="utf-8")), (
        "README.md does not say `pip install -e .`"
    )
    assert any(keyword == "RUN" and PIP_INSTALL_EDITABLE.search(rest) for keyword, rest in dockerfile)


def test_dockerfile_copies_files_that_exist_and_are_not_ignored(
    dockerfile: list[tuple[str, str]],
) -> None:
    ignored = [
        line.strip().strip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]
    sources = []
    for keyword, rest in dockerfile:
        if keyword in ("COPY", "ADD") and "--from" not in rest:
            sources += [token for token in _args(rest) if not token.startswith("--")][:-1]
    assert {"pyproject.toml", "README.md", "config/"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repo"
        parts = PurePosixPath(source).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hits = [p for p in ignored for prefix in prefixes if fnmatch.fnmatch(prefix, p)]
        assert not hits, f"COPY {source}: excluded by .dockerignore {hits}"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {line.strip().strip("/") for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()}
    assert {"data", ".git", "tests"} <= patterns

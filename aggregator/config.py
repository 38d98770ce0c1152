"""Load and check the YAML configuration once; everything downstream gets typed, frozen settings.

Where things are looked up:
- the config file: ``--config``, else ``$AGGREGATOR_CONFIG``, else ``config/aggregator.yaml``;
  when that default file does not exist the embedded defaults below are used;
- ``feeds_file``: relative to the config file's folder;
- ``database_url`` and ``outbox_dir``: relative paths resolve against the working directory;
- environment: ``AGGREGATOR_<KEY>`` or ``AGGREGATOR_<SECTION>_<KEY>`` overrides any setting
  (``AGGREGATOR_DATABASE_URL``, ``AGGREGATOR_SMTP_HOST``, ``AGGREGATOR_FETCH_TIMEOUT`` …).
Secrets never live in these files: the SMTP password comes from the environment variable named
by ``smtp.password_env`` or from ``smtp.password_file``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from datetime import time, timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aggregator import __version__
from aggregator.controls import clean_text, shorten
from aggregator.credentials import Credentials, basic_authorization
from aggregator.errors import ConfigError
from aggregator.links import redact_url

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("config/aggregator.yaml")
ENV_PREFIX = "AGGREGATOR_"
# Variables with this prefix that are not settings (they configure the CLI or the tests).
_NON_SETTING_ENV = {
    "CONFIG",
    "SMTP_PASSWORD",
    "TEST_POSTGRES_URL",
    "BENCH_POSTGRES_URL",
    "LOG_FORMAT",
    "LOG_LEVEL",
}

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_duration(value: Any) -> timedelta:
    """Return a timedelta for ``30s``, ``5m``, ``1h30m``, ``2d`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 1h or 2d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().replace(" ", "")
        if not text or _DURATION_PART.sub("", text) != "":
            raise ValueError(f"{value!r} is not a duration like 30s, 5m, 1h30m or 2d")
        seconds = sum(float(n) * _DURATION_UNITS[unit.lower()] for n, unit in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise ValueError("a duration must be more than zero")
    return timedelta(seconds=seconds)


def parse_size(value: Any) -> int:
    """Return a byte count for ``10MB`` (10**6), ``512KiB`` (2**10) or a plain number."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 10MB")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size like 500KB, 10MB or 1GiB")
        size = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])
    if size <= 0:
        raise ValueError("a size must be more than zero")
    return size


def _parse_clock(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        # YAML 1.1 reads an unquoted 7:00 as the base-60 number 420 (minutes).
        return time(value // 60, value % 60)
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", str(value))
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f'{value!r} is not a time of day like "07:00"')
    return time(int(match.group(1)), int(match.group(2)))


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
ClockTime = Annotated[time, BeforeValidator(_parse_clock)]
StrList = Annotated[list[str], BeforeValidator(_split_list)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FetchSettings(_Section):
    """How feeds and article pages are fetched."""

    interval: Duration = timedelta(minutes=30)
    min_interval: Duration = timedelta(minutes=5)
    max_interval: Duration = timedelta(hours=24)
    max_backoff: Duration = timedelta(hours=24)
    timeout: Duration = timedelta(seconds=20)
    concurrency: int = Field(32, ge=1, le=1000)
    per_host: int = Field(2, ge=1, le=100)
    max_bytes: ByteSize = 10_000_000
    max_redirects: int = Field(5, ge=0, le=20)
    max_entries: int = Field(1000, ge=1, le=100_000)
    allow_private_networks: bool = False
    user_agent: str = f"aggregator/{__version__} (self-hosted feed aggregator)"

    @model_validator(mode="after")
    def _ordered(self) -> FetchSettings:
        if self.min_interval > self.max_interval:
            raise ValueError("min_interval is longer than max_interval")
        return self


class ExtractSettings(_Section):
    """Full-text extraction of article pages, and the worker processes that do it."""

    enabled: bool = True
    # Processes for the CPU-bound work: extraction, and parsing and storing feeds.
    # None: one per core; 0: none (threads of the service process do it).
    workers: int | None = Field(None, ge=0, le=64)
    # A page whose extraction takes longer is abandoned; the feed's own text is used.
    timeout: Duration = timedelta(seconds=30)
    # A feed whose parsing (and sanitising) in a worker takes longer fails with kind "timeout".
    feed_timeout: Duration = timedelta(minutes=2)
    # A worker process whose resident memory grew past this after a job is replaced.
    max_worker_memory: ByteSize = 500_000_000


def _check_address(value: str) -> str:
    _name, address = parseaddr(value)
    if "@" not in address or "\n" in value or "\r" in value:
        raise ValueError(f"{value!r} is not an email address")
    return value


class DigestSettings(_Section):
    """The daily email digest."""

    name: str = "daily"
    schedule: Literal["daily", "weekly"] = "daily"
    day: str = "monday"  # the day of a weekly digest
    send_at: ClockTime = time(7, 0)
    timezone: str = "UTC"
    to: StrList = Field(default_factory=lambda: ["reader@example.com"])
    from_: str = Field("Aggregator <aggregator@example.com>", alias="from")
    subject: str = "Your {name} digest, {date}: {items}"
    max_items: int | None = Field(None, ge=1)
    # Filters: only feeds with one of these tags; keywords matched on title and text
    # (case-insensitive): at least one of `include` if given, none of `exclude`.
    tags: StrList = Field(default_factory=list)
    include: StrList = Field(default_factory=list)
    exclude: StrList = Field(default_factory=list)
    send_empty: bool = False  # send a short "nothing new" message rather than nothing
    list_unsubscribe: str | None = None  # the List-Unsubscribe header, e.g. "<mailto:me@x.org>"
    templates: Path | None = None  # a folder with digest.html.j2 / digest.txt.j2 to use instead
    # Where story titles link: the original page, or the reader view of the site
    # `aggregator run` serves (needs service.public_url).
    link_to: Literal["original", "reader"] = "original"
    # Gmail clips messages over 102 KB: past this, items lose their summaries, then are counted.
    max_html_bytes: ByteSize = 100_000

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/Paris)") from None
        return value

    @field_validator("subject")
    @classmethod
    def _subject_template(cls, value: str) -> str:
        try:
            value.format(name="daily", date="1 Jan 2026", count=1, items="1 story")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"bad placeholder {exc} in {value!r}: use {{name}}, {{date}}, {{count}}, {{items}}"
            ) from None
        return value

    @field_validator("day")
    @classmethod
    def _weekday(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in WEEKDAYS:
            raise ValueError(f"{value!r} is not a day of the week (monday … sunday)")
        return value

    @property
    def weekday(self) -> int | None:
        """0 = Monday for a weekly digest; None for a daily one."""
        return WEEKDAYS.index(self.day) if self.schedule == "weekly" else None

    @property
    def schedule_label(self) -> str:
        when = f"{self.send_at:%H:%M} {self.timezone}"
        if self.schedule == "weekly":
            return f"every {self.day.capitalize()} at {when}"
        return f"every day at {when}"

    @field_validator("list_unsubscribe")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and ("\n" in value or "\r" in value):
            raise ValueError("must be one line")
        return value

    @field_validator("templates")
    @classmethod
    def _template_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a folder")
        return value

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one recipient is needed")
        return [_check_address(v) for v in value]

    @field_validator("from_")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _check_address(value)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class SmtpSettings(_Section):
    """The SMTP server digests are sent through. Without it, digests go to the outbox."""

    host: str
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    ssl: bool = False
    username: str | None = None
    password_env: str = "AGGREGATOR_SMTP_PASSWORD"
    password_file: Path | None = None
    timeout: Duration = timedelta(seconds=30)
    # A temporary failure (refused, timeout, 4xx) is tried again this many times, waiting
    # retry_wait, then twice that, ...; after that the run stays pending for the next send.
    retries: int = Field(3, ge=0, le=10)
    retry_wait: Duration = timedelta(seconds=5)
    # A CA bundle to trust for this server (a private CA); the system's CAs otherwise.
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _one_tls_mode(self) -> SmtpSettings:
        if self.ssl and self.starttls:
            raise ValueError("choose one of ssl (implicit TLS, port 465) and starttls")
        return self

    def password(self, environ: Mapping[str, str] | None = None) -> str | None:
        """Return the password from the file or the environment; None when neither is set."""
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"smtp.password_file: cannot read {self.password_file}: {exc}") from None
        return (os.environ if environ is None else environ).get(self.password_env) or None


class WebAuth(_Section):
    """Who may read the site `aggregator run` serves: HTTP basic (``username`` and a password) or
    a bearer token, the secret from the environment or a file, never from this file."""

    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    token_env: str | None = None
    token_file: Path | None = None
    _secret: SecretStr = PrivateAttr(default=SecretStr(""))

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> WebAuth:
        if self.username is not None:
            if self.token_env is not None or self.token_file is not None:
                raise ValueError("give username with a password, or a token, not both")
            if ":" in self.username or not self.username.isprintable() or not self.username:
                raise ValueError("a username has no ':' and no control characters")
            secret = _read_secret(
                ("password_env", "password_file"), self.password_env, self.password_file, info
            )
        else:
            if self.password_env is not None or self.password_file is not None:
                raise ValueError("a password needs a username")
            secret = _read_secret(("token_env", "token_file"), self.token_env, self.token_file, info)
        self._secret = SecretStr(secret)
        return self

    @property
    def secret(self) -> str:
        """The password (with ``username``) or the token."""
        return self._secret.get_secret_value()


class ServiceSettings(_Section):
    """The background service (`aggregator run`)."""

    heartbeat_file: Path = Path("/tmp/aggregator.heartbeat")
    check_every: Duration = timedelta(seconds=30)
    # host:port for the site: the archive of digests, articles and search, /healthz and /metrics
    # (e.g. 127.0.0.1:8080); none when empty. Any other address than loopback needs `auth`.
    http: str | None = None
    # Who may read the site; required when `http` is not a loopback address.
    auth: WebAuth | None = None
    # Where readers reach the site (https://news.example.org/): digests then carry a "View in
    # browser" link, and story titles may link to the reader view (digest.link_to).
    public_url: str | None = None
    # On SIGTERM/SIGINT, in-flight work gets this long to finish before it is abandoned.
    shutdown_timeout: Duration = timedelta(seconds=20)
    # A feed claimed by a process is not polled by another until its poll is recorded or this
    # much time passed (the process died): several processes can share PostgreSQL.
    lease: Duration = timedelta(minutes=15)

    @field_validator("http")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port, like 127.0.0.1:8080")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value.strip()):
            raise ValueError(f"{value!r} is not an http(s) URL without query, like https://news.example.org/")
        return value.strip().rstrip("/") + "/"

    @model_validator(mode="after")
    def _private_unless_authenticated(self) -> ServiceSettings:
        # The archive is one person's reading: reachable from elsewhere only behind a password.
        if self.http is not None and self.auth is None and not _is_loopback(self.http.rpartition(":")[0]):
            raise ValueError(
                f"http: {self.http} is reachable from other machines: set service.auth (a username "
                "and password, or a token, from the environment), or bind 127.0.0.1"
            )
        return self


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Request headers a feed may not set: they frame the request or belong to the connection.
_RESERVED_HEADERS = frozenset(
    ("host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer")
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an RFC 9110 token
_AUTHORITY = re.compile(r"^[a-z]+://([^/?#]*)", re.IGNORECASE)


def _read_secret(keys: tuple[str, str], env: str | None, file: Path | None, info: ValidationInfo) -> str:
    """Return the secret named by ``env`` or ``file`` (exactly one; ``keys``: their names in the
    YAML), from the environment in the validation context or the process's. Errors never show it."""
    env_key, file_key = keys
    if (env is None) == (file is None):
        raise ValueError(f"give exactly one of {env_key} and {file_key}")
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ValueError(f"{file_key}: cannot read {file}: {reason}") from None
    environ = (info.context or {}).get("environ")
    value = (os.environ if environ is None else environ).get(env or "")
    if not value:
        raise ValueError(f"{env_key}: the environment variable {env} is not set or empty")
    return value


class FeedAuth(_Section):
    """HTTP basic authentication for one feed: the password from the environment or a file."""

    username: str
    password_env: str | None = None
    password_file: Path | None = None
    _password: SecretStr = PrivateAttr(default=SecretStr(""))

    @field_validator("username")
    @classmethod
    def _user(cls, value: str) -> str:
        if ":" in value or not value.isprintable():
            raise ValueError("a username has no ':' and no control characters")
        return value

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> FeedAuth:
        self._password = SecretStr(
            _read_secret(("password_env", "password_file"), self.password_env, self.password_file, info)
        )
        return self

    @property
    def authorization(self) -> str:
        return basic_authorization(self.username, self._password.get_secret_value())


def _header_source(value: Any) -> Any:
    # A plain value as written; YAML reads `X-Version: 2` as a number.
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return {"value": str(value)}
    return value


class HeaderSource(_Section):
    """One header value of a feed: as written (not secret), or from ``env`` or ``file``."""

    value: str | None = Field(None, repr=False)
    env: str | None = None
    file: Path | None = None
    _resolved: SecretStr = PrivateAttr(default=SecretStr(""))

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> HeaderSource:
        if self.value is not None:
            if self.env is not None or self.file is not None:
                raise ValueError("give a plain value, or one of env and file")
            resolved = self.value
        else:
            resolved = _read_secret(("env", "file"), self.env, self.file, info).strip()
        # h11 refuses the rest, and httpx encodes header values as ASCII.
        if (
            not resolved
            or not resolved.isascii()
            or not resolved.isprintable()
            or resolved != resolved.strip()
        ):
            where = "the value" if self.value is not None else f"the value from {self.env or self.file}"
            raise ValueError(
                f"{where} is empty or has characters a header cannot carry (printable ASCII only)"
            )
        self._resolved = SecretStr(resolved)
        return self

    @property
    def resolved(self) -> str:
        return self._resolved.get_secret_value()


HeaderValue = Annotated[HeaderSource, BeforeValidator(_header_source)]


class FeedConfig(_Section):
    """One entry of feeds.yaml."""

    url: str
    name: str | None = None
    tags: StrList = Field(default_factory=list)
    interval: Duration | None = None
    full_text: bool | None = None
    # A CSS selector naming the article body on this site, for pages the extractor gets wrong.
    selector: str | None = None
    # Secrets sent with the feed's own requests (not its article pages), to its origin only.
    auth: FeedAuth | None = None
    headers: dict[str, HeaderValue] = Field(default_factory=dict)
    _credentials: Credentials | None = PrivateAttr(default=None)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, HeaderSource]) -> dict[str, HeaderSource]:
        seen: set[str] = set()
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{name} cannot be set for a feed")
            if name.lower() in seen:
                raise ValueError(f"{name} is given twice")
            seen.add(name.lower())
        return value

    @model_validator(mode="after")
    def _bind_credentials(self) -> FeedConfig:
        headers = [(name, source.resolved) for name, source in self.headers.items()]
        if self.auth is not None:
            if any(name.lower() == "authorization" for name, _ in headers):
                raise ValueError("give auth or an Authorization header, not both")
            authority = _AUTHORITY.match(self.url)
            if authority and "@" in authority.group(1):
                raise ValueError("give auth or a user:password@ in the url, not both")
            headers.append(("Authorization", self.auth.authorization))
        if headers:
            self._credentials = Credentials(self.url, tuple(headers))
        return self

    @property
    def credentials(self) -> Credentials | None:
        """The headers the feed's own requests carry to its origin (None: no secrets)."""
        return self._credentials

    @field_validator("selector")
    @classmethod
    def _css(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from lxml.cssselect import CSSSelector, SelectorError

        try:
            CSSSelector(value)
        except (SelectorError, ValueError) as exc:
            raise ValueError(f"{value!r} is not a CSS selector: {exc}") from None
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if not re.match(r"^https?://[^/\s]+", value, re.IGNORECASE):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @property
    def display_name(self) -> str:
        """``name``, else the URL's host and port (never the user name and password in it)."""
        return feed_label(self.url, self.name)

    def label(self, title: str | None) -> str:
        """How the feed is called: its ``name:``, else its own title (``title``, once fetched),
        else its host."""
        return feed_label(self.url, self.name, title)


def feed_label(url: str, name: str | None = None, title: str | None = None) -> str:
    """A feed's name for people: ``name``, else its title (one line, at most 80 characters), else
    the host and port of ``url`` (never the user name and password in it)."""
    if name:
        return name
    if title and title.strip():
        return shorten(" ".join(clean_text(title).split()), 80)
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").removeprefix("www."), parts.port
    except ValueError:
        return redact_url(url)
    return f"{host}:{port}" if port else host


class FeedsFile(_Section):
    feeds: list[FeedConfig] = Field(default_factory=list)

    @field_validator("feeds", mode="before")
    @classmethod
    def _urls_alone(cls, value: Any) -> Any:
        # `- https://…/feed` is a feed with nothing but its URL, as people write it.
        if isinstance(value, list):
            return [{"url": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _unique(self) -> FeedsFile:
        seen: set[str] = set()
        for feed in self.feeds:
            if feed.url in seen:
                raise ValueError(f"feed {feed.url} is listed twice")
            seen.add(feed.url)
        return self


class Settings(_Section):
    """The whole configuration, with ``feeds`` read from ``feeds_file``."""

    database_url: str = "sqlite:///data/aggregator.db"
    feeds_file: Path = Path("feeds.yaml")
    outbox_dir: Path = Path("data/outbox")
    # Articles older than this are deleted, except those still waiting for a digest.
    retention_days: int = Field(90, ge=1, le=36500)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    extract: ExtractSettings = Field(default_factory=ExtractSettings)
    digest: DigestSettings = Field(default_factory=lambda: DigestSettings())
    # Several digests, each with its own recipients, schedule and filters; `digest:` is the
    # shorthand for one.
    digests: list[DigestSettings] = Field(default_factory=list)
    smtp: SmtpSettings | None = None
    service: ServiceSettings = Field(default_factory=ServiceSettings)

    _feeds: tuple[FeedConfig, ...] = PrivateAttr(default=())
    _source: Path | None = PrivateAttr(default=None)

    @property
    def feeds(self) -> tuple[FeedConfig, ...]:
        return self._feeds

    @property
    def source(self) -> Path | None:
        """The config file these settings came from (None for embedded defaults)."""
        return self._source

    def with_feeds(self, feeds: tuple[FeedConfig, ...]) -> Settings:
        copy = self.model_copy()
        copy._feeds = feeds
        copy._source = self._source
        return copy

    @model_validator(mode="after")
    def _one_kind_of_digest(self) -> Settings:
        if self.digests and "digest" in self.model_fields_set:
            raise ValueError("use either digest: (one digest) or digests: (a list), not both")
        names = [d.name for d in self.digests]
        if len(names) != len(set(names)):
            raise ValueError("digests: each digest needs its own name")
        return self

    @property
    def all_digests(self) -> tuple[DigestSettings, ...]:
        return tuple(self.digests) or (self.digest,)

    def digest_named(self, name: str | None) -> DigestSettings:
        """Return the digest called ``name`` (the first one when None); ConfigError if none."""
        if name is None:
            return self.all_digests[0]
        for digest in self.all_digests:
            if digest.name == name:
                return digest
        known = ", ".join(d.name for d in self.all_digests)
        raise ConfigError(f"no digest named {name!r} (configured: {known})")

    def full_text_for(self, feed: FeedConfig) -> bool:
        return self.extract.enabled if feed.full_text is None else feed.full_text

    def interval_for(self, feed: FeedConfig) -> timedelta:
        return feed.interval or self.fetch.interval


def resolve_config_path(path: str | Path | None, environ: Mapping[str, str]) -> Path:
    """Return the config path the user asked for, by flag, environment or default."""
    if path:
        return Path(path)
    if environ.get("AGGREGATOR_CONFIG"):
        return Path(environ["AGGREGATOR_CONFIG"])
    return DEFAULT_CONFIG_PATH


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Return validated settings with their feeds; raise ConfigError naming file and key."""
    environ = os.environ if environ is None else environ
    config_path = resolve_config_path(path, environ)
    explicit = config_path != DEFAULT_CONFIG_PATH
    if config_path.exists():
        raw = _read_yaml(config_path)
        base_dir = config_path.parent
    elif explicit:
        raise ConfigError(f"{config_path}: no such config file")
    else:
        raw, base_dir = {}, DEFAULT_CONFIG_PATH.parent
    apply_env_overrides(raw, environ)
    try:
        settings = Settings.model_validate(raw, context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError(_describe(config_path, exc)) from None
    feeds_path = settings.feeds_file
    if not feeds_path.is_absolute():
        feeds_path = base_dir / feeds_path
    if feeds_path.exists():
        feeds = load_feeds(feeds_path, environ)
    elif config_path.exists() or "feeds_file" in raw:
        raise ConfigError(f"{config_path}: feeds_file: {feeds_path} does not exist")
    else:
        feeds = ()
    settings = settings.model_copy(update={"feeds_file": feeds_path}).with_feeds(feeds)
    settings._source = config_path if config_path.exists() else None
    return settings


def load_feeds(path: Path, environ: Mapping[str, str] | None = None) -> tuple[FeedConfig, ...]:
    """Return the feeds listed in a feeds.yaml, their secrets read from ``environ`` (default:
    the process's) or their files; raise ConfigError naming the entry and key."""
    raw = _read_yaml(path)
    if isinstance(raw, dict) and raw.get("feeds") is None:
        raw = {**raw, "feeds": []}
    try:
        return tuple(FeedsFile.model_validate(raw, context={"environ": environ}).feeds)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc, raw)) from None


# libyaml's safe loader where PyYAML was built with it: the pure-Python one was a tenth of the
# start-up with 1,000 feeds. The same documents load to the same values.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Copy AGGREGATOR_* variables into ``raw``; return the setting paths they set."""
    applied: list[str] = []
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].upper()
        if key in _NON_SETTING_ENV:
            continue
        target = setting_for_env(name)
        if target is None:
            log.warning("ignoring environment variable %s: it names no setting", name)
            continue
        section, field = target
        parsed = _env_value(value)
        if section is None:
            raw[field] = parsed
            applied.append(field)
        else:
            if not isinstance(raw.get(section), dict):
                raw[section] = {}
            raw[section][field] = parsed
            applied.append(f"{section}.{field}")
    return applied


def setting_for_env(name: str) -> tuple[str | None, str] | None:
    """Return (section, key) that environment variable ``name`` overrides, or None."""
    if not name.startswith(ENV_PREFIX):
        return None
    key = name[len(ENV_PREFIX) :].lower()
    sections = {
        field: info.annotation
        for field, info in Settings.model_fields.items()
        if _section_model(info.annotation) is not None
    }
    if key in Settings.model_fields and key not in sections:
        return None, key
    for section, annotation in sections.items():
        prefix = section + "_"
        if key.startswith(prefix):
            model = _section_model(annotation)
            assert model is not None
            sub = key[len(prefix) :]
            for field, info in model.model_fields.items():
                if sub in (field, info.alias):
                    return section, info.alias or field
    return None


def _section_model(annotation: Any) -> type[BaseModel] | None:
    candidates = getattr(annotation, "__args__", None) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _env_value(value: str) -> Any:
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    # Keep times like 7:00 and anything YAML turns into a date or mapping by accident as text.
    if isinstance(parsed, bool | float | list) or parsed is None:
        return parsed
    if isinstance(parsed, int) and ":" not in value:
        return parsed
    return value


# Pydantic's words for a wrong type, in ours.
_TYPE_MESSAGES = {
    "model_type": "should be a mapping of keys (key: value, one per line)",
    "dict_type": "should be a mapping of keys (key: value, one per line)",
    "list_type": "should be a list (one `- item` per line)",
    "string_type": "should be text",
    "int_type": "should be a whole number",
    "int_parsing": "should be a whole number",
    "int_from_float": "should be a whole number",
    "bool_type": "should be true or false",
    "bool_parsing": "should be true or false",
    "float_type": "should be a number",
    "float_parsing": "should be a number",
}


def _describe(path: Path, exc: ValidationError, raw: Any = None) -> str:
    """One line per problem: the file, where in it (a feed counted from 1, with its URL), what is
    wrong, and for an unknown key the known one it may be a typo of."""
    lines = []
    for error in exc.errors():
        loc = error["loc"]
        where = _location(loc, raw)
        kind = error["type"]
        if kind == "extra_forbidden":
            message = "unknown key" + _did_you_mean(
                str(loc[-1]), _keys_at(FeedsFile if raw is not None else Settings, loc[:-1])
            )
        elif kind == "missing":
            message = "required key is missing"
        elif kind in _TYPE_MESSAGES:
            given = error.get("input")
            shown = f"{given!r}" if isinstance(given, str | int | float | bool) else type(given).__name__
            message = f"{_TYPE_MESSAGES[kind]}, not {shown}"
        else:
            message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {where or '(top level)'}: {message}")
    return "\n".join(lines)


def _location(loc: tuple[int | str, ...], raw: Any) -> str:
    """``fetch.timeout``; a feed as ``feed #2 (https://…)``, counted from 1 as people count."""
    if raw is not None and len(loc) >= 2 and loc[0] == "feeds" and isinstance(loc[1], int):
        url = None
        try:
            entry = raw["feeds"][loc[1]]
            url = entry.get("url") if isinstance(entry, dict) else entry
        except (IndexError, KeyError, TypeError):
            pass
        head = f"feed #{loc[1] + 1}" + (f" ({url})" if isinstance(url, str) else "")
        rest = ".".join(str(part) for part in loc[2:])
        return f"{head}: {rest}" if rest else head
    return ".".join(f"#{part + 1}" if isinstance(part, int) else str(part) for part in loc)


def _keys_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model at ``loc`` (inside ``model``) knows, for "did you mean"."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return []
        annotation = fields[part].annotation
        current = _section_model(annotation) or _list_item_model(annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", {})
    return [info.alias or name for name, info in fields.items()]


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    for argument in getattr(annotation, "__args__", ()) or ():
        if isinstance(argument, type) and issubclass(argument, BaseModel):
            return argument
    return None


def _did_you_mean(key: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""

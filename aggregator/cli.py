"""The `aggregator` command: parse arguments, build the objects, call one library function.

Exit codes: 0 done (``fetch`` also when some feeds failed: each failure is reported and
recorded on its feed); 1 could not do it (database unreachable, digest not delivered);
2 bad configuration or usage. Errors are one line on stderr, never a bare traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from aggregator import __version__
from aggregator.config import Settings, feed_label, load_settings, resolve_config_path
from aggregator.controls import json_safe, printable
from aggregator.errors import AggregatorError, ConfigError, FetchError
from aggregator.links import redact_url
from aggregator.logs import configure_logging
from aggregator.models import FeedStatus, RefreshOutcome, StoredArticle

log = logging.getLogger("aggregator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aggregator",
        description="Self-hosted feed aggregator: full text, duplicates dropped, a daily digest.",
    )
    parser.add_argument("--version", action="version", version=f"aggregator {__version__}")
    # The common options go before or after the command (``aggregator --config x.yaml feeds`` and
    # ``aggregator feeds --config x.yaml``): given on both levels with no default, so that the
    # command's level does not overwrite the other with its default; _with_defaults fills them.
    common = argparse.ArgumentParser(add_help=False)
    for level in (parser, common):
        _add_common_options(level)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser(
        "run",
        parents=[common],
        help="run the background service",
        description="Fetch each feed on its interval and send the digest at its time, until SIGTERM/SIGINT.",
    )

    fetch = sub.add_parser(
        "fetch",
        parents=[common],
        help="fetch every feed once, now",
        description="One pass over the feeds: fetch, parse, full text, deduplicate, store.",
    )
    fetch.add_argument(
        "--feed", metavar="URL", action="append", help="only this feed (from feeds.yaml); may be repeated"
    )

    digest = sub.add_parser(
        "digest",
        parents=[common],
        help="build or send the digest",
        description="Build the digest of articles not yet sent. Without "
        "--send or --output, print its text part.",
    )
    mode = digest.add_mutually_exclusive_group()
    mode.add_argument(
        "--send", action="store_true", help="deliver it (SMTP, or the outbox) and mark its articles sent"
    )
    mode.add_argument(
        "--output", metavar="FILE", help="write a preview (.eml or .html); marks nothing as sent"
    )
    digest.add_argument(
        "--name",
        metavar="NAME",
        help="the digest to build or send (of digests:); default: the first for "
        "a preview, every one for --send",
    )
    digest.add_argument("--since", metavar="ISO8601", help="only articles first seen at or after this time")

    feeds = sub.add_parser("feeds", parents=[common], help="show each feed's status")
    feeds.add_argument("--json", action="store_true", help="one JSON object per line")

    articles = sub.add_parser("articles", parents=[common], help="list stored articles")
    articles.add_argument("--json", action="store_true", help="one JSON object per line")
    articles.add_argument("--since", metavar="ISO8601", help="published at or after this time")
    articles.add_argument("--feed", metavar="URL", help="only this feed's articles")
    articles.add_argument("--limit", metavar="N", type=_positive_int, help="at most N articles")

    extract = sub.add_parser(
        "extract",
        parents=[common],
        help="show what full text a page gives",
        description="Run the full-text extractor on pages (files or URLs).",
    )
    extract.add_argument("sources", nargs="+", metavar="PATH_OR_URL")
    extract.add_argument("--json", action="store_true", help="one JSON object per input")
    extract.add_argument(
        "--selector",
        metavar="CSS",
        help="extract only from the element this CSS selector names (as feeds.yaml's per-feed selector does)",
    )
    extract.add_argument(
        "--html", action="store_true", help="also print the sanitised HTML that would be stored"
    )

    sub.add_parser("check-config", parents=[common], help="validate the configuration")

    opml = sub.add_parser("opml", parents=[common], help="import or export subscriptions as OPML")
    opml_sub = opml.add_subparsers(dest="opml_command", metavar="ACTION", required=True)
    opml_import = opml_sub.add_parser("import", parents=[common], help="add an OPML's feeds to feeds.yaml")
    opml_import.add_argument("file", metavar="FILE")
    opml_export = opml_sub.add_parser("export", parents=[common], help="print feeds.yaml as OPML")
    opml_export.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")

    sub.add_parser(
        "health", parents=[common], help="exit 0 if the service is alive (for container health checks)"
    )
    return parser


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="config file (default: $AGGREGATOR_CONFIG or config/aggregator.yaml)",
    )
    parser.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["debug", "info", "warning", "error"],
        help="log detail on stderr (default: $AGGREGATOR_LOG_LEVEL, else info for run, warning otherwise)",
    )
    parser.add_argument(
        "--log-format",
        default=argparse.SUPPRESS,
        choices=["text", "json"],
        help="log lines as text or JSON (default: $AGGREGATOR_LOG_FORMAT, else text)",
    )


def _with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the common options given at neither level (see build_parser)."""
    if not hasattr(args, "config"):
        args.config = None
    if not hasattr(args, "log_level"):
        level = os.environ.get("AGGREGATOR_LOG_LEVEL", "").lower()
        args.log_level = level if level in ("debug", "info", "warning", "error") else None
    if not hasattr(args, "log_format"):
        args.log_format = "json" if os.environ.get("AGGREGATOR_LOG_FORMAT", "").lower() == "json" else "text"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv``; return the exit code."""
    args = _with_defaults(build_parser().parse_args(argv))
    # Everything a command prints may hold text from feeds and servers: shown, never obeyed.
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Printable(stdout), _Printable(stderr)
    try:
        default_level = "info" if args.command == "run" else "warning"
        configure_logging(args.log_level or default_level, args.log_format)
        handler = _COMMANDS[args.command]
        try:
            return handler(args)
        except AggregatorError as exc:
            # A config error may name several keys, one per line; anything else is one line.
            print(f"aggregator: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("aggregator: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            return 0
    finally:
        sys.stdout, sys.stderr = stdout, stderr


class _Printable(io.TextIOBase):
    """A text stream whose writes show control characters as escapes (``controls.printable``),
    line breaks and tabs kept: a feed's title cannot retitle, recolour or clear a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(printable(text, keep_newlines=True))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.stream, "encoding", "utf-8"))


def entry(argv: Sequence[str] | None = None) -> int:
    """The program's entry point (the ``aggregator`` script, ``python -m aggregator``): ``main``,
    then an exit that does not walk the heap.

    The interpreter's teardown runs full garbage collections over every object alive, most of
    them made by the imports: 0.3-0.5 s of CPU after ``aggregator fetch`` was done, a fifth of
    all the command's own CPU in a pass of 200 new articles. Frozen objects are left out of
    those collections and go back to the system with the process. Not in ``main``, which tests
    and other programs call in their own process.
    """
    try:
        return main(argv)
    finally:
        gc.freeze()


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


# -- commands ------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from aggregator.scheduler import Service

    settings = _settings(args)
    if not settings.feeds:
        log.warning("no feeds configured: add some to %s", settings.feeds_file)
    asyncio.run(Service(settings, config_path=settings.source).run())
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from aggregator.fetcher import Fetcher
    from aggregator.pipeline import Pipeline, start_workers, will_parse
    from aggregator.storage import Store

    settings = _settings(args)
    feeds = list(settings.feeds)
    if args.feed:
        wanted = set(args.feed)
        unknown = wanted - {f.url for f in feeds}
        if unknown:
            raise ConfigError(
                f"not in {settings.feeds_file}: {', '.join(sorted(unknown))} (add the feed there first)"
            )
        feeds = [f for f in feeds if f.url in wanted]
    if not feeds:
        print(f"no feeds configured in {settings.feeds_file}", file=sys.stderr)
        return 0
    store = Store.open(settings.database_url)
    workers = None
    try:
        states = store.feed_states([f.url for f in feeds])
        if not args.feed:
            # A feed that answered 410 Gone is only fetched again when named with --feed.
            gone = {url for url, state in states.items() if state.gone}
            if gone:
                print(
                    f"skipping {len(gone)} gone {_plural(len(gone), 'feed')} (410): see `aggregator feeds`",
                    file=sys.stderr,
                )
                feeds = [f for f in feeds if f.url not in gone]
        if any(will_parse(states.get(f.url)) for f in feeds):
            # Before the pass starts a thread, and with no database connection open, so that
            # the workers can be forked (see start_workers). A pass that may be all 304s starts
            # none: it spawns them if a feed does change.
            store.engine.dispose()
            workers = start_workers(settings, fork=True)
        progress = Progress(len(feeds), _unwrapped(sys.stderr))
        started = datetime.now(UTC)

        async def go() -> list[RefreshOutcome]:
            async with Fetcher(settings.fetch) as fetcher:
                pipeline = Pipeline(settings, store, fetcher, workers=workers)
                try:
                    return await pipeline.refresh_all(feeds, on_done=progress.advance)
                finally:
                    pipeline.close()

        try:
            outcomes = asyncio.run(go())
        finally:
            progress.close()
    finally:
        store.close()
        if workers is not None:
            workers.shutdown()  # closed already unless the pass never began
    for outcome in outcomes:
        if not outcome.ok:
            print(f"failed: {redact_url(outcome.feed_url)}: {_failure(outcome)}", file=sys.stderr)
    seconds = (datetime.now(UTC) - started).total_seconds()
    ok = sum(o.ok for o in outcomes)
    new = sum(o.new_articles for o in outcomes)
    duplicates = sum(o.duplicates for o in outcomes)
    print(
        f"fetched {len(outcomes)} {_plural(len(outcomes), 'feed')} in {seconds:.1f}s: {ok} ok "
        f"({sum(o.not_modified for o in outcomes)} not modified), {len(outcomes) - ok} failed; "
        f"{new} new {_plural(new, 'article')} ({duplicates} {_plural(duplicates, 'duplicate')})"
    )
    return 0


def _failure(outcome: RefreshOutcome) -> str:
    """Why a feed failed, each thing said once: "HTTP 404 Not Found", "… (timeout)"."""
    message = outcome.error or ""
    if outcome.status and f"HTTP {outcome.status}" not in message:
        message = f"HTTP {outcome.status}: {message}"
    kind = outcome.error_kind or "error"
    return message if kind in ("http", "gone") or kind in message else f"{message} ({kind})"


def cmd_digest(args: argparse.Namespace) -> int:
    from aggregator.delivery import prepare_digest, send_digest
    from aggregator.digest import fit, render_message, render_text
    from aggregator.errors import DeliveryError
    from aggregator.storage import Store

    settings = _settings(args)
    since = _parse_time(args.since, "--since") if args.since else None
    chosen = settings.digest_named(args.name)
    store = Store.open(settings.database_url, create=args.send)
    now = datetime.now(UTC)
    try:
        if args.send:
            # Without --name, every configured digest; one failing does not stop the others.
            targets = [chosen] if args.name else list(settings.all_digests)
            failed: DeliveryError | None = None
            for target in targets:
                label = f"{target.name} digest" if len(targets) > 1 else "digest"
                try:
                    report = send_digest(store, settings, now, since, digest=target)
                except DeliveryError as exc:
                    where = f"{label}: " if len(targets) > 1 else ""
                    print(f"aggregator: {where}{exc}", file=sys.stderr)
                    failed = exc
                    continue
                if report.pending is not None:
                    count = report.pending.count
                    print(
                        f"delivered the {label} held back on {report.pending.date_label} "
                        f"({count} {_stories(count)}) to {report.pending_destination}"
                    )
                if report.digest is None:
                    print(f"{label}: nothing new to send" if len(targets) > 1 else "nothing new to send")
                else:
                    count = report.digest.count
                    print(f"sent {label} with {count} {_stories(count)} to {report.destination}")
            return 1 if failed else 0
        digest = prepare_digest(store, settings, now, since, chosen)
    finally:
        store.close()
    if digest is None:
        print("nothing new to send", file=sys.stderr)
        return 0
    if args.output:
        path = Path(args.output)
        if path.suffix.lower() == ".eml":
            _write(path, render_message(digest, chosen, now).as_bytes())
        elif path.suffix.lower() in (".html", ".htm"):
            _write(path, fit(digest, chosen.max_html_bytes)[1].encode("utf-8"))
        else:
            raise ConfigError(f"--output {path}: use a .eml or .html file name")
        print(f"wrote preview of {digest.count} {_stories(digest.count)} to {path} (nothing marked sent)")
        return 0
    text = render_text(fit(digest, chosen.max_html_bytes)[0])
    sys.stdout.write(text if text.endswith("\n") else text + "\n")  # the prompt on a line of its own
    return 0


def cmd_feeds(args: argparse.Namespace) -> int:
    from aggregator.storage import Store

    settings = _settings(args)
    store = Store.open(settings.database_url, create=False)
    try:
        statuses = [
            replace(status, name=feed.label(status.title))
            for status, feed in zip(
                store.feed_statuses([(f.url, f.display_name) for f in settings.feeds]),
                settings.feeds,
                strict=True,
            )
        ]
        failures = [
            (d.name, f) for d in settings.all_digests if (f := store.last_digest_failure(d.name)) is not None
        ]
    finally:
        store.close()
    if args.json:
        for status in statuses:
            record = asdict(status)
            for key in ("last_fetch", "next_fetch"):
                record[key] = _iso(record[key])
            for key in ("url", "fetch_url", "moved_to"):
                record[key] = redact_url(record[key]) if record[key] else record[key]
            _json_line(record)
        return 0
    if not statuses:
        print(f"no feeds configured in {settings.feeds_file}")
    for name, (when, why) in failures:
        print(f"digest {name}: NOT DELIVERED at {_human(when)}: {why}\n")
    # Two entries of feeds.yaml that end up polling one feed (a homepage and its feed's URL).
    polled: dict[str, list[FeedStatus]] = {}
    for status in statuses:
        polled.setdefault(status.fetch_url or status.url, []).append(status)
    configured = {f.url: f for f in settings.feeds}
    for s in statuses:
        if s.gone:
            state = "GONE (HTTP 410): no longer polled"
        elif s.last_fetch is None:
            state = "never fetched"
        elif s.consecutive_failures:
            state = f"FAILING {s.consecutive_failures}x, {s.error_kind}: {s.last_error}"
        else:
            state = f"ok (HTTP {s.last_status})"
        every = f"; polled every {_duration(s.poll_interval)}" if s.poll_interval else ""
        asked = settings.interval_for(configured[s.url]).total_seconds()
        if s.poll_interval and _duration(s.poll_interval) != _duration(asked):
            why = "it publishes rarely, or its server asks" if s.poll_interval > asked else "its server asks"
            every += f" (interval {_duration(asked)}, adapted: {why})"
        notes = []
        twins = [t for t in polled[s.fetch_url or s.url] if t is not s]
        if twins:
            notes.append(
                f"the same feed as {twins[0].name} ({redact_url(twins[0].url)}): both are polled; "
                "remove one from feeds.yaml"
            )
        if s.gone:
            notes.append("remove it from feeds.yaml, or `aggregator fetch --feed URL` to try it again")
        if s.fetch_url and s.fetch_url_reason == "moved":
            notes.append(f"moved permanently to {redact_url(s.fetch_url)}: update feeds.yaml to that URL")
        elif s.fetch_url and s.fetch_url_reason == "discovered":
            notes.append(f"the URL is a web page; its feed {redact_url(s.fetch_url)} is polled instead")
        if s.last_warning and not s.gone:
            notes.append(f"warning: {s.last_warning}")
        if s.moved_to:
            notes.append(f"redirects permanently to {redact_url(s.moved_to)} (adopted if it persists)")
        print(
            f"{s.name}\n  {redact_url(s.url)}\n  {state}; {s.article_count} "
            f"{_plural(s.article_count, 'article')}{every}; "
            f"last fetch {_human(s.last_fetch)}; next {_human(s.next_fetch)}"
        )
        for note in notes:
            print(f"  ! {note}")
    return 0


def cmd_articles(args: argparse.Namespace) -> int:
    from aggregator.storage import Store

    settings = _settings(args)
    since = _parse_time(args.since, "--since") if args.since else None
    store = Store.open(settings.database_url, create=False)
    try:
        rows = store.list_articles(since=since, feed_url=args.feed, limit=args.limit)
    finally:
        store.close()
    configured = {f.url: f for f in settings.feeds}

    def source(article: StoredArticle) -> str:
        feed = configured.get(article.feed_url)
        return (
            feed.label(article.feed_name) if feed else feed_label(article.feed_url, title=article.feed_name)
        )

    if rows and not args.json:
        print("id\tpublished (newest first)\tsource\ttitle")
    for a in rows:
        if args.json:
            _json_line(
                {
                    "id": a.id,
                    "feed_url": redact_url(a.feed_url),
                    "feed_name": source(a),
                    "url": a.url,
                    "title": a.title,
                    "author": a.author,
                    "published": _iso(a.published),
                    "first_seen": _iso(a.first_seen),
                    "extraction": a.extraction,
                    "duplicate_of": a.duplicate_of,
                    "summary": a.summary,
                    "text": a.text,
                }
            )
        else:
            dup = f" (duplicate of {a.duplicate_of})" if a.duplicate_of else ""
            print(
                f"{a.id}\t{_human(a.published or a.first_seen)}\t"
                f"{source(a)}\t{a.title}{dup}\n\t{a.url or '(no link)'}"
            )
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from aggregator.bounds import Refused
    from aggregator.extractor import extract_page
    from aggregator.fetcher import PAGE_ACCEPT, Fetcher

    settings = _settings(args)
    failures = 0

    async def fetch_all(urls: list[str]) -> dict[str, tuple[bytes, str] | str]:
        async with Fetcher(settings.fetch) as fetcher:

            async def one(url: str) -> tuple[bytes, str] | str:
                try:
                    result = await fetcher.fetch(url, accept=PAGE_ACCEPT)
                except FetchError as exc:
                    return f"{exc.kind}: {exc}"
                return result.body, result.final_url

            results = await asyncio.gather(*(one(u) for u in urls))
        return dict(zip(urls, results, strict=True))

    urls = [s for s in args.sources if s.lower().startswith(("http://", "https://"))]
    fetched = asyncio.run(fetch_all(urls)) if urls else {}
    for source in args.sources:
        error = None
        body: bytes = b""
        page_url: str | None = None
        if source in fetched:
            got = fetched[source]
            if isinstance(got, str):
                error = got
            else:
                body, page_url = got
        else:
            try:
                body = Path(source).read_bytes()
            except OSError as exc:
                error = f"cannot read: {exc.strerror or exc}"
        page = None
        if error is None:
            try:
                page = extract_page(body, page_url, selector=args.selector)
            except Refused as exc:
                error = f"not extracted: {exc}"
        if error is None and page is None:
            error = "no article text found"
        failures += error is not None
        record: dict[str, Any] = {
            "source": source,
            "url": (page.canonical_url if page else None) or page_url,
            "title": page.title if page else None,
            "author": page.author if page else None,
            "published": _iso(page.published) if page else None,
            "site_name": page.site_name if page else None,
            "language": page.language if page else None,
            "text": page.text if page else "",
            "image": page.image if page else None,
            "error": error,
        }
        if args.html:
            record["html"] = page.html if page else ""
        if args.json:
            _json_line(record)
        else:
            print(f"== {source}")
            if error:
                print(f"error: {error}\n")
                continue
            for key in ("title", "author", "published", "url"):
                print(f"{key}: {record[key] or '-'}")
            print()
            print(record["text"])
            print()
            if args.html:
                print(record["html"])
                print()
    return 1 if failures else 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from aggregator.database import redact, sqlite_path

    settings = _settings(args)
    source = settings.source or f"{resolve_config_path(args.config, os.environ)} (absent: embedded defaults)"
    delivery = (
        f"SMTP {settings.smtp.host}:{settings.smtp.port}"
        if settings.smtp
        else f"the outbox folder {Path(settings.outbox_dir).absolute()}/"
    )
    path = sqlite_path(settings.database_url)
    if path is None:
        database = redact(settings.database_url)
    elif path.exists():
        database = f"{path} (SQLite)"
    else:
        database = f"{path} (SQLite; not created yet: `aggregator fetch` or `aggregator run` creates it)"
    feeds = len(settings.feeds)
    print(f"{source}: OK")
    print(f"  feeds:    {feeds} {_plural(feeds, 'feed')} from {settings.feeds_file.absolute()}")
    print(f"  database: {database}")
    for digest in settings.all_digests:
        print(f"  digest:   {digest.name}, {digest.schedule_label}, to {', '.join(digest.to)} via {delivery}")
    return 0


def cmd_opml(args: argparse.Namespace) -> int:
    from aggregator.opml import export_opml, import_opml

    settings = _settings(args)
    if args.opml_command == "import":
        report = import_opml(Path(args.file), settings.feeds_file)
        added, present = report.added, report.present
        print(f"added {added} {_plural(added, 'feed')} to {settings.feeds_file} ({present} already there)")
        for reason in report.skipped:
            print(f"skipped {reason}", file=sys.stderr)
        return 0
    document = export_opml(settings.feeds)
    hidden = sum(redact_url(f.url) != f.url for f in settings.feeds)
    if hidden:
        print(
            f"note: {hidden} feed URL(s) carry a password or token, exported as ***: "
            "enter it in the other reader",
            file=sys.stderr,
        )
    if args.output:
        _write(Path(args.output), document.encode("utf-8"))
    else:
        sys.stdout.write(document)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from aggregator.scheduler import heartbeat_age
    from aggregator.storage import Store

    settings = _settings(args)
    age = heartbeat_age(settings.service.heartbeat_file, datetime.now(UTC))
    limit = max(60.0, 4 * settings.service.check_every.total_seconds())
    if age is None or age.total_seconds() > limit:
        print("unhealthy: the service has not written a heartbeat recently", file=sys.stderr)
        return 1
    from aggregator.database import create_db_engine

    store = Store(create_db_engine(settings.database_url, create=False))
    try:
        store.ping()
    finally:
        store.close()
    print(f"healthy: heartbeat {age.total_seconds():.0f}s ago, database reachable")
    return 0


_COMMANDS = {
    "run": cmd_run,
    "fetch": cmd_fetch,
    "digest": cmd_digest,
    "feeds": cmd_feeds,
    "articles": cmd_articles,
    "extract": cmd_extract,
    "check-config": cmd_check_config,
    "opml": cmd_opml,
    "health": cmd_health,
}


# -- helpers -------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on a terminal; silent when stderr is not a terminal."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.stream = stream
        self.enabled = stream.isatty()
        self._draw()

    def advance(self, outcome: RefreshOutcome) -> None:
        self.done += 1
        self.failed += not outcome.ok
        self._draw()

    def _draw(self) -> None:
        if not self.enabled or not self.total:
            return
        width = 30
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        failed = f", {self.failed} failed" if self.failed else ""
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} feeds{failed}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.total:
            self.stream.write("\n")
            self.stream.flush()


def _plural(count: int, word: str, plural: str | None = None) -> str:
    """``word`` or its plural, as ``count`` asks ("1 feed", "2 feeds", "1 story", "3 stories")."""
    return word if count == 1 else plural or word + "s"


def _stories(count: int) -> str:
    return _plural(count, "story", "stories")


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def _parse_time(value: str, flag: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{flag} {value!r}: not an ISO 8601 time (e.g. 2026-11-28T07:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes}m"
    hours = minutes / 60
    return f"{hours:.0f}h" if hours < 48 else f"{hours / 24:.1f}d"


def _human(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M %Z") if value else "-"


def _json_line(record: dict[str, Any]) -> None:
    sys.stdout.write(json_safe(json.dumps(record, ensure_ascii=False)) + "\n")


def _unwrapped(stream: TextIO) -> TextIO:
    """The stream under ``_Printable``: for our own control sequences (the progress bar's \\r)."""
    return stream.stream if isinstance(stream, _Printable) else stream


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise AggregatorError(f"cannot write {path}: {exc.strerror or exc}") from None

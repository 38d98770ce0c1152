"""Subscriptions in and out of feeds.yaml as OPML 2.0."""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import NamedTuple

import yaml
from pydantic import ValidationError

from aggregator.config import FeedConfig, load_feeds
from aggregator.errors import ConfigError
from aggregator.links import redact_url


class ImportReport(NamedTuple):
    added: int
    present: int  # already in feeds.yaml
    skipped: tuple[str, ...] = ()  # outlines that are no feed we can poll, and why


def read_opml(data: bytes, source: str = "OPML", skipped: list[str] | None = None) -> list[FeedConfig]:
    """Return the feeds in an OPML document; folders (parent outlines) become tags. An outline
    whose feed cannot be polled (not an http(s) URL, a bad name) is left out, and said why in
    ``skipped``."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ConfigError(f"{source}: not valid OPML: {exc}") from None
    body = root.find("body")
    if root.tag != "opml" or body is None:
        raise ConfigError(f"{source}: not an OPML document (no <opml><body>)")
    feeds: list[FeedConfig] = []
    seen: set[str] = set()

    def walk(element: ET.Element, folders: list[str]) -> None:
        for outline in element.findall("outline"):
            url = (outline.get("xmlUrl") or outline.get("xmlurl") or "").strip()
            label = (outline.get("title") or outline.get("text") or "").strip()
            if url:
                if url in seen:
                    continue
                seen.add(url)
                categories = [
                    c.strip().strip("/")
                    for c in (outline.get("category") or "").split(",")
                    if c.strip().strip("/")
                ]
                tags = list(dict.fromkeys([*folders, *categories]))
                try:
                    feeds.append(FeedConfig(url=url, name=label or None, tags=tags))
                except ValidationError as exc:
                    if skipped is not None:
                        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                        skipped.append(f"{redact_url(url)[:200]}: {reason}")
            else:
                walk(outline, [*folders, label] if label else folders)

    walk(body, [])
    return feeds


def import_opml(opml_path: Path, feeds_path: Path) -> ImportReport:
    """Append the OPML's feeds that feeds.yaml lacks; return what was added, already there and
    skipped."""
    try:
        data = opml_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{opml_path}: cannot read: {exc.strerror or exc}") from None
    skipped: list[str] = []
    incoming = read_opml(data, str(opml_path), skipped)
    existing = {f.url for f in load_feeds(feeds_path)} if feeds_path.exists() else set()
    new = [f for f in incoming if f.url not in existing]
    if new:
        original = feeds_path.read_text(encoding="utf-8") if feeds_path.exists() else ""
        entries = [{k: v for k, v in (("url", f.url), ("name", f.name), ("tags", f.tags)) if v} for f in new]
        block = yaml.safe_dump(entries, sort_keys=False, allow_unicode=True, width=1000)
        indented = "".join("  " + line if line.strip() else line for line in block.splitlines(True))
        if not original.strip() or "feeds:" not in original or not existing:
            # Empty or a bare "feeds: []": rewrite the list, keeping the leading comments.
            comments = "".join(line for line in original.splitlines(True) if line.lstrip().startswith("#"))
            text = comments + "feeds:\n" + indented
        else:
            text = original if original.endswith("\n") else original + "\n"
            text += f"  # imported from {opml_path.name}\n" + indented
        try:
            merged = yaml.safe_load(text) or {}
            listed = merged.get("feeds") or []
        except (yaml.YAMLError, AttributeError):
            listed = []
        merged_urls = {f.get("url") for f in listed if isinstance(f, dict)}
        if not {f.url for f in new} <= merged_urls:
            # A flow-style list or odd layout: appending text would not extend the list.
            raise ConfigError(f"{feeds_path}: cannot append to this layout; write the list in block style")
        _atomic_write(feeds_path, text)
        load_feeds(feeds_path)
    return ImportReport(len(new), len(incoming) - len(new), tuple(skipped))


def export_opml(feeds: tuple[FeedConfig, ...], title: str = "aggregator subscriptions") -> str:
    """Return an OPML 2.0 document listing ``feeds``, one folder per first tag."""
    root = ET.Element("opml", version="2.0")
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = title
    ET.SubElement(head, "dateCreated").text = format_datetime(datetime.now(UTC))
    body = ET.SubElement(root, "body")
    folders: dict[str, ET.Element] = {}
    for feed in feeds:
        parent = body
        if feed.tags:
            parent = folders.get(feed.tags[0]) or folders.setdefault(
                feed.tags[0],
                ET.SubElement(body, "outline", text=feed.tags[0], title=feed.tags[0]),
            )
        attributes = {
            "type": "rss",
            "text": feed.display_name,
            "title": feed.display_name,
            "xmlUrl": redact_url(feed.url),  # a password in the URL stays in feeds.yaml
        }
        if len(feed.tags) > 1:
            attributes["category"] = ",".join(feed.tags[1:])
        ET.SubElement(parent, "outline", attributes)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config import FeedConfig, load_feeds
from aggregator.errors import ConfigError
from aggregator.opml import export_opml, import_opml, read_opml

OPML = b"""<?xml version="1.0"?>
<opml version="2.0"><head><title>Mine</title></head><body>
  <outline text="News">
    <outline type="rss" text="Alpha" xmlUrl="https://alpha.example/feed"/>
    <outline type="rss" text="Beta" title="Beta Wire" xmlUrl="https://beta.example/rss"
             category="/wire,/agencies"/>
  </outline>
  <outline type="rss" text="Loose" xmlUrl="https://loose.example/atom"/>
  <outline type="rss" text="Not http" xmlUrl="ftp://nope.example/feed"/>
</body></opml>"""


def test_read_opml_folders_become_tags() -> None:
    feeds = read_opml(OPML)
    assert [(f.url, f.name, f.tags) for f in feeds] == [
        ("https://alpha.example/feed", "Alpha", ["News"]),
        ("https://beta.example/rss", "Beta Wire", ["News", "wire", "agencies"]),
        ("https://loose.example/atom", "Loose", []),
    ]


def test_import_appends_only_new_feeds_and_keeps_comments(tmp_path: Path) -> None:
    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text("# my feeds\nfeeds:\n  - url: https://alpha.example/feed\n    name: A\n")
    opml_file = tmp_path / "subs.opml"
    opml_file.write_bytes(OPML)
    assert import_opml(opml_file, feeds_file)[:2] == (2, 1)
    text = feeds_file.read_text()
    assert text.startswith("# my feeds\n")
    assert [f.url for f in load_feeds(feeds_file)] == [
        "https://alpha.example/feed",
        "https://beta.example/rss",
        "https://loose.example/atom",
    ]
    assert import_opml(opml_file, feeds_file)[:2] == (0, 3)  # idempotent


def test_import_into_empty_list_and_refuse_flow_style(tmp_path: Path) -> None:
    opml_file = tmp_path / "subs.opml"
    opml_file.write_bytes(OPML)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# none yet\nfeeds: []\n")
    assert import_opml(opml_file, empty)[:2] == (3, 0)
    assert len(load_feeds(empty)) == 3
    flow = tmp_path / "flow.yaml"
    flow.write_text("feeds: [{url: 'https://x.example/f'}]\n")
    before = flow.read_text()
    with pytest.raises(ConfigError, match="block style"):
        import_opml(opml_file, flow)
    assert flow.read_text() == before  # nothing lost


def test_bad_opml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid OPML"):
        read_opml(b"<opml><body>", "x.opml")
    with pytest.raises(ConfigError, match="not an OPML"):
        read_opml(b"<rss/>", "x.opml")


def test_export_round_trips() -> None:
    feeds = (
        FeedConfig(url="https://a.example/f", name="A & Co", tags=["world", "daily"]),
        FeedConfig(url="https://b.example/f"),
    )
    document = export_opml(feeds)
    back = read_opml(document.encode())
    assert [(f.url, f.name) for f in back] == [
        ("https://a.example/f", "A & Co"),
        ("https://b.example/f", "b.example"),
    ]
    assert back[0].tags == ["world", "daily"]


def test_outlines_that_are_no_pollable_feed_are_skipped_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aggregator.cli import main

    opml = tmp_path / "hostile.opml"
    opml.write_text(
        "<opml><body><outline xmlUrl='http://' text='No host'/>"
        "<outline xmlUrl='javascript:alert(1)' text='Script'/>"
        "<outline xmlUrl='https://ok.example/feed' text='Fine'/></body></opml>"
    )
    config = tmp_path / "aggregator.yaml"
    config.write_text("feeds_file: feeds.yaml\n")
    (tmp_path / "feeds.yaml").write_text("feeds: []\n")
    assert main(["opml", "import", str(opml), "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "added 1 feed to" in captured.out
    assert "skipped http://: " in captured.err and "skipped javascript:alert(1): " in captured.err
    assert "Traceback" not in captured.err

"""The other libraries' private parts we use (``aggregator.internals``) are where we expect them
and do what we expect: an upgrade that moves one fails here, with the library's name, instead
of in a refresh."""

from __future__ import annotations

import asyncio
import ssl
import sys

import httpcore
import httpx
import lxml.html

from aggregator.internals import feeds, network
from aggregator.internals import trafilatura as ours


def test_httpx_takes_our_connection_pool() -> None:
    class Backend(httpcore.AsyncNetworkBackend):
        async def connect_tcp(self, *args: object, **kwargs: object) -> httpcore.AsyncNetworkStream:
            raise httpcore.ConnectError("refused by the test's backend")

    transport = network.transport_with_backend(ssl.create_default_context(), 3, Backend())
    assert isinstance(transport._pool, httpcore.AsyncConnectionPool)

    async def one_request() -> str:
        async with httpx.AsyncClient(transport=transport) as client:
            try:
                await client.get("http://127.0.0.1:9/")
            except httpx.ConnectError as exc:
                return str(exc)
        return "connected"

    # httpx sends its requests through the pool we gave it (so through our backend).
    assert asyncio.run(one_request()) == "refused by the test's backend"


def test_anyio_asyncio_backend_is_imported_ahead() -> None:
    network.import_asyncio_backend()
    assert "anyio._backends._asyncio" in sys.modules


def test_feedparsers_date_parser_reads_broken_dates() -> None:
    assert tuple(feeds.loose_date("Tue, 15 Aug 2017 08:00:00 GMT") or ())[:6] == (2017, 8, 15, 8, 0, 0)
    assert feeds.loose_date("2017-08-15T08:00:00Z") is not None
    assert feeds.loose_date("not a date") is None


def test_trafilaturas_steps_are_where_page_meta_and_the_extractor_call_them() -> None:
    for name in ours.METADATA_STEPS:
        assert hasattr(ours.metadata, name), f"trafilatura.metadata.{name} moved"
    page = (
        '<html><head><title>A title - Site</title><meta name="author" content="Ann Example">'
        '<link rel="canonical" href="https://site.example/a"></head>'
        "<body><article><p>Text of the article.</p></article></body></html>"
    )
    tree = lxml.html.fromstring(page)
    document = ours.metadata.examine_meta(tree)
    assert isinstance(document, ours.Document) and document.author == "Ann Example"
    assert ours.metadata.extract_url(tree, None) == "https://site.example/a"
    assert ours.normalize_authors(None, "By J. Smith") == "J Smith"  # page_meta restores the dot
    assert "max_date" in ours.set_date_params(True)
    assert ours.DEFAULT_CONFIG.getint("DEFAULT", "MAX_FILE_SIZE") > 0
    assert ours.decode_file(b"<p>caf\xc3\xa9</p>") == "<p>café</p>"
    assert ours.is_dubious_html("<html><body>") is False
    assert ours.repair_faulty_html("<html><body><p>x</p>", "<html><body>")
    assert ours.is_image_file is not None and callable(ours.xmltotxt)
    assert (
        ours.prune_unwanted_nodes(
            lxml.html.fromstring("<div><aside>x</aside><p>y</p></div>"), [ours.AUTHOR_DISCARD_XPATHS[1]]
        )
        is not None
    )
    html = ours.convert_to_html(lxml.html.fromstring("<body><p>x</p></body>"))
    assert html is not None

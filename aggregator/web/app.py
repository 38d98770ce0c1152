"""The site's pages: server-side rendered Jinja2 with autoescape, no script, a strict
Content-Security-Policy, stored HTML only through the sanitiser, no redirects to elsewhere.

``/`` the digests sent, newest first; ``/digests/<id or run key>`` one as it was sent;
``/articles/<id>`` an article's extracted text with its sources; ``/search?q=`` the search;
``/healthz`` and ``/metrics`` as before. Everything but /healthz asks for ``service.auth``
when it is set.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from aggregator.config import Settings, WebAuth, feed_label
from aggregator.controls import clean_text, shorten
from aggregator.links import safe_link
from aggregator.models import StoredArticle
from aggregator.sanitize import clean_html
from aggregator.storage import Store

__all__ = ["CONTENT_SECURITY_POLICY", "WebContext", "make_app"]

# No script, no frame, no plugin; styles inline (the digest's own HTML is styled inline, as an
# email must be); images over https only (an article's images), and forms post only here.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
PAGE_SIZE = 50

Endpoint = Callable[[], Awaitable[tuple[int, str, str]]]  # -> (status, content type, body)


@dataclass
class WebContext:
    """What the site reads: the settings (read anew at each request: the service reloads them),
    the store, and the operations endpoints' handlers."""

    settings: Callable[[], Settings]
    store: Store
    healthz: Endpoint
    metrics: Endpoint
    search: Callable[[str, int], Any] | None = None  # query, limit -> results; None: no search


def make_app(context: WebContext) -> Starlette:
    """The site as an ASGI application."""
    environment = Environment(
        loader=PackageLoader("aggregator.web", "templates"),
        autoescape=select_autoescape(["html", "html.j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )

    def page(template: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = environment.get_template(template).render(**values)
        return HTMLResponse(html, status_code=status)

    def not_found(what: str) -> HTMLResponse:
        return page("missing.html.j2", 404, what=what)

    async def index(request: Request) -> Response:
        before = _int(request.query_params.get("before"))
        runs = await _thread(context.store.digests.sent_runs, PAGE_SIZE, before)
        older = runs[-1].id if len(runs) == PAGE_SIZE else None
        return page("index.html.j2", runs=runs, older=older, shown=_when)

    async def digest(request: Request) -> Response:
        key: str = request.path_params["key"]
        found = await _thread(context.store.digests.sent_run, int(key) if key.isdigit() else key)
        if found is None:
            return not_found("digest")
        run, html = found
        if html is None:
            return page("digest_missing.html.j2", run=run, shown=_when)
        # Our own rendering of escaped, sanitised text, as the email carried it.
        return HTMLResponse(html)

    async def article(request: Request) -> Response:
        article_id = _int(request.path_params["id"])
        found = await _thread(_reader, context, article_id) if article_id is not None else None
        if found is None:
            return not_found("article")
        return page("article.html.j2", **found)

    async def search(request: Request) -> Response:
        query = (request.query_params.get("q") or "").strip()[:500]
        results: Any = None
        error = ""
        if query and context.search is not None:
            try:
                results = await _thread(context.search, query, 50)
            except ValueError as exc:  # a query the search cannot read: said, not a 500
                error = str(exc)
        return page(
            "search.html.j2", query=query, results=results, error=error, enabled=context.search is not None
        )

    async def healthz(request: Request) -> Response:
        return _endpoint(await context.healthz())

    async def metrics(request: Request) -> Response:
        return _endpoint(await context.metrics())

    routes = [
        Route("/", index),
        Route("/digests/{key:path}", digest),
        Route("/articles/{id}", article),
        Route("/search", search),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_Guard, context=context)],
    )


class _Guard(BaseHTTPMiddleware):
    """service.auth on every page but /healthz, and the security headers on every answer."""

    def __init__(self, app: Any, context: WebContext) -> None:
        super().__init__(app)
        self._context = context

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        auth = self._context.settings().service.auth
        if request.method not in ("GET", "HEAD"):
            response: Response = PlainTextResponse("GET only\n", status_code=405)
        elif auth is not None and request.url.path != "/healthz" and not _authorised(auth, request):
            challenge = 'Basic realm="aggregator"' if auth.username is not None else "Bearer"
            response = PlainTextResponse(
                "authentication required\n", status_code=401, headers={"WWW-Authenticate": challenge}
            )
        else:
            response = await call_next(request)
        response.headers.update(_HEADERS)
        return response


def _authorised(auth: WebAuth, request: Request) -> bool:
    """Whether the request carries the configured credentials (compared in constant time)."""
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if auth.username is not None:
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        same_user = hmac.compare_digest(user.encode(), auth.username.encode())
        return hmac.compare_digest(password.encode(), auth.secret.encode()) and same_user
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), auth.secret.encode())


def _reader(context: WebContext, article_id: int) -> dict[str, Any] | None:
    """An article and its story's other copies, as the reader view shows them."""
    settings = context.settings()
    copies = context.store.articles.story_of(article_id)
    if not copies:
        return None
    article = next(a for a in copies if a.id == article_id)
    configured = {f.url: f for f in settings.feeds}

    def source(copy: StoredArticle) -> str:
        feed = configured.get(copy.feed_url)
        name = feed.label(copy.feed_name) if feed else feed_label(copy.feed_url, title=copy.feed_name)
        return shorten(" ".join(clean_text(name).split()), 80)

    words = article.text.count(" ") + 1 if article.text else 0
    return {
        "article": article,
        "title": shorten(" ".join(clean_text(article.title).split()), 400) or "(untitled)",
        "url": safe_link(article.url) or "",
        "source": source(article),
        "author": shorten(clean_text(article.author or ""), 200),
        "published": _when(article.published or article.first_seen),
        # Stored HTML was sanitised when stored; once more, for rows stored by older rules.
        "body": clean_html(article.html, safe_link(article.url)) if article.html else "",
        "minutes": max(1, math.ceil(words / 230)),
        "others": [
            {"source": source(c), "url": safe_link(c.url) or "", "id": c.id}
            for c in copies
            if c.id != article_id
        ],
    }


def _endpoint(answer: tuple[int, str, str]) -> Response:
    status, kind, body = answer
    return Response(body, status_code=status, media_type=kind)


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and len(value) < 19 else None


def _when(moment: datetime) -> str:
    return f"{moment:%a} {moment.day} {moment:%b %Y}, {moment:%H:%M} UTC"


async def _thread(function: Callable[..., Any], *args: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(function, *args)

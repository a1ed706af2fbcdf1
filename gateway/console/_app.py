"""The console's web application (Starlette): pages, log-in, security headers.

Pages are rendered on the server by Jinja2 with autoescape on for every template, so any value
from the gateway (an audit field holding HTML or script) is shown as text. No script runs in
the page; the Content-Security-Policy forbids inline script and framing. Every POST form
carries a CSRF token (the session's, or for the log-in form a double-submit cookie).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.console._client import GatewayClient, GatewayRefused
from gateway.console._config import ConsoleConfig
from gateway.console._login import LoginRefused, Logins, RegistryFile, Role, Session, Sessions
from gateway.console._text import TEXT, choose_language

__all__ = ["Console", "create_app"]

SESSION_COOKIE: Final = "tb_session"
LOGIN_CSRF_COOKIE: Final = "tb_login_csrf"
LANGUAGE_COOKIE: Final = "tb_lang"
STATIC = Path(__file__).with_name("static")
SECURITY_HEADERS: Final = (
    (
        b"content-security-policy",
        b"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)
HSTS: Final = (b"strict-transport-security", b"max-age=31536000")


class SecurityHeaders:
    """Adds the security headers to every HTTP response (Strict-Transport-Security over TLS)."""

    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app = app
        self.console = console
        over_tls = console.config.over_tls
        self.headers = [*SECURITY_HEADERS, *((HSTS,) if over_tls else ())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in self.headers}
                kept = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
                message["headers"] = kept + self.headers
            await send(message)

        await self.app(scope, receive, with_headers)


class Console:
    """What the pages share: the configuration, log-ins, sessions, the gateway client."""

    def __init__(self, config: ConsoleConfig, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.clock = clock
        self.registry = RegistryFile(config, clock)
        self.logins = Logins(config, self.registry, clock)
        self.sessions = Sessions(clock)
        self.client = GatewayClient(config)
        self.templates = Environment(
            loader=PackageLoader("gateway.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )

    # rendering --------------------------------------------------------------------------------
    def language(self, request: Request) -> str:
        return choose_language(
            request.query_params.get("lang"),
            request.cookies.get(LANGUAGE_COOKIE),
            request.headers.get("accept-language", ""),
        )

    def render(
        self, request: Request, template: str, status: int = 200, **values: Any
    ) -> HTMLResponse:
        lang = self.language(request)
        index = 0 if lang == "zh" else 1
        session = self.session(request)

        def text(key: str) -> str:
            return TEXT[key][index]

        other = "en" if lang == "zh" else "zh"
        page = self.templates.get_template(template).render(
            t=text,
            lang=lang,
            html_lang="zh-CN" if lang == "zh" else "en",
            other_lang=other,
            path=request.url.path,
            session=session,
            staff=session is not None and session.role is Role.STAFF,
            region=self.config.region,
            registry=self._registry_or_none(),
            **values,
        )
        response = HTMLResponse(page, status_code=status)
        if request.query_params.get("lang") in ("zh", "en"):
            response.set_cookie(
                LANGUAGE_COOKIE, lang, httponly=True, samesite="strict", secure=self.config.over_tls
            )
        return response

    def _registry_or_none(self) -> Any:
        try:
            return self.registry.current()
        except Exception:  # the pages name agencies by id then
            return None

    def failure(self, request: Request, status: int, key: str, detail: str = "") -> HTMLResponse:
        return self.render(request, "error.html", status, message_key=key, detail=detail)

    # sessions ---------------------------------------------------------------------------------
    def session(self, request: Request) -> Session | None:
        return self.sessions.find(request.cookies.get(SESSION_COOKIE))

    def require(self, request: Request, role: Role) -> Session:
        session = self.session(request)
        if session is None:
            raise HTTPException(401, "not_logged_in")
        if session.role is not role:
            raise HTTPException(403, "forbidden")
        return session

    async def form(self, request: Request, session: Session | None) -> dict[str, str]:
        """The posted form, after its CSRF token is checked."""
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        expected = (
            session.csrf if session is not None else request.cookies.get(LOGIN_CSRF_COOKIE, "")
        )
        given = values.get("csrf", "")
        if not expected or not secrets.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(403, "csrf")
        return values


def _login_routes(console: Console) -> list[Route]:
    async def login_page(request: Request) -> Response:
        csrf = secrets.token_urlsafe(32)
        response = console.render(request, "login.html", csrf=csrf)
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            csrf,
            httponly=True,
            samesite="strict",
            secure=console.config.over_tls,
        )
        return response

    async def login(request: Request) -> Response:
        values = await console.form(request, None)
        try:
            role, claims = console.logins.verify(values.get("token", ""))
        except LoginRefused as refused:
            return console.failure(request, refused.status, refused.message_key)
        session = console.sessions.open(
            values["token"].strip().removeprefix("Bearer ").strip(), role, claims
        )
        home = "/me/trail" if role is Role.CITIZEN else "/staff/records"
        response = RedirectResponse(home, status_code=303)
        seconds = max(1, int((claims.expires_at - console.clock()).total_seconds()))
        response.set_cookie(
            SESSION_COOKIE,
            session.session_id,
            max_age=seconds,
            httponly=True,
            samesite="strict",
            secure=console.config.over_tls,
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE)
        return response

    async def logout(request: Request) -> Response:
        session = console.session(request)
        if session is not None:
            await console.form(request, session)
            console.sessions.close(session.session_id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    async def home(request: Request) -> Response:
        session = console.session(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        return RedirectResponse(
            "/me/trail" if session.role is Role.CITIZEN else "/staff/records", status_code=303
        )

    return [
        Route("/", home),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


def create_app(
    config: ConsoleConfig, *, clock: Callable[[], datetime] | None = None
) -> SecurityHeaders:
    """The console as an ASGI application (its `Console` at `.console`), the security headers
    outermost, so that they are on every response, an error's too."""
    from gateway.console._pages import citizen_routes, proof_routes, staff_routes

    console = Console(config, clock or (lambda: datetime.now(UTC)))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        await console.client.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        key = (
            exc.detail if exc.detail in TEXT else "not_found" if exc.status_code == 404 else "error"
        )
        return console.failure(request, exc.status_code, key)

    async def crashed(request: Request, exc: Exception) -> Response:
        return console.failure(request, 500, "error")

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayRefused)
        detail = f"{exc.code.name} {exc.reason}: {exc.details}".strip()
        return console.failure(request, exc.http_status, "gateway_refused", detail)

    routes = [
        *_login_routes(console),
        *citizen_routes(console),
        *staff_routes(console),
        *proof_routes(console),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, GatewayRefused: refused, Exception: crashed},
    )
    return SecurityHeaders(app, console)

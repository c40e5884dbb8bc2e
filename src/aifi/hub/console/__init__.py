"""The hub's web console for operators, auditors and each hospital's administrators.

Server-rendered pages (Jinja2) with their own small stylesheet and charts
drawn as inline SVG: nothing is loaded from outside the hub. A person logs
in with the bearer token the hub issued them and gets a session cookie;
see :mod:`aifi.hub.console.session` for the cookie and CSRF rules and
:mod:`aifi.hub.console.pages` for what each role sees and may do.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from aifi.hub.console.docs import mount_docs
from aifi.hub.console.pages import HERE, LoginRequired, router, templates

__all__ = ["mount_console"]


def mount_console(app: FastAPI) -> None:
    """Add the console (``/console``), its static files, ``/`` and the offline API docs."""
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)
    app.add_exception_handler(LoginRequired, _to_login)
    app.add_exception_handler(StarletteHTTPException, _console_error)
    mount_docs(app)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/console", status.HTTP_303_SEE_OTHER)


async def _to_login(request: Request, exc: Exception) -> Response:
    next_url = exc.next_url if isinstance(exc, LoginRequired) else "/console"
    return RedirectResponse(
        f"/console/login?{urlencode({'next': next_url})}", status.HTTP_303_SEE_OTHER
    )


async def _console_error(request: Request, exc: Exception) -> Response:
    """A console page's error as a page a person can read; the API's stay JSON."""
    assert isinstance(exc, StarletteHTTPException)
    if not request.url.path.startswith("/console"):
        return await http_exception_handler(request, exc)
    return templates.TemplateResponse(
        request,
        "error.html",
        {"viewer": None, "status": exc.status_code, "detail": exc.detail, "message": ""},
        status_code=exc.status_code,
    )

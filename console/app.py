"""The web console and HTTP API: one FastAPI application over the domain services.

``create_app(pipeline)`` builds it around a :class:`~campaigns.attempts.pipeline.Pipeline`
(its session factory, settings and pacer), so tests and ``campaigns serve``
differ only in what they pass. The JSON API lives under ``/api/v1`` (OpenAPI at
``/api/v1/openapi.json``), LiveKit webhooks at ``/livekit/webhook``, and the
server-rendered pages everywhere else; every asset is served from ``/static``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from campaigns.attempts.pipeline import Pipeline
from campaigns.errors import CampaignError, NotFoundError
from console import pages, webhooks
from console.api.routes import router as api_router
from console.deps import NotSignedInError
from console.render import render

STATIC = Path(__file__).parent / "static"


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/livekit/"))


def _error(request: Request, status: int, detail: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"detail": detail}, status_code=status)
    return render(request, "error.html", {"status": status, "detail": detail}, status=status)


def create_app(pipeline: Pipeline) -> FastAPI:
    app = FastAPI(
        title="clinic-campaigns",
        version="1",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.pipeline = pipeline
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(api_router)
    app.include_router(webhooks.router)
    app.include_router(pages.router)

    @app.exception_handler(NotSignedInError)
    async def not_signed_in(request: Request, exc: NotSignedInError) -> Response:
        if _wants_json(request):
            return JSONResponse(
                {"detail": "sign in first: no valid token or session"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> Response:
        return _error(request, 404, str(exc))

    @app.exception_handler(CampaignError)
    async def bad_input(request: Request, exc: CampaignError) -> Response:
        return _error(request, 400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": jsonable_errors(exc)}, status_code=422)
        return _error(request, 422, "the form is incomplete or malformed")

    return app


def jsonable_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    return [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", "")} for error in exc.errors()
    ]

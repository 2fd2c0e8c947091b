"""HTTP plumbing: one error shape (problem+json), an endpoint registry that parses requests with
pydantic and describes itself as OpenAPI, and the middleware that ties them together."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from .auth import Principal, TokenError, verify_token
from .unavailable import is_database_error

log = logging.getLogger("exitbox.http")
PROBLEM = "application/problem+json"

PROBLEM_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Validation failed",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class Problem(Exception):
    """An RFC 9457 problem; ``slug`` names the type (``/problems/<slug>``)."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.title = title or PROBLEM_TITLES.get(status, "Error")
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": f"/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            out["instance"] = instance
        out.update(self.extra)
        return out


def problem_response(p: Problem, request: web.Request | None = None) -> web.Response:
    instance = request.path if request is not None else None
    return web.Response(
        status=p.status,
        text=json.dumps(p.body(instance)),
        content_type=PROBLEM,
        headers=p.headers,
    )


def not_found(what: str) -> Problem:
    return Problem(404, "not-found", f"{what} was not found")


def validation_problem(exc: ValidationError, where: str) -> Problem:
    errors = []
    for e in exc.errors(include_url=False, include_input=False):
        loc = [str(x) for x in e.get("loc", ())]
        errors.append({"field": ".".join(loc) or where, "in": where, "reason": e.get("msg", "")})
    first = errors[0] if errors else {"field": where, "reason": "invalid"}
    return Problem(
        422,
        "validation",
        f"{where} field {first['field']!r}: {first['reason']}",
        errors=errors,
    )


# --------------------------------------------------------------------------- endpoints


@dataclass
class Call:
    request: web.Request
    principal: Principal | None
    body: Any = None
    query: Any = None

    @property
    def app(self) -> web.Application:
        return self.request.app

    def match(self, name: str) -> str:
        return self.request.match_info[name]

    def require(self) -> Principal:
        if self.principal is None:
            raise Problem(401, "unauthorized", "a bearer token is required")
        return self.principal


Handler = Callable[[Call], Awaitable[Any]]


@dataclass
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    roles: tuple[str, ...] | None  # None: public
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None
    status: int = 200
    problems: tuple[int, ...] = ()
    extra_headers: dict[str, str] = field(default_factory=dict)


class Api:
    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        roles: tuple[str, ...] | None,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: Any = None,
        status: int = 200,
        problems: tuple[int, ...] = (),
        headers: dict[str, str] | None = None,
    ) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(
                    method,
                    path,
                    fn,
                    summary,
                    tag,
                    roles,
                    body,
                    query,
                    response,
                    status,
                    problems,
                    headers or {},
                )
            )
            return fn

        return deco

    def register(self, app: web.Application) -> None:
        for ep in self.endpoints:
            app.router.add_route(ep.method, ep.path, _wrap(ep))


def _principal(request: web.Request) -> Principal | None:
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            401,
            "unauthorized",
            "Authorization must be 'Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return verify_token(request.app[SECRET_KEY], token.strip())
    except TokenError as exc:
        raise Problem(
            401, "unauthorized", str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from None


SECRET_KEY: web.AppKey[str] = web.AppKey("secret", str)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)


def _wrap(ep: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    query_adapter = ep.query

    async def handler(request: web.Request) -> web.StreamResponse:
        if ep.roles is None:
            # public reads ignore a token they do not need, even a broken one
            try:
                principal = _principal(request)
            except Problem:
                principal = None
        else:
            principal = _principal(request)
        if ep.roles is not None:
            if principal is None:
                raise Problem(
                    401, "unauthorized", "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
                )
            if principal.role not in ep.roles and principal.role != "admin":
                raise Problem(403, "forbidden", f"role {principal.role} may not call {ep.method} {ep.path}")
        call = Call(request, principal)
        if query_adapter is not None:
            try:
                call.query = query_adapter.model_validate(dict(request.query))
            except ValidationError as exc:
                raise validation_problem(exc, "query") from None
        if ep.body is not None:
            raw = await request.read()
            if not raw:
                raise Problem(400, "malformed", "a JSON body is required")
            try:
                data = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise Problem(400, "malformed", f"the body is not valid JSON: {exc}") from None
            try:
                call.body = ep.body.model_validate(data)
            except ValidationError as exc:
                raise validation_problem(exc, "body") from None
        result = await ep.handler(call)
        if isinstance(result, web.StreamResponse):
            return result
        status = ep.status
        headers: dict[str, str] = {}
        if isinstance(result, Reply):
            status, headers, result = result.status, result.headers, result.data
        return web.json_response(_dump(result), status=status, headers=headers)

    return handler


@dataclass
class Reply:
    data: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- middleware


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid):
        rid = uuid.uuid4().hex[:16]
    request[REQUEST_ID] = rid
    try:
        resp = await handler(request)
    except Problem as p:
        resp = problem_response(p, request)
    except web.HTTPRequestEntityTooLarge:
        resp = problem_response(Problem(413, "too-large", "the request body is larger than allowed"), request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status, "http-error")
        detail = {
            404: f"no such resource: {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
        }.get(exc.status, exc.reason)
        headers = {}
        if exc.status == 405 and "Allow" in exc.headers:
            headers["Allow"] = exc.headers["Allow"]
        resp = problem_response(Problem(exc.status, slug, detail, headers=headers), request)
    except Exception as exc:
        if is_database_error(exc):
            resp = problem_response(
                Problem(
                    503,
                    "unavailable",
                    "the database is unreachable; try again shortly",
                    headers={"Retry-After": "5"},
                ),
                request,
            )
        else:
            log.exception("unhandled error", extra={"request_id": rid, "path": request.path})
            resp = problem_response(
                Problem(500, "internal", "an unexpected error occurred; it has been logged"),
                request,
            )
    resp.headers["X-Request-Id"] = rid
    return resp


# --------------------------------------------------------------------------- OpenAPI


def _schema_of(tp: Any, components: dict[str, Any], mode: str = "validation") -> dict[str, Any]:
    schema = TypeAdapter(tp).json_schema(
        ref_template="#/components/schemas/{model}",
        mode=mode,  # type: ignore[arg-type]
    )
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        components[tp.__name__] = schema
        return {"$ref": f"#/components/schemas/{tp.__name__}"}
    return schema


def openapi(api: Api, title: str, version: str) -> dict[str, Any]:
    components: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "instance": {"type": "string"},
            },
            "additionalProperties": True,
        }
    }
    paths: dict[str, Any] = {}
    for ep in api.endpoints:
        op: dict[str, Any] = {
            "summary": ep.summary,
            "tags": [ep.tag],
            "operationId": ep.handler.__name__,
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", ep.path)
        ]
        if ep.query is not None:
            qs = ep.query.model_json_schema()
            required = set(qs.get("required", []))
            for name, prop in qs.get("properties", {}).items():
                params.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in required,
                        "schema": {k: v for k, v in prop.items() if k != "title"},
                    }
                )
        for name, desc in ep.extra_headers.items():
            params.append(
                {
                    "name": name,
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                    "description": desc,
                }
            )
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema_of(ep.body, components)}},
            }
        responses: dict[str, Any] = {}
        ok: dict[str, Any] = {"description": "success"}
        if ep.response is not None:
            ok["content"] = {
                "application/json": {"schema": _schema_of(ep.response, components, "serialization")}
            }
        responses[str(ep.status)] = ok
        codes = set(ep.problems) | {400, 500, 503}
        if ep.body is not None or ep.query is not None:
            codes.add(422)
        if ep.roles is not None:
            codes |= {401, 403}
        for code in sorted(codes):
            responses[str(code)] = {
                "description": PROBLEM_TITLES.get(code, "error"),
                "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }
        op["responses"] = responses
        if ep.roles is not None:
            op["security"] = [{"bearer": []}]
            op["description"] = "Roles: " + ", ".join(ep.roles) + " (and admin)."
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }

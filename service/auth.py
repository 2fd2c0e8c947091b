"""Signed bearer tokens (JWT, HS256) carrying a role and a scope."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Literal, cast

import jwt

Role = Literal["commuter", "kitchen", "operator", "cabinet", "admin"]
ROLES: tuple[Role, ...] = ("commuter", "kitchen", "operator", "cabinet", "admin")
ISSUER = "exitbox"


class TokenError(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    role: Role
    subject: str
    scope: str  # commuter, kitchen, station or cabinet id; "*" for admin

    def can(self, role: Role, scope_id: str) -> bool:
        """May act as ``role`` on ``scope_id``? Admin may do everything."""
        return self.role == "admin" or (self.role == role and self.scope == scope_id)


def mint_token(
    secret: str, role: str, subject: str, scope: str | None = None, ttl_hours: int = 24 * 7
) -> str:
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if not subject or len(subject) > 64:
        raise TokenError("subject must be 1 to 64 characters")
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": subject,
        "role": role,
        "scope": scope or ("*" if role == "admin" else subject),
        "iat": now,
        "exp": now + ttl_hours * 3600,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(secret: str, token: str) -> Principal:
    """The principal of a valid, unexpired token. A token checked once is remembered (a client
    sends the same token with every request) and only its expiry is checked again."""
    principal, exp = _verified(secret, token)
    if time.time() >= exp:
        raise TokenError("the token has expired")
    return principal


@functools.lru_cache(maxsize=8192)
def _verified(secret: str, token: str) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            issuer=ISSUER,
            options={"require": ["exp", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired") from None
    except jwt.PyJWTError:
        raise TokenError("the token is not valid") from None
    role = claims.get("role")
    scope = claims.get("scope")
    if role not in ROLES or not isinstance(scope, str) or not scope:
        raise TokenError("the token has no valid role and scope")
    return Principal(cast(Role, role), str(claims["sub"]), scope), float(claims["exp"])

"""Settings, read once from the environment (prefix EXITBOX_, plus DATABASE_URL)."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "change-me", "changeme", "secret", "exitbox", "demo"}
MIN_SECRET_LENGTH = 32


class SettingsError(ValueError):
    pass


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXITBOX_", extra="ignore")

    home: Path = Field(default=Path(".exitbox"), description="data folder (embedded database, secret)")
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "EXITBOX_DATABASE_URL"),
        description="PostgreSQL 14+ to use; unset: an embedded server under home",
    )
    secret: SecretStr | None = Field(default=None, description="token and code signing secret")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    grace_minutes: int = Field(default=10, ge=0, le=120)
    deposit_margin_minutes: int = Field(default=3, ge=0, le=60)
    code_attempts_per_minute: int = Field(default=5, ge=1, le=1000)
    orders_per_minute: int = Field(default=10, ge=1, le=100_000, description="per token")
    code_lockout_seconds: int = Field(default=60, ge=1, le=3600)
    expiry_sweep_seconds: float = Field(default=15.0, gt=0, le=3600)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    token_ttl_hours: int = Field(default=24 * 7, ge=1, le=24 * 366)
    demo_speed: float = Field(default=20.0, gt=0, le=1000)
    planner_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    planner_seconds: float = Field(default=2.0, gt=0, le=60)
    pool_min: int = Field(default=2, ge=1, le=100)
    pool_max: int = Field(default=20, ge=1, le=500)
    gc_full_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="full garbage collections of `serve`, every so often"
    )
    log_level: str = "INFO"

    def resolve_secret(self, demo: bool = False) -> str:
        """EXITBOX_SECRET, or a secret generated once into $EXITBOX_HOME/secret."""
        if self.secret is not None:
            value = self.secret.get_secret_value()
            if not demo and (value.strip().lower() in PLACEHOLDER_SECRETS or len(value) < MIN_SECRET_LENGTH):
                raise SettingsError(
                    "EXITBOX_SECRET is a placeholder or shorter than "
                    f"{MIN_SECRET_LENGTH} characters; set a real secret (or unset it)"
                )
            return value
        path = self.home / "secret"
        if path.exists():
            return path.read_text(encoding="utf-8").strip()
        self.home.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        path.touch(mode=0o600)
        path.write_text(value, encoding="utf-8")
        return value

"""Service configuration: environment variables prefixed ``CXR_`` or a ``.env`` file.

Every field is typed and documented; the README's configuration table lists them. Secrets are
:class:`pydantic.SecretStr` (never printed) and the built-in default API token is refused
outside ``CXR_ENVIRONMENT=development``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

DEFAULT_API_TOKEN = "changethis"
# Secrets that are never accepted outside development, whoever set them.
WEAK_SECRETS = frozenset({DEFAULT_API_TOKEN, "changeme", "secret", "password", "token", "orthanc", "admin"})
MIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Settings of ``cxr serve``, ``cxr worker`` and ``cxr scp``."""

    model_config = SettingsConfigDict(env_prefix="CXR_", env_file=".env", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = Field(
        "production", description="`development` allows the built-in default API token; never use it on a network."
    )
    api_token: SecretStr = Field(
        SecretStr(DEFAULT_API_TOKEN),
        description="Bearer token required on every API route except /healthz and /readyz "
        f"(at least {MIN_TOKEN_LENGTH} characters outside development).",
    )
    docs_public: bool = Field(
        False,
        description="Serve /docs, /redoc and /openapi.json to anyone. Otherwise /openapi.json needs the bearer "
        "token and /docs and /redoc are not served. Development always serves them openly.",
    )
    host: str = Field("127.0.0.1", description="Address `cxr serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `cxr serve` binds.")
    data_dir: Path = Field(Path("var/service"), description="Folder for the SQLite queue and job store and the SCP spool.")

    queue_backend: Literal["sqlite", "redis"] = Field(
        "sqlite", description="`sqlite`: embedded queue in data_dir; `redis`: distributed queue at redis_url."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (redis:// or unix://) for the redis backend.")
    queue_name: str = Field("cxr", min_length=1, description="Queue name; workers and the API must agree on it.")
    embedded_worker: bool = Field(
        True, description="`cxr serve` also runs a worker in its own process (`cxr scp` always runs its own)."
    )
    worker_threads: int = Field(1, ge=1, le=64, description="Jobs a worker runs at once.")
    job_retries: int = Field(4, ge=0, le=50, description="Retries of a job after a transient failure (PACS down...).")
    retry_delay_s: float = Field(5.0, gt=0, description="Delay before the first retry; doubled at each retry.")
    lease_s: float = Field(
        60.0, gt=0, description="A running job whose worker sent no heartbeat for this long is requeued."
    )

    source_dicomweb_url: str | None = Field(
        None, description="DICOMweb root the worker fetches studies from (QIDO-RS and WADO-RS), e.g. http://orthanc:8042/dicom-web."
    )
    source_username: str | None = Field(None, description="Basic-auth user for the source.")
    source_password: SecretStr | None = Field(None, description="Basic-auth password for the source.")
    source_token: SecretStr | None = Field(None, description="Bearer token for the source (instead of basic auth).")
    destination_dicomweb_url: str | None = Field(
        None, description="DICOMweb root the outputs are stored to (STOW-RS); defaults to the source."
    )
    destination_username: str | None = Field(None, description="Basic-auth user for the destination (defaults to the source's).")
    destination_password: SecretStr | None = Field(None, description="Basic-auth password for the destination.")
    destination_token: SecretStr | None = Field(None, description="Bearer token for the destination.")
    dicomweb_timeout_s: float = Field(60.0, gt=0, description="Timeout of one DICOMweb request.")

    scp_ae_title: str = Field("CXR", min_length=1, max_length=16, description="AE title of `cxr scp`.")
    scp_port: int = Field(11112, ge=0, le=65535, description="Port of `cxr scp` (0: any free port).")
    scp_idle_s: float = Field(10.0, gt=0, description="A study received by `cxr scp` is closed after this many idle seconds.")
    destination_ae_title: str | None = Field(None, max_length=16, description="AE title outputs of SCP jobs are C-STOREd to.")
    destination_ae_host: str | None = Field(None, description="Host of the destination AE.")
    destination_ae_port: int | None = Field(None, ge=1, le=65535, description="Port of the destination AE.")

    weights_dir: Path | None = Field(None, description="Weights folder (default: the shipped demo weights).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    half_precision: bool = Field(
        False, description="Run the models under float16 autocast (for a GPU; slower on the CPU, outputs differ slightly)."
    )
    batch_max_images: int = Field(
        1,
        ge=1,
        le=256,
        description="Images the models take at once across the studies in flight (worker_threads > 1); "
        "1: each study alone, as it arrives.",
    )
    batch_max_wait_ms: float = Field(
        10.0, ge=0, le=10_000, description="How long a study waits for others to share its batch (batch_max_images > 1)."
    )
    max_upload_bytes: int = Field(256 * 1024 * 1024, ge=1, description="Largest request body of POST /v1/analyze.")
    max_pixels: int = Field(64_000_000, ge=1, description="Largest image accepted (rows x columns).")
    max_concurrent_uploads: int = Field(
        2, ge=1, le=64, description="Uploads (POST /v1/analyze) read and analysed at once; each holds its images in memory."
    )
    max_waiting_uploads: int = Field(
        8, ge=0, le=1024, description="Uploads waiting for a turn; any further one is answered 503 with Retry-After."
    )
    min_score: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Lowest fused opacity score reported; unset: the weights manifest's reporting_threshold, else 0.3.",
    )
    heatmaps: bool = Field(
        False,
        description="Write two heatmap SEGs per analysed image (opacity probability; Integrated Gradients of the study class), shown over the image by OHIF. Off by default: see *Heatmaps* for the cost.",
    )
    sc_heatmap: Literal["none", "opacity", "attribution"] = Field(
        "none", description="Heatmap blended into the Secondary Capture as a colour layer: `none`, `opacity` or `attribution`."
    )

    triage_urgent_opacity: float = Field(
        0.8, gt=0, le=1, description="A study is `urgent` when its highest reported opacity score reaches this."
    )
    triage_urgent_abnormal: float = Field(
        0.95, gt=0, le=1, description="A study is `urgent` when its abnormal probability (1 - P(negative)) reaches this."
    )
    triage_priority_opacity: float = Field(
        0.5, gt=0, le=1, description="A study is `priority` (unless urgent) when its highest opacity score reaches this."
    )
    triage_priority_abnormal: float = Field(
        0.7, gt=0, le=1, description="A study is `priority` (unless urgent) when its abnormal probability reaches this."
    )
    triage_webhook_url: str | None = Field(
        None, description="http(s) URL POSTed a JSON notice (study UID, priority, job id, times) for each study at or above triage_webhook_level."
    )
    triage_webhook_level: Literal["urgent", "priority"] = Field(
        "urgent", description="Lowest priority notified: `urgent`, or `priority` (priority and urgent)."
    )
    triage_webhook_secret: SecretStr | None = Field(
        None, description="Sent as the value of the triage_webhook_header header, so the receiver can tell the notices are ours."
    )
    triage_webhook_header: str = Field(
        "X-CXR-Webhook-Secret", pattern=r"^[A-Za-z0-9-]{1,64}$", description="Name of the header carrying triage_webhook_secret."
    )
    triage_webhook_retry_s: float = Field(
        5.0, gt=0, le=3600, description="Delay before the first retry of a notice the receiver did not take; doubled each time, at most 5 minutes."
    )
    triage_webhook_max_age_s: float = Field(
        86400.0, gt=0, description="A notice still undelivered this long after the analysis is given up (logged, counted)."
    )
    triage_webhook_timeout_s: float = Field(10.0, gt=0, le=120, description="Timeout of one webhook request.")

    @property
    def docs_open(self) -> bool:
        """Whether /docs, /redoc and /openapi.json are served without the token."""
        return self.docs_public or self.environment == "development"

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment == "development":
            return self
        token = self.api_token.get_secret_value()
        if token in WEAK_SECRETS:
            raise ValueError(
                "CXR_API_TOKEN is unset or a well-known default; set a random token "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) "
                "or CXR_ENVIRONMENT=development on a machine no one else can reach"
            )
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"CXR_API_TOKEN must be at least {MIN_TOKEN_LENGTH} characters, got {len(token)}")
        for name in ("source_password", "destination_password"):
            value = getattr(self, name)
            if value is not None and value.get_secret_value() in WEAK_SECRETS:
                raise ValueError(f"CXR_{name.upper()} is a well-known default password; set a real one")
        return self

    @model_validator(mode="after")
    def _triage_consistent(self) -> Settings:
        for kind in ("opacity", "abnormal"):
            urgent, priority = getattr(self, f"triage_urgent_{kind}"), getattr(self, f"triage_priority_{kind}")
            if priority > urgent:
                raise ValueError(
                    f"CXR_TRIAGE_PRIORITY_{kind.upper()} ({priority}) must not exceed CXR_TRIAGE_URGENT_{kind.upper()} ({urgent})"
                )
        url = self.triage_webhook_url
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("CXR_TRIAGE_WEBHOOK_URL must be an http:// or https:// URL")
        if self.triage_webhook_secret is not None and url is None:
            raise ValueError("CXR_TRIAGE_WEBHOOK_SECRET is set but CXR_TRIAGE_WEBHOOK_URL is not")
        return self

    @model_validator(mode="after")
    def _destination_ae_complete(self) -> Settings:
        parts = (self.destination_ae_title, self.destination_ae_host, self.destination_ae_port)
        if any(p is not None for p in parts) and not all(p is not None for p in parts):
            raise ValueError(
                "CXR_DESTINATION_AE_TITLE, CXR_DESTINATION_AE_HOST and CXR_DESTINATION_AE_PORT must be set together"
            )
        return self


class SettingsError(ValueError):
    """Invalid configuration; the message names the variables and never echoes their values."""


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment and ``.env`` plus ``overrides``; errors name the offending
    ``CXR_*`` variables without their values (pydantic's own message would print secrets)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            loc = "".join(str(p) for p in error.get("loc", ()))
            name = f"CXR_{loc.upper()}" if loc else "settings"
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            lines.append(f"{name}: {message}" if loc else message)
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None

"""The one settings class. Loaded once (``get_settings()``) and passed down to stages.

Every field can be set from the environment with the ``DICTATION_`` prefix, e.g.
``DICTATION_DATA_DIR=/srv/dictation`` or ``DICTATION_MODEL=tiny.en``, or from a ``.env``
file in the working directory. Stages never read the environment themselves.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "get_settings", "PROJECT_ROOT"]

#: The folder holding ``pipeline/``, ``models/``, ``vocab/``, ``templates/``, ``samples/``.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """All configuration of the dictation system."""

    model_config = SettingsConfigDict(
        env_prefix="DICTATION_", env_file=".env", extra="ignore", validate_default=True
    )

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Field(Path("./var"), description="Data directory: inbox, drafts, database.")
    models_dir: Path = PROJECT_ROOT / "models"
    vocab_dir: Path = PROJECT_ROOT / "vocab"
    templates_dir: Path = PROJECT_ROOT / "templates"
    samples_dir: Path = PROJECT_ROOT / "samples"
    custom_templates_dir: Path | None = Field(
        None, description="Extra .docx templates a practice drops in (default: <data>/templates)."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default SQLite file <data_dir>/dictation.db."
    )

    # --- speech model ------------------------------------------------------------------
    model: str = Field(
        "base",
        description="Registry name (tiny.en, base) or a path to a CTranslate2 Whisper folder.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = Field("auto", description="auto: float16 on CUDA, int8 on CPU.")
    cpu_threads: int = Field(0, ge=0, description="0 lets CTranslate2 choose.")
    model_cache_mb: int = Field(
        1024, ge=1,
        description="Loaded speech models kept in memory (the stock model and physicians' "
        "adapted ones), bounded by the sum of their folder sizes in MiB; beyond it the least "
        "recently used is dropped (the one in use always stays). tiny.en is 74 MiB, base 141.",
    )
    adapted_models: bool = Field(
        True,
        description="Decode each physician's dictations with that physician's current "
        "adapted model (dictation models); false: the configured model for everyone.",
    )
    beam_size: int = Field(5, ge=1, le=10)
    vad: bool = True
    language: str = "en"
    chunk_seconds: float = Field(
        120.0, gt=30, description="Long files are decoded and transcribed in chunks this long."
    )
    max_audio_seconds: float = Field(
        4 * 3600.0, gt=0, description="Files longer than this are refused (quarantined)."
    )
    max_file_bytes: int = Field(2 * 1024**3, gt=0)

    # --- medical language ----------------------------------------------------------------
    biased_decoding: bool = True
    latin_abbreviations: bool = Field(
        False, description='Write "b.i.d." style Latin abbreviations instead of "twice daily".'
    )
    expand_standard_abbreviations: bool = False
    numbers_style: Literal["numerals", "words_under_ten"] = "numerals"

    # --- people and practice -------------------------------------------------------------
    physicians: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["dr-default"],
        description="Physician ids (comma separated in the environment); an inbox folder each.",
    )
    practice_name: str = "General Practice"
    practice_address: str = Field("", description="Letterhead line under the practice name.")
    practice_phone: str = ""
    physician_names: dict[str, str] = Field(
        default_factory=dict,
        description='Printable names, e.g. {"dr-smith": "Jane Smith, MD"} (JSON in the env).',
    )
    timezone: str = "UTC"

    # --- inbox service -------------------------------------------------------------------
    watcher: Literal["auto", "inotify", "polling"] = "auto"
    stable_seconds: float = Field(2.0, ge=0)
    sidecar_grace_seconds: float = Field(5.0, ge=0)
    poll_interval_seconds: float = Field(1.0, gt=0)
    workers: int = Field(1, ge=1, description="Concurrent transcriptions on this machine.")
    truncated_wait_seconds: float = Field(
        60.0, ge=0,
        description="An inbox file holding less audio than its header states waits (it may "
        "still be being written) until it has stood unchanged this long; then it is taken "
        "and flagged truncated.",
    )
    orphan_sidecar_seconds: float = Field(
        300.0, ge=0,
        description="A sidecar whose audio neither arrives nor was taken in is quarantined "
        "after waiting this long.",
    )

    # --- servers -------------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    web_port: int = 8000
    prefect_port: int = 4200
    session_idle_minutes: int = 30
    secret_key: str | None = Field(None, description="Cookie signing key; generated if unset.")

    # --- outputs -------------------------------------------------------------------------
    pdf: Literal["auto", "always", "never"] = "auto"
    pdf_timeout_seconds: float = Field(90.0, gt=0)

    # --- routing signed documents (pipeline.secretary.route) ----------------------------------
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "documents@localhost"
    smtp_timeout_s: float = 20.0
    smtp_verify_tls: bool = True
    smtp_cafile: str | None = None
    route_print_dir: Path | None = Field(None, description="Default <data_dir>/route/print.")
    route_hl7_dir: Path | None = Field(None, description="Default <data_dir>/route/hl7.")
    route_fhir_dir: Path | None = Field(None, description="Default <data_dir>/route/fhir.")
    route_max_attempts: int = Field(5, ge=1)
    route_backoff_base_s: float = Field(60.0, ge=0)
    route_backoff_max_s: float = Field(3600.0, ge=0)
    route_interval_s: float = Field(60.0, gt=0, description="How often the service delivers.")

    # --- recovery after a crash (pipeline.service.recovery) ----------------------------------
    recovery_sweep_seconds: float = Field(
        60.0, gt=0,
        description="How often the running service looks for dictations neither done, nor "
        "quarantined, nor truly in flight, and submits them again.",
    )
    recovery_grace_seconds: float = Field(
        120.0, ge=0,
        description="A claimed flow run that names no claimant process, or a dictation never "
        "submitted, counts as abandoned after this long.",
    )
    recovery_max_attempts: int = Field(
        5, ge=0,
        description="Crashed or failed runs of one dictation before it is quarantined as failed "
        "(0: never give up).",
    )

    # --- transport, accounts and audit integrity (docs/operations.md) ---------------------
    web_certfile: Path | None = Field(None, description="TLS certificate (PEM) for the web.")
    web_keyfile: Path | None = Field(None, description="TLS private key (PEM) for the web.")
    web_insecure_http: bool = Field(
        False, description="Allow plain HTTP on a non-loopback address (behind a TLS proxy)."
    )
    web_forwarded_allow_ips: str | None = Field(
        None, description="Addresses of a trusted reverse proxy whose X-Forwarded-For/-Proto "
        "headers the web server believes (e.g. 127.0.0.1); unset: none.",
    )
    session_max_hours: float = Field(
        12.0, gt=0, description="A log-in session ends this long after log-in, however active."
    )
    login_failure_window_minutes: float = Field(
        60.0, gt=0, description="Failed passwords count towards throttling for this long."
    )
    login_max_delay_seconds: float = Field(
        900.0, ge=0, description="Longest wait throttling imposes after failed passwords."
    )
    practice_email_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="The practice's own e-mail domains (comma separated); recipients "
        "elsewhere need an administrator's approval.",
    )
    audit_key_file: Path | None = Field(
        None, description="HMAC key of the audit chain; default ~/.config/dictation/audit.key."
    )
    audit_key: str | None = Field(
        None, description="The audit HMAC key itself (DICTATION_AUDIT_KEY), instead of a file."
    )
    audit_checkpoint_every: int = Field(
        100, ge=1, description="Write a signed checkpoint of the audit chain every N events."
    )

    # --- encryption at rest, backups, retention (pipeline.core.crypto, service.backup) ---
    key_file: Path = Field(
        Path("~/.config/dictation/data.key"),
        description="Data key ring (0600, outside the data directory); created at first use.",
    )
    data_key: str | None = Field(
        None, repr=False,
        description="Data key(s) from the environment (DICTATION_DATA_KEY): base64 of 32 "
        "bytes; several comma separated, the first encrypts (rotation). Overrides key_file.",
    )
    backup_dir: Path | None = Field(
        None, description="Nightly backups (default <data_dir>/backups; better another disk)."
    )
    backup_keep: int = Field(7, ge=1, description="Nightly backups kept (the newest N).")
    backup_cron: str = Field("30 1 * * *", description="When the nightly backup runs.")
    retention_audio_days_after_signing: int | None = Field(
        None, ge=0, description="Delete a dictation's audio this long after its document was "
        "signed (None: keep).",
    )
    retention_quarantine_days: int | None = Field(
        None, ge=0, description="Delete quarantined files this old (None: keep).",
    )
    retention_exports_days: int | None = Field(
        None, ge=0, description="Delete delivered export files (route/print, hl7, fhir) this "
        "old (None: keep).",
    )
    encrypt_database: bool = Field(
        True, description="SQLite: a SQLCipher database keyed by a subkey of the data key "
        "(a plain one is converted once at start). No effect on PostgreSQL.",
    )
    encrypt_columns: bool = Field(
        True, description="PostgreSQL: the patient columns are sealed with a subkey of the "
        "data key before they are sent (pipeline.core.db.encrypted); values sealed before are "
        "read either way. No effect on SQLite (the SQLCipher file holds them).",
    )
    encrypt_files: bool = Field(
        True, description="Audio once claimed (processing, archive, quarantine) and sidecars "
        "are stored encrypted with the data key (pipeline.core.files).",
    )

    @field_validator("practice_email_domains", mode="before")
    @classmethod
    def _split_domains(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [v.strip().lower().lstrip("@") for v in value.split(",") if v.strip()]
        return value

    @field_validator("physicians", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)  # a JSON list is accepted too
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    # --- derived paths -------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def inbox_dir(self) -> Path:
        return self.data_path / "inbox"

    @property
    def processing_dir(self) -> Path:
        return self.data_path / "processing"

    @property
    def archive_dir(self) -> Path:
        return self.data_path / "archive"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_path / "quarantine"

    @property
    def drafts_dir(self) -> Path:
        return self.data_path / "drafts"

    @property
    def cache_dir(self) -> Path:
        return self.data_path / "cache"

    @property
    def prefect_home(self) -> Path:
        return self.data_path / "prefect"

    @property
    def physician_vocab_dir(self) -> Path:
        return self.data_path / "vocab" / "physicians"

    @property
    def user_templates_dir(self) -> Path:
        return self.custom_templates_dir or (self.data_path / "templates")

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_path / 'dictation.db'}"

    @property
    def backup_path(self) -> Path:
        return (self.backup_dir or (self.data_path / "backups")).expanduser().resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (read once from the environment)."""
    return Settings()

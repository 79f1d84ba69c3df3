"""The node's one Settings class: ``PACSNODE_*`` environment variables over an optional YAML file.

Settings are validated once at start-up and passed down explicitly; nothing reads the environment
later. A bad value raises :class:`ConfigError` whose message names the offending key the way the
admin wrote it (``PACSNODE_DICOM_PORT`` or ``completion.quiet_period_s``), so a typo is fixed from
the error alone.
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from datetime import tzinfo
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.domain import DestinationKind, LateArrivalPolicy
from core.timezones import node_zone, zone_named

DEFAULT_SECRET = "change-me-development-only"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """Raised for a configuration that must stop start-up; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CompletionSettings(_Strict):
    quiet_period_s: float = Field(10.0, ge=0)
    sweep_interval_s: float = Field(2.0, gt=0)
    safety_poll_s: float = Field(30.0, gt=0)
    late_arrival: LateArrivalPolicy = LateArrivalPolicy.IGNORE


class ExpectedSeriesRule(_Strict):
    """A study is complete once it holds at least ``min_series`` series matching the conditions."""

    name: str
    modality: list[str] = Field(default_factory=list)
    series_description_regex: str | None = None
    min_series: int = Field(1, ge=1)
    min_instances_per_series: int = Field(1, ge=1)

    @field_validator("series_description_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value


class RoutingCondition(_Strict):
    """All given conditions must hold; list conditions match any member (case-insensitive)."""

    modality: list[str] = Field(default_factory=list)
    sop_class_uid: list[str] = Field(default_factory=list)
    body_part_examined: list[str] = Field(default_factory=list)
    study_description_regex: str | None = None
    series_description_regex: str | None = None
    calling_ae: list[str] = Field(default_factory=list)
    called_ae: list[str] = Field(default_factory=list)

    @field_validator("study_description_regex", "series_description_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value


class RoutingRule(_Strict):
    name: str
    when: RoutingCondition = Field(default_factory=RoutingCondition)
    pipelines: list[str] = Field(default_factory=list)
    destinations: list[str] = Field(default_factory=list)
    send_back_to_sender: bool = False
    stop: bool = True  # first matching rule wins unless stop is false


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$"
)


class DestinationSettings(_Strict):
    name: str
    kind: DestinationKind
    # DICOM C-STORE
    ae_title: str = ""
    host: str = ""
    port: int = Field(0, ge=0, le=65535)
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    preferred_transfer_syntax: str | None = None
    # Orthanc REST / DICOMweb
    url: str = ""
    username: str = ""
    password: str = ""
    token: str = ""
    # folder
    path: Path | None = None
    enabled: bool = True

    @field_validator("ae_title")
    @classmethod
    def _ae_title_rules(cls, value: str) -> str:
        """DICOM AE title rules (PS3.5 AE VR): at most 16 characters, no backslash or control
        character, not only spaces; empty means "not a DICOM destination"."""
        if value and (
            len(value) > 16 or "\\" in value or not value.isprintable() or not value.strip()
        ):
            raise ValueError(f"AE title {value!r}: 1-16 printable characters without backslash")
        return value

    @field_validator("host")
    @classmethod
    def _host_valid(cls, value: str) -> str:
        """An IP address or an RFC 1123 host name, so a typo fails when saved, not at send time."""
        value = value.strip()
        if not value:
            return value
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
        # a host name, or a container name as Docker resolves it (underscores allowed there)
        if _HOSTNAME.match(value.replace("_", "-")) and not value.replace(".", "").isdigit():
            return value
        raise ValueError(f"host {value!r} is not an IP address or host name")

    @field_validator("url")
    @classmethod
    def _url_valid(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^\s/?#]+", value):
            raise ValueError(f"url {value!r} must start with http:// or https:// and name a host")
        return value

    @model_validator(mode="after")
    def _complete_for_kind(self) -> DestinationSettings:
        missing: list[str] = []
        if self.kind is DestinationKind.DICOM:
            missing = [k for k in ("ae_title", "host") if not getattr(self, k)]
            if not self.port:
                missing.append("port")
        elif self.kind in (DestinationKind.ORTHANC, DestinationKind.DICOMWEB):
            missing = [] if self.url else ["url"]
        elif self.kind is DestinationKind.FOLDER and self.path is None:
            missing = ["path"]
        if missing:
            raise ValueError(
                f"destination {self.name!r} ({self.kind.value}) needs {', '.join(missing)}"
            )
        return self


class CallerAllowEntry(_Strict):
    """An allowed calling AE title, optionally bound to a host: an IP address, a CIDR network or
    a hostname (RFC 1123), so a typo such as ``CT1@not a host`` fails at load, not silently."""

    ae_title: str
    host: str | None = None  # None: any host

    @field_validator("host")
    @classmethod
    def _host_valid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
        if "/" in value:
            try:
                return str(ipaddress.ip_network(value, strict=False))
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a valid CIDR network ({exc})") from None
        if _HOSTNAME.match(value) and not value.replace(".", "").isdigit():
            return value.lower()
        raise ValueError(f"{value!r} is not an IP address, CIDR network or hostname")

    def host_matches(self, peer: str) -> bool:
        """Whether a peer address is covered: any host, the same address, inside the network, or
        (for a hostname) the same name as the peer reported."""
        if self.host is None:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return self.host == peer.strip().lower()
        if "/" in self.host:
            return address in ipaddress.ip_network(self.host)
        try:
            return address == ipaddress.ip_address(self.host)
        except ValueError:
            return False


class TLSSettings(_Strict):
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_client_cert: bool = False


class JobSettings(_Strict):
    """How jobs are executed. ``engine: local`` (the embedded default) is the node's own leased-row
    queue, no broker; ``engine: celery`` publishes each committed job's id to a Celery broker
    (RabbitMQ, or Redis) and ``pacsnode worker`` hosts consume it by queue (device class)."""

    lease_s: float = Field(600.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    backoff_base_s: float = Field(5.0, ge=0)
    backoff_max_s: float = Field(300.0, ge=0)
    poll_interval_s: float = Field(0.5, gt=0)
    safety_poll_s: float = Field(30.0, gt=0)
    engine: Literal["local", "celery"] = "local"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    republish_after_s: float = Field(30.0, gt=0)
    # every worker process (and delivery consumer) writes a heartbeat row this often; it counts
    # as gone after ``stale_after_beats`` missed beats (health then flags its queues)
    heartbeat_s: float = Field(5.0, gt=0)
    stale_after_beats: int = Field(3, ge=1)

    @property
    def stale_after_s(self) -> float:
        return self.heartbeat_s * self.stale_after_beats


class DispatchSettings(_Strict):
    max_attempts: int = Field(8, ge=1)
    backoff_base_s: float = Field(2.0, ge=0)
    backoff_max_s: float = Field(600.0, ge=0)
    jitter: float = Field(0.2, ge=0, le=1)
    poll_interval_s: float = Field(0.5, gt=0)
    safety_poll_s: float = Field(30.0, gt=0)
    timeout_s: float = Field(30.0, gt=0)
    # with ``jobs.engine: celery``: the broker queue that carries deliveries (one message names a
    # destination whose due deliveries the consumer claims), consumed by ``pacsnode dispatcher``
    queue: str = Field("deliveries", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RetentionSettings(_Strict):
    days: float = Field(30.0, gt=0)
    interval_s: float = Field(3600.0, gt=0)


class OrthancSourceSettings(_Strict):
    """An Orthanc that feeds studies to the node (hook and/or /changes polling)."""

    url: str
    username: str = ""
    password: str = ""
    poll: bool = False
    poll_interval_s: float = Field(5.0, gt=0)
    upload_results: bool = True


class SMTPSettings(_Strict):
    host: str
    port: int = 25
    username: str = ""
    password: str = ""
    sender: str = "pacsnode@localhost"
    starttls: bool = False


class WebSettings(_Strict):
    session_idle_minutes: float = Field(30.0, gt=0)
    session_absolute_hours: float = Field(12.0, gt=0)
    self_registration: bool = False
    max_upload_mb: float = Field(512.0, gt=0)
    # POST /api/predict waits this long for the worker, then answers 504 with a batch id to poll
    predict_timeout_s: float = Field(120.0, gt=0, le=3600)
    # a batch's (or a timed-out prediction's) study and results stay this long after its jobs end
    predict_retention_s: float = Field(86400.0, gt=0)
    login_max_failures: int = Field(5, ge=1)
    login_max_delay_s: float = Field(300.0, ge=0)
    login_address_max_failures: int = Field(20, ge=1)
    reset_token_ttl_s: float = Field(3600.0, gt=0)
    secure_cookies: bool = False
    base_url: str = ""
    trusted_proxies: list[str] = Field(default_factory=list)
    # request bodies are refused over these before anything parses them (uploads: max_upload_mb)
    max_form_kb: float = Field(16.0, gt=0)
    max_admin_form_kb: float = Field(64.0, gt=0)
    # clients from these addresses scrape /metrics without a token (e.g. ["127.0.0.1"])
    metrics_public_from: list[str] = Field(default_factory=list)
    # "Open in viewer" on the study and review pages: base URL + template ({study} = the Study
    # Instance UID); an empty base URL (the default) or template shows no link
    viewer_base_url: str = ""
    viewer_url_template: str = "/viewer?StudyInstanceUIDs={study}"

    @field_validator("viewer_base_url")
    @classmethod
    def _viewer_base(cls, value: str) -> str:
        """An http(s) URL or a path on the console's host: nothing a link could run as script."""
        value = value.strip()
        if value and not re.match(r"^(https?://[^\s/?#]+|/)[^\s]*$", value, re.IGNORECASE):
            raise ValueError(f"{value!r} is not an http(s) URL or a path starting with /")
        return value

    @field_validator("viewer_url_template")
    @classmethod
    def _viewer_template(cls, value: str) -> str:
        """Only the {study} placeholder: a typo like {studyuid} is refused at start-up, not
        shown as a broken link."""
        value = value.strip()
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a URL template: {exc}") from exc
        if fields - {"study"}:
            raise ValueError(f"unknown placeholder(s) {sorted(fields - {'study'})}; use {{study}}")
        if re.search(r"\s", value):
            raise ValueError("the viewer URL template must not contain spaces")
        return value

    @field_validator("trusted_proxies", "metrics_public_from")
    @classmethod
    def _ip_or_network(cls, values: list[str]) -> list[str]:
        """Each entry an IP address or CIDR network: a typo must not silently trust nobody (or
        everybody), so a host name is refused too."""
        for value in values:
            try:
                ipaddress.ip_network(value.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IP address or CIDR network") from exc
        return [value.strip() for value in values]


class ZipLimitSettings(_Strict):
    """Zip archives (console upload, ``pacsnode import``) are inflated member by member under these
    limits, counted on the bytes actually produced, so a lying header or a zip bomb is cut off."""

    max_member_mb: float = Field(512.0, gt=0)
    max_total_mb: float = Field(8192.0, gt=0)
    max_ratio: float = Field(100.0, gt=1)  # uncompressed / compressed, per member


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``PACSNODE_CONFIG`` (or ``--config``)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except OSError as exc:
                raise ConfigError(f"PACSNODE_CONFIG: cannot read {path}: {exc}") from exc
            except yaml.YAMLError as exc:
                raise ConfigError(f"PACSNODE_CONFIG: {path} is not valid YAML: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ConfigError(f"PACSNODE_CONFIG: {path} must hold a mapping at the top level")
            self._data = loaded

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


_CONFIG_FILE: Path | None = None


class Settings(BaseSettings):
    """Every setting of the node, with its default. See README "Settings" for the full list."""

    model_config = SettingsConfigDict(
        env_prefix="PACSNODE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    environment: Literal["development", "production", "test"] = "development"
    secret_key: str = DEFAULT_SECRET
    data_dir: Path = PROJECT_ROOT / "var"
    database_url: str = ""  # default: SQLite file under data_dir
    log_level: str = "INFO"
    # IANA zone for result dates/times, the PDF and the console; empty: the machine's local zone
    timezone: str = ""

    # DICOM listener
    ae_title: str = "PACSNODE"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = Field(11112, ge=0, le=65535)
    receiver_processes: int = Field(1, ge=1, le=64)
    max_associations: int = Field(32, ge=1)
    network_timeout_s: float = Field(60.0, gt=0)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    max_pending_connections: int = Field(16, ge=1)
    max_instance_mb: float = Field(4096.0, gt=0)
    allowed_callers: list[CallerAllowEntry] = Field(default_factory=list)
    tls: TLSSettings | None = None
    min_free_disk_mb: float = Field(500.0, ge=0)
    fsync: bool = True
    # received data sets up to this size have their bytes committed with their row instead of a
    # file and directory flush of their own (node/ingest/write_ahead.py); 0: always flushed alone;
    # unset: 64 on SQLite, 0 on PostgreSQL (``write_ahead.write_ahead_limit`` says why)
    write_ahead_kb: int | None = Field(None, ge=0, le=256)

    # web console
    web_host: str = "127.0.0.1"
    web_port: int = Field(8000, ge=0, le=65535)
    web: WebSettings = Field(default_factory=WebSettings)
    zip_import: ZipLimitSettings = Field(default_factory=ZipLimitSettings)
    smtp: SMTPSettings | None = None
    hook_secret: str = ""

    # processing
    completion: CompletionSettings = Field(default_factory=CompletionSettings)
    expected_series: list[ExpectedSeriesRule] = Field(default_factory=list)
    routing: list[RoutingRule] = Field(default_factory=list)
    destinations: list[DestinationSettings] = Field(default_factory=list)
    pipelines_dir: Path = PROJECT_ROOT / "pipelines" / "definitions"
    models_dir: Path = PROJECT_ROOT / "models" / "cards"
    torch_threads: int = Field(0, ge=0)  # 0: torch's default
    # freed memory a worker keeps for reuse (glibc malloc thresholds); 0: the C library's own
    worker_malloc_keep_mb: int = Field(512, ge=0)
    jobs: JobSettings = Field(default_factory=JobSettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    orthanc_sources: list[OrthancSourceSettings] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, value: str) -> str:
        value = value.strip()
        if value:
            zone_named(value)  # ValueError naming the value; load_settings names the key
        return value

    @field_validator("ae_title")
    @classmethod
    def _ae_title_valid(cls, value: str) -> str:
        if not value or len(value) > 16 or "\\" in value or not value.isprintable():
            raise ValueError("must be 1-16 printable characters without backslash")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.environment == "production" and self.secret_key == DEFAULT_SECRET:
            raise ValueError("secret_key: the development default is refused in production")
        names = [d.name for d in self.destinations]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"destinations: duplicate name(s) {sorted(dupes)}")
        for rule in self.routing:
            unknown = [d for d in rule.destinations if d not in names]
            if unknown:
                raise ValueError(
                    f"routing: rule {rule.name!r} names unknown destination(s) {unknown}"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls, _CONFIG_FILE))

    # -- derived values --------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'pacsnode.db'}"

    @property
    def zone(self) -> tzinfo:
        """The node's time zone (``timezone``, else the machine's)."""
        return node_zone(self.timezone)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    def job_results_dir(self, job_id: int) -> Path:
        """Where one job's outputs live: named by the job's primary key, never by a UID a peer
        sent (a StudyInstanceUID such as ``../../tmp/x`` must not choose a path)."""
        return self.results_dir / f"job-{int(job_id)}"

    def destination(self, name: str) -> DestinationSettings:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise KeyError(name)


def _key_name(loc: tuple[Any, ...], env_keys: set[str]) -> str:
    """``PACSNODE_DICOM_PORT`` when the value came from the environment, else ``dicom_port``."""
    env_name = "PACSNODE_" + "__".join(str(p) for p in loc if not isinstance(p, int)).upper()
    return env_name if env_name in env_keys else ".".join(str(p) for p in loc)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings; raise :class:`ConfigError` naming the bad key(s)."""
    global _CONFIG_FILE
    path = config_file or os.environ.get("PACSNODE_CONFIG") or None
    _CONFIG_FILE = Path(path) if path else None
    env_keys = {k for k in os.environ if k.startswith("PACSNODE_")}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = _key_name(tuple(err["loc"]), env_keys) if err["loc"] else "settings"
            problems.append(f"{key}: {err['msg']}")
        raise ConfigError("invalid configuration — " + "; ".join(problems)) from exc
    finally:
        _CONFIG_FILE = None

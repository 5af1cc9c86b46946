"""Broker settings, read from ``REXEC_*`` environment variables (or passed by ``rexec up``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from rexec_magic import protocol as P
from rexec_magic.contract import DEFAULT_HOST, Port


class AuthSettings(BaseSettings):
    """How tokens are checked.  Shared by broker and spawner so both read the same variables."""

    model_config = SettingsConfigDict(env_prefix="REXEC_", extra="ignore")

    authenticator: str = Field(
        "static", description="how tokens are checked: static (dev tokens file) or auth_api"
    )
    tokens_file: str | None = None
    auth_api_url: str | None = Field(
        None, description='auth_api: POST {"token"} -> {"sub","username","groups"}'
    )
    allowed_groups: str = Field(
        "", description="comma-separated groups that may use rexec; empty: everyone"
    )
    auth_cache_ttl_s: float = 300.0

    def group_list(self) -> list[str]:
        return [g for g in self.allowed_groups.split(",") if g.strip()]


class BrokerSettings(AuthSettings):
    host: str = Field(DEFAULT_HOST, description="the interface every port binds to")
    broker_port: int = Field(Port.BROKER, description="the broker's client port")
    control_port: int = Field(Port.CONTROL, description="the broker's admin port")
    worker_port: int = Field(Port.WORKER, description="where workers connect")
    worker_key: SecretStr = SecretStr("")  # HMAC key for worker secrets, shared with the spawner
    admin_secret: SecretStr = SecretStr("")  # required on the control port
    # Optional CurveZMQ encryption of the client port (Z85 keys; `rexec up --curve` makes a pair).
    curve_public_key: str = ""
    curve_secret_key: SecretStr = SecretStr("")
    auth_threads: int = 8  # parallel auth checks; the routing loop never waits on one
    # Any header the broker parses is refused above this size, before it is parsed.
    max_header_bytes: int = 64 * 1024
    # The bulk side channel (broker/bulk.py): bytes of large results the broker holds for
    # one user, and for all users, between an executor's upload and its DONE.  Past them the
    # results go through the workers' supervisors instead (nothing is refused to the user).
    # Keep the total well below the broker's memory limit: a result passing through needs
    # room besides (the chart sets it from its values).
    bulk_max_held_bytes: int = P.BULK_MAX_HELD_BYTES
    bulk_max_held_total_bytes: int = P.BULK_MAX_HELD_BYTES_TOTAL
    # A client connection that sends nothing for this long must say HELLO again (it is also
    # forgotten at once when its connection closes).
    session_idle_s: float = 600.0
    # A client connection whose libzmq answered none of the broker's ZMTP pings for this long
    # is closed (a kernel stopped, or its machine gone), and its workers told
    # (``protocol.CLIENT_CONNECTION_TIMEOUT_S``).
    client_timeout_s: float = Field(P.CLIENT_CONNECTION_TIMEOUT_S, gt=0.0)
    # ZMQ_MAXMSGSIZE of one frame on the client port (pushed values travel there): -1 is no
    # limit.  The control port is always limited to max_header_bytes; the worker port carries
    # pulled values and is not limited.
    max_client_frame_bytes: int = -1
    # Unauthenticated traffic (HELLO, REGISTER, anything without a session): per peer and in all,
    # for each port apart (client, worker, control).
    unauth_rate_per_peer: float = 20.0
    unauth_rate_total: float = 2000.0
    max_auth_in_flight: int = 256  # token checks queued at once; more HELLOs are told to retry
    log_file: str | None = None

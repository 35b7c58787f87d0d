"""The heartbeat endpoint: ``POST /dataflows/heartbeat/``."""

from __future__ import annotations

import logging

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from django_dataflows.conf import app_settings
from django_dataflows.exceptions import MalformedForwardedFor
from django_dataflows.scheduling import run_heartbeat
from django_dataflows.security import (
    IPAddress,
    client_ip,
    invalid_network_entries,
    ip_in,
    parse_ip,
    parse_networks,
    presented_token,
    token_matches,
)

logger = logging.getLogger("django_dataflows.heartbeat")


def _refuse(
    status: int,
    error: str,
    client: str,
    *,
    detail: str = "",
    what: str = "Heartbeat",
    **headers: str,
) -> JsonResponse:
    """Answer ``status`` with ``error``; the log line adds ``detail``, never the answer."""
    logger.warning(
        "%s refused: at=%s status=%s client=%s reason=%s%s",
        what,
        timezone.now().isoformat(),
        status,
        client,
        error,
        f" ({detail})" if detail else "",
    )
    # "detail", as in the API; "error" kept for the clients written against it.
    response = JsonResponse({"detail": error, "error": error}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def _identify(request: HttpRequest) -> IPAddress | None:
    try:
        return client_ip(request, tuple(app_settings.HEARTBEAT_TRUSTED_PROXIES))
    except MalformedForwardedFor:
        raise
    except ValueError:  # no usable REMOTE_ADDR (for example a unix socket)
        return None


@csrf_exempt
@never_cache
@transaction.non_atomic_requests
def heartbeat(request: HttpRequest) -> JsonResponse:
    """Trigger every due flow; answer JSON counts (see the heartbeat reference page).

    Checks, in order: the method (405), the client IP against ``HEARTBEAT_ALLOWED_IPS``
    (403), the token (401), the body size (413). With neither an allowlist nor a token
    configured, only loopback clients are accepted.
    """
    peer = request.META.get("REMOTE_ADDR", "") or "unknown"
    if request.method != "POST":
        return _refuse(405, "Method not allowed; use POST.", peer, Allow="POST")
    refusal, client = check_caller(request, "Heartbeat")
    if refusal is not None:
        return refusal
    if _body_too_large(request):
        return _refuse(413, "The heartbeat takes no request body.", client)

    try:
        result = run_heartbeat(source="http", client=client)
    except DatabaseError as exc:
        logger.exception("Heartbeat failed: the database is unavailable")
        return _unavailable(f"The database is unavailable: {exc}".strip(), client)
    except ImproperlyConfigured as exc:
        logger.exception("Heartbeat failed: a setting is wrong")
        return _unavailable(f"Misconfigured: {exc}", client)
    status = 503 if result.enqueue_failures else 200
    log = logger.error if status == 503 else logger.info
    log(
        "Heartbeat accepted: at=%s client=%s due=%s triggered=%s skipped=%s failed=%s timed_out=%s",
        result.timestamp.isoformat(),
        client,
        result.flows_due,
        result.flows_triggered,
        result.flows_skipped,
        result.flows_failed,
        result.runs_timed_out,
    )
    return JsonResponse(result.as_dict(), status=status)


def check_caller(request: HttpRequest, what: str) -> tuple[JsonResponse | None, str]:
    """Guard an endpoint like the heartbeat: the settings, the IP allowlist, the token.

    Returns the refusal to answer (``None`` when the caller may go on) and the client as
    logged. ``what`` names the endpoint in the log lines.
    """
    peer = request.META.get("REMOTE_ADDR", "") or "unknown"
    # Web servers do not run the system checks: a setting they would have caught is a
    # JSON 503 naming it, not a crash into an HTML 500.
    misconfigured = _configuration_error()
    if misconfigured:
        logger.error("%s refused: %s", what, misconfigured)
        return _unavailable(misconfigured, peer, what=what), peer
    try:
        address = _identify(request)
    except MalformedForwardedFor as exc:
        return _refuse(400, f"Malformed X-Forwarded-For entry: {exc}", peer, what=what), peer
    client = str(address) if address else peer
    return _refusal(request, address, client, what), client


def _refusal(
    request: HttpRequest, address: IPAddress | None, client: str, what: str
) -> JsonResponse | None:
    allowed_ips = app_settings.HEARTBEAT_ALLOWED_IPS
    token = app_settings.HEARTBEAT_TOKEN
    if allowed_ips:
        if address is None or not ip_in(address, parse_networks(tuple(allowed_ips))):
            return _refuse(
                403, "This client is not allowed to call the heartbeat.", client, what=what
            )
    elif token is None:
        if address is None or not address.is_loopback:
            return _refuse(
                403,
                "Without DATAFLOWS['HEARTBEAT_TOKEN'] or ['HEARTBEAT_ALLOWED_IPS'] only "
                "loopback clients may call the heartbeat.",
                client,
                what=what,
            )
        if address == _peer(request) and _proxied(request):
            # A reverse proxy on this host makes every client look like loopback; a
            # request it forwarded is not from this machine, whatever REMOTE_ADDR says.
            return _refuse(
                403,
                "This request came through a proxy; set DATAFLOWS['HEARTBEAT_TOKEN'] (or "
                "list the proxy in HEARTBEAT_TRUSTED_PROXIES and the client in "
                "HEARTBEAT_ALLOWED_IPS).",
                client,
                what=what,
            )
    presented = presented_token(request) if token is not None else None
    if token is not None and not token_matches(presented, token):
        # Which it was helps whoever reads the log fix cron; the client learns neither.
        return _refuse(
            401,
            "A valid heartbeat token is required (Authorization: Bearer <token>).",
            client,
            detail="no token was sent" if presented is None else "the token sent is wrong",
            what=what,
            **{"WWW-Authenticate": 'Bearer realm="dataflows"'},
        )
    return None


def _unavailable(error: str, client: str, *, what: str = "Heartbeat") -> JsonResponse:
    return _refuse(503, error, client, what=what, **{"Retry-After": "60"})


def _configuration_error() -> str | None:
    """What the system checks would report about the settings the heartbeat reads first."""
    for key, check_id in (
        ("HEARTBEAT_ALLOWED_IPS", "dataflows.E004"),
        ("HEARTBEAT_TRUSTED_PROXIES", "dataflows.E005"),
    ):
        bad = invalid_network_entries(getattr(app_settings, key))
        if bad:
            return (
                f"Misconfigured: DATAFLOWS[{key!r}] has an entry that is not an IP address or "
                f"network: {bad[0]} (system check {check_id}; host bits must be zero)."
            )
    token = app_settings.HEARTBEAT_TOKEN
    if token is not None and not token.strip():
        return (
            "Misconfigured: DATAFLOWS['HEARTBEAT_TOKEN'] is empty (system check "
            "dataflows.E008); set it or remove it."
        )
    return None


PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def _proxied(request: HttpRequest) -> bool:
    return any(request.META.get(header) for header in PROXY_HEADERS)


def _peer(request: HttpRequest) -> IPAddress | None:
    try:
        return parse_ip(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return None


def _body_too_large(request: HttpRequest) -> bool:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return True
    return length > app_settings.HEARTBEAT_MAX_BODY_SIZE

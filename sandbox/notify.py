"""Slack, PagerDuty and the status page for the local stack, recording every call.

Each API answers the way its real counterpart does, validation errors included, so a
runbook's notify tasks can be tested against it unchanged. ``GET /_requests`` lists
what was received, oldest first; ``DELETE /_requests`` forgets it. Authorization
values are never stored: a record only says whether credentials were sent and how.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from sandbox.faults import Faults
from sandbox.wsgi import WsgiServer

logger = logging.getLogger(__name__)

PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")
PAGERDUTY_ACTIONS = ("trigger", "acknowledge", "resolve")
STATUSPAGE_STATUSES = ("investigating", "identified", "monitoring", "resolved")
_SLACK_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{8,}$")

_ROUTES = Map(
    [
        Rule("/_requests", endpoint="requests"),
        Rule("/slack/api/chat.postMessage", endpoint="slack_post"),
        Rule("/slack/api/chat.update", endpoint="slack_update"),
        Rule("/pagerduty/v2/enqueue", endpoint="pagerduty"),
        Rule(
            "/statuspage/v1/pages/<page_id>/incidents", endpoint="statuspage_incidents"
        ),
        Rule(
            "/statuspage/v1/pages/<page_id>/incidents/<incident_id>",
            endpoint="statuspage_incident",
        ),
    ]
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(document: Any, status: int = 200) -> Response:
    return Response(json.dumps(document), status=status, mimetype="application/json")


def slack_channel_id(channel: str) -> str:
    """Return the stable channel ID Slack would answer with for a name or an ID."""
    if _SLACK_CHANNEL_ID.match(channel):
        return channel
    digest = sum((i + 1) * ord(char) for i, char in enumerate(channel.lstrip("#")))
    return f"C{digest:09d}"[:11].upper()


class NotificationReceiver:
    """Answer Slack, PagerDuty and Statuspage calls and record every request."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._faults = faults
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self._record_ids = itertools.count(1)
        self._slack_messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._pagerduty_alerts: dict[str, str] = {}
        self._incidents: dict[str, dict[str, Any]] = {}
        self._server = WsgiServer(self._wsgi, name="notifications")

    @property
    def url(self) -> str:
        """Return the receiver's base URL; it must have been started."""
        return self._server.url

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving in daemon threads and return the base URL."""
        url = self._server.start(host, port)
        logger.info("Started the notification receiver at %s", url)
        return url

    def stop(self) -> None:
        """Stop serving; what was recorded stays readable through requests()."""
        self._server.stop(drop_connections=True)
        logger.info("Stopped the notification receiver")

    def requests(self, path_prefix: str = "") -> list[dict[str, Any]]:
        """Return the recorded requests under a path prefix, oldest first."""
        with self._lock:
            return [r for r in self._records if r["path"].startswith(path_prefix)]

    def _wsgi(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        try:
            rule, arguments = _ROUTES.bind_to_environ(environ).match(return_rule=True)
        except HTTPException as exc:
            return exc.get_response(environ)(environ, start_response)
        endpoint = str(rule.endpoint)
        if endpoint == "requests":
            return self._requests_endpoint(request)(environ, start_response)
        body = self._record(request)
        logger.debug("Received %s %s", request.method, request.path)
        handler = getattr(self, f"_{endpoint}")
        response: Response = handler(request, body, **arguments)
        return response(environ, start_response)

    def _record(self, request: Request) -> Any:
        raw = request.get_data(as_text=True)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        auth = request.headers.get("Authorization", "")
        record = {
            "method": request.method,
            "path": request.path,
            "query": request.args.to_dict(),
            "headers": {
                name: value
                for name, value in request.headers.items()
                if name.lower() != "authorization"
            },
            "auth_present": bool(auth),
            "auth_scheme": auth.split(" ", 1)[0] if auth else None,
            "body": body,
            "received_at": _now(),
        }
        with self._lock:
            record["id"] = next(self._record_ids)
            self._records.append(record)
        return body

    def _requests_endpoint(self, request: Request) -> Response:
        if request.method == "DELETE":
            with self._lock:
                count = len(self._records)
                self._records.clear()
            return _json({"deleted": count})
        return _json(self.requests(request.args.get("path_prefix", "")))

    # Slack Web API: errors are HTTP 200 with ok=false.

    def _slack_post(self, request: Request, body: Any) -> Response:
        return self._slack_message(request, body, update=False)

    def _slack_update(self, request: Request, body: Any) -> Response:
        return self._slack_message(request, body, update=True)

    def _slack_message(self, request: Request, body: Any, *, update: bool) -> Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token.strip():
            return _json({"ok": False, "error": "not_authed"})
        fields = body if isinstance(body, dict) else request.form.to_dict()
        if not fields.get("channel"):
            return _json({"ok": False, "error": "channel_not_found"})
        if not (
            fields.get("text") or fields.get("blocks") or fields.get("attachments")
        ):
            return _json({"ok": False, "error": "no_text"})
        channel = slack_channel_id(str(fields["channel"]))
        message: dict[str, Any] = {
            "type": "message",
            "text": fields.get("text", ""),
            "blocks": fields.get("blocks", []),
        }
        with self._lock:
            if update:
                ts = str(fields.get("ts", ""))
                if (channel, ts) not in self._slack_messages:
                    return _json({"ok": False, "error": "message_not_found"})
            else:
                ts = f"{time.time():.6f}"
                while (channel, ts) in self._slack_messages:
                    ts = f"{float(ts) + 0.000001:.6f}"
            self._slack_messages[(channel, ts)] = {**message, "ts": ts}
        return _json(
            {"ok": True, "channel": channel, "ts": ts, "message": {**message, "ts": ts}}
        )

    # PagerDuty Events API v2

    def _pagerduty(self, request: Request, body: Any) -> Response:
        if request.method != "POST":
            return _json({"status": "invalid request", "message": "Use POST."}, 405)
        if not isinstance(body, dict):
            return _pagerduty_invalid(["Event object must be a JSON object"])
        errors = []
        if not str(body.get("routing_key") or "").strip():
            errors.append("'routing_key' is missing or blank")
        action = body.get("event_action")
        if action not in PAGERDUTY_ACTIONS:
            errors.append("'event_action' must be one of trigger, acknowledge, resolve")
        dedup_key = body.get("dedup_key")
        if action == "trigger":
            payload = body.get("payload")
            if not isinstance(payload, dict):
                errors.append("'payload' is missing or not an object")
            else:
                for field in ("summary", "source"):
                    if not str(payload.get(field) or "").strip():
                        errors.append(f"'payload.{field}' is missing or blank")
                if payload.get("severity") not in PAGERDUTY_SEVERITIES:
                    severities = ", ".join(PAGERDUTY_SEVERITIES)
                    errors.append(f"'payload.severity' must be one of {severities}")
        elif action in ("acknowledge", "resolve") and not dedup_key:
            errors.append("'dedup_key' is required for acknowledge and resolve")
        if errors:
            return _pagerduty_invalid(errors)
        dedup_key = str(dedup_key or secrets.token_hex(16))
        with self._lock:
            self._pagerduty_alerts[dedup_key] = str(action)
        return _json(
            {"status": "success", "message": "Event processed", "dedup_key": dedup_key},
            202,
        )

    # Statuspage.io REST API

    def _statuspage_incidents(
        self, request: Request, body: Any, page_id: str
    ) -> Response:
        if not request.headers.get("Authorization", "").startswith("OAuth "):
            return _json({"error": "Could not authenticate"}, 401)
        if request.method == "GET":
            with self._lock:
                incidents = [
                    i for i in self._incidents.values() if i["page_id"] == page_id
                ]
            return _json(sorted(incidents, key=lambda i: i["created_at"], reverse=True))
        if request.method != "POST":
            return _json({"error": "Method not allowed"}, 405)
        fields = body.get("incident") if isinstance(body, dict) else None
        if not isinstance(fields, dict) or not str(fields.get("name") or "").strip():
            return _json({"error": ["Name can't be blank"]}, 422)
        status = fields.get("status", "investigating")
        if status not in STATUSPAGE_STATUSES:
            return _json(
                {"error": [f"Status {status!r} is not included in the list"]}, 422
            )
        now = _now()
        incident_id = secrets.token_hex(6)
        incident = {
            "id": incident_id,
            "page_id": page_id,
            "name": fields["name"],
            "status": status,
            "impact": fields.get("impact_override", "none"),
            "created_at": now,
            "updated_at": now,
            "resolved_at": now if status == "resolved" else None,
            "shortlink": f"https://stspg.io/{incident_id[:6]}",
            "components": fields.get("component_ids", []),
            "incident_updates": [_incident_update(incident_id, status, fields, now)],
        }
        with self._lock:
            self._incidents[incident_id] = incident
        return _json(incident, 201)

    def _statuspage_incident(
        self, request: Request, body: Any, page_id: str, incident_id: str
    ) -> Response:
        if not request.headers.get("Authorization", "").startswith("OAuth "):
            return _json({"error": "Could not authenticate"}, 401)
        with self._lock:
            incident = self._incidents.get(incident_id)
            if incident is None or incident["page_id"] != page_id:
                return _json({"error": "Not found"}, 404)
            if request.method == "GET":
                return _json(incident)
            if request.method not in ("PATCH", "PUT"):
                return _json({"error": "Method not allowed"}, 405)
            fields = body.get("incident") if isinstance(body, dict) else None
            if not isinstance(fields, dict):
                return _json({"error": ["incident is missing"]}, 422)
            status = fields.get("status", incident["status"])
            if status not in STATUSPAGE_STATUSES:
                return _json(
                    {"error": [f"Status {status!r} is not included in the list"]}, 422
                )
            now = _now()
            incident.update(
                status=status,
                updated_at=now,
                name=fields.get("name", incident["name"]),
                impact=fields.get("impact_override", incident["impact"]),
            )
            if status == "resolved" and incident["resolved_at"] is None:
                incident["resolved_at"] = now
            update = _incident_update(incident_id, status, fields, now)
            incident["incident_updates"].insert(0, update)
            return _json(incident)


def _pagerduty_invalid(errors: list[str]) -> Response:
    return _json(
        {
            "status": "invalid event",
            "message": "Event object is invalid",
            "errors": errors,
        },
        400,
    )


def _incident_update(
    incident_id: str, status: str, fields: dict[str, Any], now: str
) -> dict[str, Any]:
    return {
        "id": secrets.token_hex(6),
        "incident_id": incident_id,
        "status": status,
        "body": fields.get("body", ""),
        "created_at": now,
        "display_at": now,
    }

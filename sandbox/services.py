"""The local stack's in-process services, run as one background process.

It hosts the two Kubernetes API simulators (primary and DR), moto's S3 server, the
app stub, the CDN stub and the notification receiver, plus a small control endpoint
through which ``runbook sandbox fault`` switches faults. Start it with
``python -m sandbox.services STATE_DIR``; it writes ``services.json`` there once
every server listens, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sandbox.app import AppStub
from sandbox.cdn import CdnStub
from sandbox.faults import KNOWN_FAULTS, Faults
from sandbox.kube import KubeSimulator
from sandbox.notify import NotificationReceiver
from sandbox.s3 import S3Server

logger = logging.getLogger(__name__)

NAMESPACE = "production"
DEPLOYMENT = "bpmn-studio"
LEAKING_MEMORY_BYTES = 980 * 1024 * 1024


class Services:
    """Every in-process server of the stack, started from the stack's config."""

    def __init__(self, state_dir: Path, config: dict[str, Any]) -> None:
        self.state_dir = state_dir
        self.config = config
        self.faults = Faults(state_dir / "faults.json")
        self.kube = {
            name: KubeSimulator(name, state_file=state_dir / f"kube-{name}.json")
            for name in ("primary", "dr")
        }
        self.urls: dict[str, str] = {}
        self._servers: list[Any] = []

    def start(self) -> dict[str, str]:
        """Start every server on its configured port and return their URLs."""
        ports = self.config["ports"]
        for name, simulator in self.kube.items():
            fresh = not (self.state_dir / f"kube-{name}.json").exists()
            self.urls[f"kube_{name}"] = simulator.start(port=ports[f"kube_{name}"])
            self._servers.append(simulator)
            if fresh:
                simulator.seed_app(
                    namespace=NAMESPACE,
                    name=DEPLOYMENT,
                    replicas=3 if name == "primary" else 0,
                )
        s3 = S3Server(self.faults)
        self.urls["s3"] = s3.start(port=ports["s3"])
        self._servers.append(s3)
        primary = self.kube["primary"]
        app = AppStub(
            database_url=self.config["database_url"],
            redis_url=self.config["redis_url"],
            s3_endpoint_url=self.urls["s3"],
            uploads_bucket=self.config["uploads_bucket"],
            faults=self.faults,
            serving_images=lambda: primary.serving_images(NAMESPACE, DEPLOYMENT),
        )
        self.urls["app"] = app.start(port=ports["app"])
        self._servers.append(app)
        cdn = CdnStub(self.urls["app"], self.faults)
        self.urls["cdn"] = cdn.start(port=ports["cdn"])
        self._servers.append(cdn)
        notify = NotificationReceiver(self.faults)
        self.urls["notifications"] = notify.start(port=ports["notifications"])
        self._servers.append(notify)
        self._apply_kube_faults()
        return self.urls

    def set_fault(self, name: str, active: bool) -> None:
        """Switch fault ``name`` on or off and apply its simulator side."""
        if active:
            self.faults.activate(name)
        else:
            self.faults.clear(name)
        self._apply_kube_faults()
        logger.info("Fault %s is now %s", name, "on" if active else "off")

    def _apply_kube_faults(self) -> None:
        primary = self.kube["primary"]
        primary.set_pods_crashing(
            NAMESPACE, DEPLOYMENT, self.faults.is_active("app-down")
        )
        primary.set_memory_usage(
            NAMESPACE,
            DEPLOYMENT,
            LEAKING_MEMORY_BYTES if self.faults.is_active("memory-leak") else None,
        )

    def stop(self) -> None:
        """Stop every server, last started first."""
        for server in reversed(self._servers):
            try:
                server.stop()
            except Exception:
                logger.exception("Could not stop %s", type(server).__name__)


def _control_handler(services: Services) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            logger.debug(format, *args)

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer(
                200, {"urls": services.urls, "faults": services.faults.active()}
            )

        def _fault(self, active: bool) -> None:
            name = self.path.removeprefix("/faults/")
            if not self.path.startswith("/faults/") or name not in KNOWN_FAULTS:
                self._answer(404, {"error": f"unknown fault {name!r}"})
                return
            services.set_fault(name, active)
            self._answer(200, {"faults": services.faults.active()})

        def do_PUT(self) -> None:
            self._fault(True)

        def do_DELETE(self) -> None:
            self._fault(False)

    return Handler


def main(argv: list[str]) -> int:
    """Run the services until SIGTERM."""
    state_dir = Path(argv[0])
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    config = json.loads((state_dir / "services-config.json").read_text())
    services = Services(state_dir, config)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        urls = services.start()
        control = ThreadingHTTPServer(
            ("127.0.0.1", config["ports"]["control"]), _control_handler(services)
        )
        threading.Thread(target=control.serve_forever, daemon=True).start()
        urls["control"] = f"http://127.0.0.1:{control.server_address[1]}"
        ready = state_dir / "services.json"
        ready.write_text(json.dumps(urls, indent=2))
        logger.info("Services ready: %s", urls)
        stopping.wait()
        control.shutdown()
    finally:
        services.stop()
        (state_dir / "services.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

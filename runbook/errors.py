"""The errors a runbook raises, one small tree.

Library errors (psycopg, botocore, redis, httpx, kubernetes) are translated into these
once, at the edge of the system they came from, so that a run's failure message is a
sentence about what was attempted and why it failed.
"""

from __future__ import annotations


class RunbookError(Exception):
    """Base class for every error this project raises on purpose."""


class ConfigError(RunbookError, ValueError):
    """A setting is missing or malformed; nothing has been touched yet."""


class TargetUnreachableError(RunbookError, ConnectionError):
    """A system the runbook talks to did not answer."""


class CheckFailedError(RunbookError):
    """A check ran and found the system unhealthy."""


class RefusedError(RunbookError):
    """A rail stopped the run before it changed anything (confirmation, freeze, cap)."""


class SandboxError(RunbookError):
    """The local stack could not be started, stopped or described."""

"""Settings: every bad or missing value is named before anything is touched."""

from __future__ import annotations

import pytest

from runbook.errors import ConfigError
from runbook.settings import load_settings

VALID = {
    "RUNBOOK_APP_URL": "http://127.0.0.1:3000",
    "RUNBOOK_DATABASE_URL": "postgresql://admin:hunter2-secret@db.internal:5432/app",
    "RUNBOOK_REDIS_URL": "redis://:redis-secret-pw@cache.internal:6379/0",
    "RUNBOOK_UPLOADS_BUCKET": "bpmn-uploads",
    "RUNBOOK_BACKUP_BUCKET": "bpmn-backups",
}


@pytest.fixture
def env(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name, value in VALID.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


class TestLoadSettings:
    """A complete environment loads; each kind of bad value is named."""

    def test_complete_environment_loads_with_defaults(
        self, env: pytest.MonkeyPatch
    ) -> None:
        settings = load_settings()
        assert settings.k8s_namespace == "production"
        assert settings.k8s_deployment == "bpmn-studio"
        assert settings.secret("database_url").endswith("/app")

    def test_missing_variable_is_named(self, env: pytest.MonkeyPatch) -> None:
        env.delenv("RUNBOOK_DATABASE_URL")
        with pytest.raises(ConfigError, match="RUNBOOK_DATABASE_URL is not set"):
            load_settings()

    def test_every_missing_variable_is_named_at_once(self, clean_env: None) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings()
        for name in VALID:
            assert name in str(caught.value)

    @pytest.mark.parametrize(
        ("variable", "value", "expected"),
        [
            ("RUNBOOK_APP_URL", "not a url", "RUNBOOK_APP_URL"),
            ("RUNBOOK_DATABASE_URL", "mysql://u:p@h/db", "postgresql"),
            ("RUNBOOK_DATABASE_URL", "postgresql:///nohost", "must name a host"),
            ("RUNBOOK_REDIS_URL", "http://cache:6379", "RUNBOOK_REDIS_URL"),
            ("RUNBOOK_UPLOADS_BUCKET", "Not_A_Bucket", "S3 bucket name"),
            ("RUNBOOK_CHECK_TIMEOUT_SECONDS", "-3", "RUNBOOK_CHECK_TIMEOUT_SECONDS"),
            ("RUNBOOK_KUBECONFIG", "/nonexistent/kubeconfig", "no file at"),
            ("RUNBOOK_ENVIRONMENT", "Prod Env", "RUNBOOK_ENVIRONMENT"),
        ],
    )
    def test_malformed_value_is_named(
        self, env: pytest.MonkeyPatch, variable: str, value: str, expected: str
    ) -> None:
        env.setenv(variable, value)
        with pytest.raises(ConfigError, match=expected) as caught:
            load_settings()
        assert variable in str(caught.value)

    def test_secrets_never_appear_in_errors(self, env: pytest.MonkeyPatch) -> None:
        env.setenv("RUNBOOK_DATABASE_URL", "mysql://admin:hunter2-secret@db/app")
        env.setenv("RUNBOOK_REDIS_URL", "ftp://:redis-secret-pw@cache")
        with pytest.raises(ConfigError) as caught:
            load_settings()
        assert "hunter2-secret" not in str(caught.value)
        assert "redis-secret-pw" not in str(caught.value)

    def test_secrets_are_masked_in_repr(self, env: pytest.MonkeyPatch) -> None:
        text = repr(load_settings())
        assert "hunter2-secret" not in text
        assert "redis-secret-pw" not in text

    def test_unreadable_secret_block_is_named(
        self, prefect_harness: None, env: pytest.MonkeyPatch
    ) -> None:
        env.setenv("RUNBOOK_SLACK_TOKEN", "prefect-secret:no-such-block")
        with pytest.raises(ConfigError, match=r"RUNBOOK_SLACK_TOKEN.*no-such-block"):
            load_settings()

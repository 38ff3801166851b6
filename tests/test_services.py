"""The test fixtures' own contract: a missing service skips locally and fails in CI."""

import pytest

from tests.services import require


def test_missing_service_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-service-binary is not installed"):
        require("no-such-service-binary")


def test_missing_service_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require("no-such-service-binary")


def test_present_service_is_found():
    assert require("redis-server").endswith("redis-server")

"""The Hub probe: offline flags win, a closed or unknown host is reported quickly, answers are cached."""

import socket
import time

import pytest

from jaxlora.util import hub


@pytest.fixture
def online_env(monkeypatch):
    for name in hub.OFFLINE_FLAGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


@pytest.mark.parametrize("name", hub.OFFLINE_FLAGS)
def test_each_offline_flag_is_honoured_without_a_probe(online_env, monkeypatch, name):
    monkeypatch.setenv(name, "True")
    start = time.perf_counter()
    assert hub.hub_offline_reason(host="unreachable.invalid") == f"{name}=True is set"
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("value", ["0", "false", ""])
def test_false_flags_do_not_count(online_env, monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub.offline_flag() is None


def test_unknown_host_is_reported_quickly(online_env):
    start = time.perf_counter()
    reason = hub.hub_offline_reason(timeout_s=0.5, host="unreachable.invalid")
    assert reason is not None and reason.startswith("unreachable.invalid is unreachable (")
    assert time.perf_counter() - start < 5.0


def test_listening_host_is_reachable_and_the_answer_is_cached(online_env, monkeypatch):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub.hub_host() == ("127.0.0.1", port)
    assert hub.hub_offline_reason() is None
    server.close()
    # Within CACHE_SECONDS the closed server is not probed again.
    assert hub.hub_offline_reason() is None
    monkeypatch.setattr(hub, "CACHE_SECONDS", 0.0)
    assert "127.0.0.1 is unreachable" in hub.hub_offline_reason(timeout_s=0.5)

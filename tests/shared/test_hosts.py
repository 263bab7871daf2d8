"""Host names as both sides judge them (shared/hosts.py)."""

import pytest

from shared.hosts import host_list, is_local, is_loopback


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "127.0.0.1", "127.3.2.1", "::1", "[::1]"]
)
def test_loopback_names_and_addresses(host: str) -> None:
    assert is_loopback(host) and is_local(host)


@pytest.mark.parametrize(
    "host",
    ["evil.example", "127.0.0.1.evil.example", "localhost.evil.example", "10.0.0.1", "::2", ""],
)
def test_anything_else_is_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_wildcard_binds_are_local_but_not_loopback() -> None:
    assert is_local("0.0.0.0") and is_local("::") and not is_loopback("0.0.0.0")
    assert not is_local("studio.lan")


def test_host_lists_as_settings_hold_them() -> None:
    assert host_list(" Studio.LAN, ,10.0.0.5 ") == ["studio.lan", "10.0.0.5"]

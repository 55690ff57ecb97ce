"""Every private pyxs name PyxsStore relies on is checked when xenoffload.store.pyxs_internals is
imported; a pyxs without one of them is refused with the version this code needs."""

from __future__ import annotations

import pytest
import pyxs.client

from xenoffload.store import pyxs_internals


def test_the_installed_pyxs_passes_the_check() -> None:
    pyxs_internals._check()
    assert pyxs_internals.PYXS_VERSION == "0.4.1"


class _RVarWithoutCondition:
    __slots__ = ("target",)

    def __init__(self) -> None:
        self.target = None


class _MonitorWithoutEvents:
    def __init__(self, client: object) -> None:
        self.client = client


@pytest.mark.parametrize(("owner", "name", "replacement", "missing"), [
    (pyxs.client, "RVar", _RVarWithoutCondition, "RVar.condition"),
    (pyxs.client, "Monitor", _MonitorWithoutEvents, "Monitor.events"),
    (pyxs_internals.Packet, "_make", None, "Packet._make"),
])
def test_a_missing_internal_name_is_refused_with_the_version_needed(
        monkeypatch: pytest.MonkeyPatch, owner: object, name: str, replacement: object,
        missing: str) -> None:
    monkeypatch.setattr(owner, name, replacement)
    with pytest.raises(ImportError, match=rf"needs pyxs 0\.4\.1.*lacks {missing}"):
        pyxs_internals._check()


def test_a_router_without_its_reply_table_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    original = pyxs.client.Router.__init__

    def init_without_rvars(self: pyxs.client.Router, connection: object) -> None:
        original(self, connection)
        del self.rvars

    monkeypatch.setattr(pyxs.client.Router, "__init__", init_without_rvars)
    with pytest.raises(ImportError, match=r"lacks Router\.rvars"):
        pyxs_internals._check()

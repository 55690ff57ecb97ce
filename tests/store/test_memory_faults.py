"""MemoryStore test hooks: hostile bytes, lost connections, duplicated and coalesced events,
released domains."""

from __future__ import annotations

import threading

import pytest

from xenoffload.store.base import Access, Perm, StoreUnavailable, WatchEvent, XenStoreError
from xenoffload.store.memory import MemoryXenStore
from xenoffload.xs import requests


def test_a_hostile_guest_may_write_any_bytes() -> None:
    xs = MemoryXenStore()
    dom0 = xs.connect(0)
    dom0.mkdir("/local/domain/1")
    guest = xs.connect(1)
    with pytest.raises(XenStoreError, match="EACCES"):
        guest.write("data", b"x")
    dom0.set_perms("/local/domain/1", [Perm(Access.NONE, 1)])
    guest.write("data", b"\xff\xfe\x00\x1b[0m")
    assert dom0.read("/local/domain/1/data") == b"\xff\xfe\x00\x1b[0m"


def test_dropped_connection_raises_store_unavailable_everywhere() -> None:
    xs = MemoryXenStore()
    store = xs.connect(0)
    store.watch("/w", "t")
    waiter_error: list[BaseException] = []

    def wait_forever() -> None:
        try:
            store.next_event(None)
            store.next_event(None)
        except StoreUnavailable as err:
            waiter_error.append(err)

    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    xs.drop_connections()
    waiter.join(5)
    assert waiter_error and not waiter.is_alive()
    with pytest.raises(StoreUnavailable):
        store.read("/")
    assert xs.connect(0).read("/tool") == b""  # a new session works


def test_duplicated_events_arrive_twice() -> None:
    store = MemoryXenStore().connect(0)
    store.duplicate_events = True
    store.watch("/w", "t")
    assert [store.next_event(0), store.next_event(0), store.next_event(0)] == [
        WatchEvent("/w", "t"), WatchEvent("/w", "t"), None]


def test_coalesced_events_keep_one_of_identical_pending_events() -> None:
    store = MemoryXenStore().connect(0)
    store.watch("/w", "t")
    assert store.next_event(0) == WatchEvent("/w", "t")
    store.coalesce_events = True
    for value in (b"1", b"2", b"3"):
        store.write("/w", value)
    store.write("/w/x", b"")
    assert [store.next_event(0), store.next_event(0), store.next_event(0)] == [
        WatchEvent("/w", "t"), WatchEvent("/w/x", "t"), None]


def test_forced_eagain_is_shared_by_all_sessions() -> None:
    xs = MemoryXenStore()
    xs.fail_next_commits(1)
    other = xs.connect(0)
    txn = other.transaction()
    txn.write("/x", b"1")
    assert not txn.commit()
    txn = xs.connect(0).transaction()
    txn.write("/x", b"1")
    assert txn.commit()


def test_releasing_a_domain_ends_its_sessions() -> None:
    xs = MemoryXenStore()
    dom0, guest = xs.connect(0), xs.connect(4)
    assert dom0.is_domain_introduced(4)
    dom0.call(requests.release(4))
    with pytest.raises(StoreUnavailable):
        guest.next_event(0)
    assert not dom0.is_domain_introduced(4)



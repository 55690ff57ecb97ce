"""One behavioural suite for every Store: MemoryStore and PyxsStore over the embedded xenstored.

Each test states one XenStore rule; both backends must obey it identically.
"""

from __future__ import annotations

import pytest

from xenoffload.store.base import (
    Access,
    Perm,
    Store,
    StoreUnavailable,
    Transaction,
    WatchEvent,
    WriteGroup,
    XenStoreError,
    parse_perm,
    run_transaction,
)

from .conftest import Backend, make_vif

WAIT = 2.0


def errno_of(excinfo: pytest.ExceptionInfo[XenStoreError]) -> str:
    return excinfo.value.errno_name


def drain(store: object, timeout: float = 0.2) -> list[WatchEvent]:
    events = []
    while (event := store.next_event(timeout)) is not None:  # type: ignore[attr-defined]
        events.append(event)
    return events


# ---------------------------------------------------------------- nodes


def test_write_then_read_returns_the_value(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write("/test/key", b"value")
    assert dom0.read("/test/key") == b"value"


def test_reading_a_missing_node_raises_enoent(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.mkdir("/test")
    with pytest.raises(XenStoreError) as excinfo:
        dom0.read("/test/missing")
    assert errno_of(excinfo) == "ENOENT"
    assert dom0.try_read("/test/missing") is None


def test_write_creates_missing_parents_with_empty_values(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write("/a/b/c", b"1")
    assert dom0.read("/a") == b""
    assert dom0.read("/a/b") == b""
    assert dom0.directory("/a") == ["b"]


def read_all(store: Store, paths: list[str], txn: Transaction | None = None
             ) -> list[bytes | None]:
    """Read ``paths`` in one batch (in ``txn``, else outside any transaction)."""
    return store.read_batch([(txn, path) for path in paths])


def write_all(store: Store, values: list[tuple[str, bytes]],
              txn: Transaction | None = None) -> None:
    """Write ``values`` in one batch (in ``txn``, else outside any transaction)."""
    store.write_batch([WriteGroup(txn, values)])


def test_read_batch_returns_values_in_order_and_none_for_missing(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write("/test/a", b"1")
    dom0.write("/test/c", b"3")
    assert read_all(dom0, ["/test/a", "/test/b", "/test/c"]) == [b"1", None, b"3"]


def test_write_batch_writes_every_node_and_read_batch_sees_it_in_a_transaction(
    backend: Backend,
) -> None:
    dom0 = backend.connect()
    txn = dom0.transaction()
    write_all(dom0, [("/test/x", b"x"), ("/test/y", b"")], txn)
    assert read_all(dom0, ["/test/x", "/test/y"], txn) == [b"x", b""]
    assert dom0.try_read("/test/x") is None  # not visible before commit
    assert txn.commit()
    assert read_all(dom0, ["/test/x", "/test/y"]) == [b"x", b""]


def test_read_batch_outside_transactions_gives_none_for_what_a_guest_may_not_read(
        backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write("/local/domain/0/secret", b"s")
    dom0.write("/local/domain/1/mine", b"m")
    dom0.set_perms("/local/domain/1/mine", [parse_perm("n1")])
    guest = backend.connect(1)
    assert read_all(guest, ["/local/domain/0/secret", "/local/domain/1/mine"]) == [None, b"m"]


def test_write_batch_raises_the_first_error_after_the_rest(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write("/local/domain/1/ok", b"")
    dom0.set_perms("/local/domain/1/ok", [parse_perm("n1")])
    guest = backend.connect(1)
    with pytest.raises(XenStoreError) as excinfo:
        write_all(guest, [("/local/domain/0/nope", b"x"), ("/local/domain/1/ok", b"y")])
    assert errno_of(excinfo) == "EACCES"
    assert dom0.read("/local/domain/1/ok") == b"y"


def test_values_are_any_bytes_including_empty(backend: Backend) -> None:
    dom0 = backend.connect()
    for value in (b"", b"\xff\xfe", b"line\nbreak\ttab", b"nul\x00inside", "é".encode()):
        dom0.write("/test/raw", value)
        assert dom0.read("/test/raw") == value


def test_mkdir_leaves_an_existing_value_alone(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write("/test/node", b"keep")
    dom0.mkdir("/test/node")
    assert dom0.read("/test/node") == b"keep"


def test_rm_removes_the_whole_subtree(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write("/test/dir/a/b", b"1")
    dom0.write("/test/dir/c", b"2")
    dom0.rm("/test/dir")
    assert dom0.try_read("/test/dir") is None
    assert dom0.try_read("/test/dir/a/b") is None
    assert dom0.directory("/test") == []


def test_rm_of_a_missing_node_with_existing_parent_is_no_error(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write("/test/kept", b"1")
    dom0.watch("/test", "tok")
    drain(dom0)
    dom0.rm("/test/never-was")
    assert dom0.directory("/test") == ["kept"]  # nothing removed, nothing created
    assert dom0.try_read("/test/never-was") is None
    assert dom0.next_event(0.2) is None  # and nothing fired


def test_rm_of_a_node_whose_parent_is_missing_raises_enoent(backend: Backend) -> None:
    dom0 = backend.connect()
    with pytest.raises(XenStoreError) as excinfo:
        dom0.rm("/nowhere/at/all")
    assert errno_of(excinfo) == "ENOENT"


def test_directory_lists_children_in_creation_order(backend: Backend) -> None:
    dom0 = backend.connect()
    for name in ("zeta", "alpha", "mid"):
        dom0.write(f"/test/{name}", b"")
    assert dom0.directory("/test") == ["zeta", "alpha", "mid"]


def test_directory_of_a_missing_node_raises_enoent(backend: Backend) -> None:
    dom0 = backend.connect()
    with pytest.raises(XenStoreError) as excinfo:
        dom0.directory("/missing")
    assert errno_of(excinfo) == "ENOENT"


def test_directory_longer_than_one_message_is_complete(backend: Backend) -> None:
    dom0 = backend.connect()
    names = [f"child-with-a-long-name-{index:04d}" for index in range(200)]  # > 4096 bytes
    for name in names:
        dom0.write(f"/big/{name}", b"")
    assert dom0.directory("/big") == names


def test_directory_batch_lists_each_node_none_where_missing_and_long_ones_whole(
        backend: Backend) -> None:
    dom0 = backend.connect()
    names = [f"child-with-a-long-name-{index:04d}" for index in range(200)]  # > 4096 bytes
    write_all(dom0, [*((f"/big/{name}", b"") for name in names), ("/small/a", b""),
                     ("/small/b", b"")])
    txn = dom0.transaction()
    assert dom0.directory_batch([(None, "/small"), (txn, "/big"), (None, "/missing")]) == [
        ["a", "b"], names, None]
    txn.abort()


@pytest.mark.parametrize("path", ["/trailing/", "/double//slash", "/bad char", "", "/é"])
def test_invalid_paths_raise_einval(backend: Backend, path: str) -> None:
    dom0 = backend.connect()
    with pytest.raises(XenStoreError) as excinfo:
        dom0.write(path, b"x")
    assert errno_of(excinfo) == "EINVAL"


def test_a_request_larger_than_one_message_raises_e2big(backend: Backend) -> None:
    dom0 = backend.connect()
    with pytest.raises(XenStoreError) as excinfo:
        dom0.write("/test/huge", b"x" * 4096)
    assert errno_of(excinfo) == "E2BIG"
    dom0.write("/test/still-usable", b"1")


def test_get_domain_path_names_the_domain_home(backend: Backend) -> None:
    assert backend.connect().get_domain_path(7) == "/local/domain/7"


def test_a_closed_store_raises_store_unavailable(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.close()
    with pytest.raises(StoreUnavailable):
        dom0.read("/")
    with pytest.raises(StoreUnavailable):
        dom0.next_event(0.1)


# ---------------------------------------------------------------- permissions


def test_created_nodes_inherit_the_parent_permissions(backend: Backend) -> None:
    dom0 = backend.connect()
    frontend, _ = make_vif(dom0)
    dom0.write(f"{frontend}/feature-sg", b"1")
    assert dom0.get_perms(f"{frontend}/feature-sg") == (Perm(Access.NONE, 1),
                                                       Perm(Access.READ, 0))


def test_set_perms_replaces_the_list(backend: Backend) -> None:
    dom0 = backend.connect()
    perms = (Perm(Access.NONE, 0), Perm(Access.READ, 1), Perm(Access.BOTH, 2))
    dom0.write("/test/p", b"")
    dom0.set_perms("/test/p", perms)
    assert dom0.get_perms("/test/p") == perms


def test_guest_cannot_read_a_backend_node_without_read_permission(backend: Backend) -> None:
    dom0 = backend.connect()
    _, backend_dir = make_vif(dom0)
    dom0.write(f"{backend_dir}/secret", b"s")
    dom0.set_perms(f"{backend_dir}/secret", [Perm(Access.NONE, 0)])
    guest = backend.connect(1)
    with pytest.raises(XenStoreError) as excinfo:
        guest.read(f"{backend_dir}/secret")
    assert errno_of(excinfo) == "EACCES"


def test_guest_reads_backend_nodes_granted_r(backend: Backend) -> None:
    dom0 = backend.connect()
    _, backend_dir = make_vif(dom0)
    assert backend.connect(1).read(f"{backend_dir}/state") == b"1"


def test_guest_cannot_write_under_the_backend_dir(backend: Backend) -> None:
    dom0 = backend.connect()
    _, backend_dir = make_vif(dom0)
    guest = backend.connect(1)
    for path in (f"{backend_dir}/state", f"{backend_dir}/new-key"):
        with pytest.raises(XenStoreError) as excinfo:
            guest.write(path, b"4")
        assert errno_of(excinfo) == "EACCES"
    assert dom0.read(f"{backend_dir}/state") == b"1"


def test_guest_missing_node_in_unreadable_dir_is_eacces_not_enoent(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.mkdir("/private")
    with pytest.raises(XenStoreError) as excinfo:
        backend.connect(1).read("/private/missing")
    assert errno_of(excinfo) == "EACCES"


def test_guest_relative_paths_resolve_in_its_home(backend: Backend) -> None:
    dom0 = backend.connect()
    frontend, _ = make_vif(dom0)
    guest = backend.connect(1)
    guest.write("device/vif/0/state", b"2")
    assert dom0.read(f"{frontend}/state") == b"2"


@pytest.mark.parametrize("path", ["../0/backend", "device/../../0", "./device"])
def test_guest_cannot_escape_its_home_with_relative_paths(backend: Backend, path: str) -> None:
    make_vif(backend.connect())
    with pytest.raises(XenStoreError) as excinfo:
        backend.connect(1).read(path)
    assert errno_of(excinfo) == "EINVAL"


def test_guest_owns_the_nodes_it_creates(backend: Backend) -> None:
    dom0 = backend.connect()
    frontend, _ = make_vif(dom0)
    backend.connect(1).write("device/vif/0/feature-ipv6-csum-offload", b"1")
    perms = dom0.get_perms(f"{frontend}/feature-ipv6-csum-offload")
    assert perms[0] == Perm(Access.NONE, 1)


def test_guest_cannot_give_its_node_to_another_domain(backend: Backend) -> None:
    make_vif(backend.connect())
    guest = backend.connect(1)
    with pytest.raises(XenStoreError) as excinfo:
        guest.set_perms("device/vif/0/state", [Perm(Access.NONE, 0)])
    assert errno_of(excinfo) == "EPERM"


def test_other_guest_cannot_read_the_frontend(backend: Backend) -> None:
    frontend, _ = make_vif(backend.connect())
    with pytest.raises(XenStoreError) as excinfo:
        backend.connect(2).read(f"{frontend}/state")
    assert errno_of(excinfo) == "EACCES"


# ---------------------------------------------------------------- transactions


def test_transaction_writes_are_invisible_until_commit(backend: Backend) -> None:
    dom0 = backend.connect()
    txn = dom0.transaction()
    txn.write("/test/t", b"1")
    assert txn.read("/test/t") == b"1"
    assert dom0.try_read("/test/t") is None
    assert txn.commit()
    assert dom0.read("/test/t") == b"1"


def test_abort_discards_the_writes(backend: Backend) -> None:
    dom0 = backend.connect()
    txn = dom0.transaction()
    txn.write("/test/t", b"1")
    txn.abort()
    assert dom0.try_read("/test/t") is None


def test_conflicting_commit_returns_false_and_leaves_nothing(backend: Backend) -> None:
    dom0 = backend.connect()
    other = backend.connect()
    dom0.write("/test/state", b"1")
    txn = dom0.transaction()
    assert txn.read("/test/state") == b"1"
    txn.write("/test/state", b"3")
    txn.write("/test/extra", b"x")
    other.write("/test/state", b"2")
    assert not txn.commit()
    assert dom0.read("/test/state") == b"2"
    assert dom0.try_read("/test/extra") is None


def test_reads_inside_a_transaction_are_stable(backend: Backend) -> None:
    dom0 = backend.connect()
    other = backend.connect()
    dom0.write("/test/v", b"1")
    txn = dom0.transaction()
    assert txn.read("/test/v") == b"1"
    other.write("/test/v", b"2")
    assert txn.read("/test/v") == b"1"
    txn.abort()


def test_forced_eagain_leaves_nothing_behind(backend: Backend) -> None:
    dom0 = backend.connect()
    backend.fail_next_commits(1)
    txn = dom0.transaction()
    txn.write("/test/forced", b"1")
    assert not txn.commit()
    assert dom0.try_read("/test/forced") is None


def test_run_transaction_redoes_the_body_after_eagain(backend: Backend) -> None:
    dom0 = backend.connect()
    backend.fail_next_commits(2)
    attempts = []

    def body(txn: Transaction) -> str:
        attempts.append(1)
        txn.write("/test/retried", b"ok")
        return "done"

    assert run_transaction(dom0, body) == "done"
    assert len(attempts) == 3
    assert dom0.read("/test/retried") == b"ok"


def test_a_transaction_creating_nodes_commits_parents_too(backend: Backend) -> None:
    dom0 = backend.connect()
    txn = dom0.transaction()
    txn.write("/test/deep/er/node", b"1")
    txn.rm("/test/deep/er/node")
    txn.write("/test/deep/other", b"2")
    assert txn.commit()
    assert dom0.directory("/test/deep") == ["er", "other"]
    assert dom0.directory("/test/deep/er") == []


# ---------------------------------------------------------------- watches


def test_a_watch_fires_once_on_registration(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.watch("/test/w", "tok")
    assert dom0.next_event(WAIT) == WatchEvent("/test/w", "tok")
    assert dom0.next_event(0.2) is None


def test_a_watch_fires_for_the_node_and_descendants_not_siblings(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.watch("/test/w", "tok")
    drain(dom0)
    dom0.write("/test/w", b"1")
    dom0.write("/test/w/child/grandchild", b"2")
    dom0.write("/test/wx", b"sibling")
    assert drain(dom0) == [WatchEvent("/test/w", "tok"),
                           WatchEvent("/test/w/child/grandchild", "tok")]


def test_a_watch_fires_on_rm_and_on_permission_change(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write("/test/w", b"1")
    dom0.watch("/test/w", "tok")
    drain(dom0)
    dom0.set_perms("/test/w", [Perm(Access.NONE, 0), Perm(Access.READ, 1)])
    dom0.rm("/test/w")
    assert drain(dom0) == [WatchEvent("/test/w", "tok"), WatchEvent("/test/w", "tok")]


def test_transaction_events_arrive_only_at_commit(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.watch("/test", "tok")
    drain(dom0)
    txn = dom0.transaction()
    txn.write("/test/a", b"1")
    assert dom0.next_event(0.2) is None
    assert txn.commit()
    assert drain(dom0) == [WatchEvent("/test/a", "tok")]


def test_an_aborted_transaction_fires_nothing(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.watch("/test", "tok")
    drain(dom0)
    txn = dom0.transaction()
    txn.write("/test/a", b"1")
    txn.abort()
    assert dom0.next_event(0.2) is None


def test_relative_watches_report_relative_paths(backend: Backend) -> None:
    dom0 = backend.connect()
    frontend, backend_dir = make_vif(dom0)
    guest = backend.connect(1)
    guest.watch("device/vif/0", "fe")
    guest.watch(f"{backend_dir}/state", "be")
    assert drain(guest) == [WatchEvent("device/vif/0", "fe"),
                            WatchEvent(f"{backend_dir}/state", "be")]
    dom0.write(f"{frontend}/state", b"3")
    dom0.write(f"{backend_dir}/state", b"2")
    assert drain(guest) == [WatchEvent("device/vif/0/state", "fe"),
                            WatchEvent(f"{backend_dir}/state", "be")]


def test_a_guest_gets_no_events_for_nodes_it_cannot_read(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.mkdir("/private")
    guest = backend.connect(1)
    guest.watch("/private", "tok")
    drain(guest)
    dom0.write("/private/a/b", b"1")
    assert guest.next_event(0.3) is None


def test_unwatch_stops_the_events(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.watch("/test", "tok")
    drain(dom0)
    dom0.unwatch("/test", "tok")
    dom0.write("/test/after", b"1")
    assert dom0.next_event(0.2) is None


def test_unwatching_an_unknown_watch_raises_enoent(backend: Backend) -> None:
    dom0 = backend.connect()
    with pytest.raises(XenStoreError) as excinfo:
        dom0.unwatch("/test", "never")
    assert errno_of(excinfo) == "ENOENT"


def test_the_same_watch_twice_raises_eexist(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.watch("/test", "tok")
    with pytest.raises(XenStoreError) as excinfo:
        dom0.watch("/test", "tok")
    assert errno_of(excinfo) == "EEXIST"


def test_two_watches_with_different_tokens_both_fire(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.watch("/test", "one")
    dom0.watch("/test/x", "two")
    drain(dom0)
    dom0.write("/test/x", b"1")
    assert sorted(e.token for e in drain(dom0)) == ["one", "two"]


# ---------------------------------------------------------------- event batches


def _five_events(backend: Backend) -> Store:
    """A store with five events queued (its own writes: their events precede the replies)."""
    dom0 = backend.connect()
    dom0.watch("/test", "tok")
    assert dom0.next_event(WAIT) == WatchEvent("/test", "tok")
    for index in range(5):
        dom0.write(f"/test/n{index}", b"1")
    return dom0


def test_next_event_zero_returns_an_event_already_queued(backend: Backend) -> None:
    dom0 = _five_events(backend)
    assert [dom0.next_event(0) for _ in range(6)] == [
        *(WatchEvent(f"/test/n{index}", "tok") for index in range(5)), None]


def test_next_events_takes_everything_queued_up_to_the_limit(backend: Backend) -> None:
    dom0 = _five_events(backend)
    assert dom0.next_events(WAIT, 3) == [WatchEvent(f"/test/n{i}", "tok") for i in range(3)]
    assert dom0.next_events(0, 100) == [WatchEvent(f"/test/n{i}", "tok") for i in (3, 4)]
    assert dom0.next_events(0, 100) == []


def test_next_events_waits_for_the_first_event_only(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.watch("/test", "tok")
    assert dom0.next_events(WAIT, 10) == [WatchEvent("/test", "tok")]
    assert dom0.next_events(0.1, 10) == []


# ---------------------------------------------------------------- transaction batches


def test_start_transactions_opens_distinct_transactions(backend: Backend) -> None:
    dom0 = backend.connect()
    write_all(dom0, [(f"/test/t{index}", b"") for index in range(3)])
    txns = dom0.start_transactions(3)
    assert len(txns) == 3
    for index, txn in enumerate(txns):  # disjoint nodes: no conflict between them
        txn.write(f"/test/t{index}", str(index).encode())
        assert dom0.read(f"/test/t{index}") == b""  # not before the commit
    assert dom0.end_transactions([(txn, True) for txn in txns]) == [True, True, True]
    assert read_all(dom0, ["/test/t0", "/test/t1", "/test/t2"]) == [b"0", b"1", b"2"]


def test_end_transactions_reports_conflicts_and_aborts_per_transaction(
        backend: Backend) -> None:
    dom0, other = backend.connect(), backend.connect()
    dom0.write("/test/shared", b"0")
    clean, conflicted, aborted = dom0.start_transactions(3)
    assert dom0.read_batch([(conflicted, "/test/shared")]) == [b"0"]
    clean.write("/test/clean", b"1")
    conflicted.write("/test/conflicted", b"1")
    aborted.write("/test/aborted", b"1")
    other.write("/test/shared", b"changed")
    assert dom0.end_transactions([(clean, True), (conflicted, True), (aborted, False)]) == [
        True, False, False]
    assert read_all(dom0, ["/test/clean", "/test/conflicted", "/test/aborted"]) == [
        b"1", None, None]


def test_a_node_only_read_in_a_transaction_makes_its_commit_conflict(backend: Backend) -> None:
    """C xenstored checks at commit every node the transaction read, also where it wrote
    nothing near it (no parent directory changed to stand in for the check)."""
    dom0, other = backend.connect(), backend.connect()
    write_all(dom0, [("/test/vif/state", b"4"), ("/test/elsewhere", b"0")])
    txn, = dom0.start_transactions(1)
    assert dom0.read_batch([(txn, "/test/vif/state")]) == [b"4"]
    txn.write("/test/elsewhere", b"1")
    other.write("/test/vif/state", b"4")
    assert dom0.end_transactions([(txn, True)]) == [False]
    assert dom0.read("/test/elsewhere") == b"0"
    read_only, = dom0.start_transactions(1)
    assert dom0.read_batch([(read_only, "/test/vif/state")]) == [b"4"]
    other.rm("/test/vif")
    assert dom0.end_transactions([(read_only, True)]) == [False]


def test_end_transactions_raises_other_errors_after_ending_the_rest(backend: Backend) -> None:
    dom0 = backend.connect()
    first, second = dom0.start_transactions(2)
    second.write("/test/second", b"2")
    assert first.commit()
    with pytest.raises(XenStoreError) as excinfo:
        dom0.end_transactions([(first, True), (second, True)])  # first is already ended
    assert errno_of(excinfo) == "ENOENT"
    assert dom0.read("/test/second") == b"2"


def test_start_transactions_past_the_quota_starts_none(backend: Backend) -> None:
    dom0 = backend.connect()
    make_vif(dom0)
    guest = backend.connect(1)
    with pytest.raises(XenStoreError) as excinfo:
        guest.start_transactions(12)  # the quota lets a domain hold 11
    assert errno_of(excinfo) == "ENOSPC"
    assert backend.model.usage(1).transactions == 0
    assert len(guest.start_transactions(11)) == 11


def test_read_batch_reads_in_each_transaction_and_outside(backend: Backend) -> None:
    dom0, other = backend.connect(), backend.connect()
    dom0.write("/test/a", b"old")
    first, second = dom0.start_transactions(2)
    first.write("/test/a", b"first")
    other.write("/test/b", b"b")
    assert dom0.read_batch([(first, "/test/a"), (second, "/test/a"), (None, "/test/b"),
                            (None, "/test/missing")]) == [b"first", b"old", b"b", None]
    dom0.end_transactions([(first, False), (second, False)])


def test_read_batch_gives_none_for_what_a_guest_may_not_read(backend: Backend) -> None:
    dom0 = backend.connect()
    frontend, backend_dir = make_vif(dom0)
    dom0.write("/local/domain/0/secret", b"s")
    guest = backend.connect(1)
    assert guest.read_batch([(None, f"{frontend}/state"), (None, "/local/domain/0/secret"),
                             (None, f"{backend_dir}/state")]) == [b"1", None, b"1"]


def test_read_batch_raises_other_errors_after_every_reply(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write("/test/a", b"1")
    with pytest.raises(XenStoreError) as excinfo:
        dom0.read_batch([(None, "/test/a"), (None, "/test//bad"), (None, "/test/a")])
    assert errno_of(excinfo) == "EINVAL"
    assert dom0.read("/test/a") == b"1"  # the connection is still in step


def test_write_batch_writes_each_group_in_its_own_transaction(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write("/dev/one/state", b"1")  # parents exist: the groups touch disjoint nodes
    dom0.write("/dev/three/state", b"1")
    one, two, three = dom0.start_transactions(3)
    dom0.write_batch([
        WriteGroup(one, [("/dev/one/feature", b"1")]),
        WriteGroup(two, [("/dev/two/feature", b"2")]),
        WriteGroup(three, [("/dev/three/feature", b"3"), ("/dev/three/more", b"")]),
    ])
    assert read_all(dom0, ["/dev/one/feature", "/dev/two/feature"]) == [None, None]
    assert dom0.end_transactions([(one, True), (two, False), (three, True)]) == [
        True, False, True]
    assert read_all(dom0, ["/dev/one/feature", "/dev/three/feature", "/dev/three/more"]) == [
        b"1", b"3", b""]
    assert dom0.try_read("/dev/two") is None  # the aborted group wrote nothing


def test_write_batch_outside_transactions_writes_at_once(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write_batch([WriteGroup(None, [("/test/x", b"x"), ("/test/y", b"y")])])
    assert read_all(dom0, ["/test/x", "/test/y"]) == [b"x", b"y"]


def test_write_batch_raises_the_first_error_after_every_group(backend: Backend) -> None:
    dom0 = backend.connect()
    dom0.write("/local/domain/1/ok", b"")
    dom0.set_perms("/local/domain/1/ok", [parse_perm("n1")])
    guest = backend.connect(1)
    first, second = guest.start_transactions(2)
    with pytest.raises(XenStoreError) as excinfo:
        guest.write_batch([WriteGroup(first, [("/local/domain/0/nope", b"x")]),
                           WriteGroup(second, [("/local/domain/1/ok", b"y")])])
    assert errno_of(excinfo) == "EACCES"
    assert guest.end_transactions([(first, False), (second, True)]) == [False, True]
    assert dom0.read("/local/domain/1/ok") == b"y"


def test_batches_refuse_another_stores_transaction(backend: Backend) -> None:
    dom0, other = backend.connect(), backend.connect()
    foreign = other.transaction()
    with pytest.raises(ValueError, match="not a transaction of"):
        dom0.read_batch([(foreign, "/test")])
    with pytest.raises(ValueError, match="not a transaction of"):
        dom0.end_transactions([(foreign, True)])
    foreign.abort()


def test_write_group_is_a_frozen_value() -> None:
    group = WriteGroup(None, [("/g/a", bytearray(b"1"))])
    assert group.values == (("/g/a", b"1"),)
    with pytest.raises(AttributeError):
        group.values = ()  # type: ignore[misc]

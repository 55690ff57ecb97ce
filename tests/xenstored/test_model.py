"""C xenstored rules the model must follow beyond the Store contract: permission inheritance,
error leaks, RM watch exactness, special watches, domains, quotas, DIRECTORY_PART."""

from __future__ import annotations

import pytest

from xenoffload.xs.dispatch import handle_request
from xenoffload.xs.errors import XenStoreError
from xenoffload.xs.model import Connection, Quotas, XenStoreModel
from xenoffload.xs.values import Access, Perm, WatchEvent
from xenoffload.xs.wire import Op


def errno(call: object, *args: object) -> str:
    with pytest.raises(XenStoreError) as excinfo:
        call(*args)  # type: ignore[operator]
    return excinfo.value.errno_name


@pytest.fixture
def model() -> XenStoreModel:
    return XenStoreModel()


@pytest.fixture
def dom0(model: XenStoreModel) -> Connection:
    return model.connect(0)


def guest_home(model: XenStoreModel, dom0: Connection, domid: int) -> Connection:
    model.mkdir(dom0, f"/local/domain/{domid}")
    model.set_perms(dom0, f"/local/domain/{domid}", [Perm(Access.NONE, domid)])
    return model.connect(domid)


def test_initial_tree_is_c_xenstoreds(model: XenStoreModel, dom0: Connection) -> None:
    assert model.directory(dom0, "/") == ["tool"]
    assert model.directory(dom0, "/tool") == ["xenstored"]
    assert model.get_perms(dom0, "@introduceDomain") == (Perm(Access.NONE, 0),)


def test_unprivileged_creator_owns_created_parents(model: XenStoreModel,
                                                   dom0: Connection) -> None:
    guest = guest_home(model, dom0, 3)
    model.set_perms(dom0, "/local/domain/3", [Perm(Access.NONE, 3), Perm(Access.READ, 0)])
    model.write(guest, "a/b/c", b"1")
    for path in ("/local/domain/3/a", "/local/domain/3/a/b/c"):
        assert model.get_perms(dom0, path) == (Perm(Access.NONE, 3), Perm(Access.READ, 0))


def test_privileged_creator_keeps_the_inherited_owner(model: XenStoreModel,
                                                      dom0: Connection) -> None:
    guest_home(model, dom0, 3)
    model.write(dom0, "/local/domain/3/x/y", b"1")
    assert model.get_perms(dom0, "/local/domain/3/x/y")[0] == Perm(Access.NONE, 3)


def test_missing_node_reads_enoent_only_where_the_parent_is_readable(
        model: XenStoreModel, dom0: Connection) -> None:
    guest = guest_home(model, dom0, 2)
    assert errno(model.read, guest, "nothing") == "ENOENT"
    assert errno(model.read, guest, "/tool/nothing") == "EACCES"


def test_write_access_granted_by_an_entry_allows_creation(model: XenStoreModel,
                                                          dom0: Connection) -> None:
    model.mkdir(dom0, "/shared")
    model.set_perms(dom0, "/shared", [Perm(Access.NONE, 0), Perm(Access.WRITE, 4)])
    guest = model.connect(4)
    model.write(guest, "/shared/note", b"hi")
    assert errno(model.read, guest, "/shared") == "EACCES"
    assert model.read(guest, "/shared/note") == b"hi"  # owner of what it created


def test_default_access_of_the_first_entry_applies_to_unlisted_domains(
        model: XenStoreModel, dom0: Connection) -> None:
    model.write(dom0, "/pub", b"v")
    model.set_perms(dom0, "/pub", [Perm(Access.READ, 0), Perm(Access.NONE, 6)])
    assert model.read(model.connect(5), "/pub") == b"v"
    assert errno(model.read, model.connect(6), "/pub") == "EACCES"


def test_set_target_grants_the_targets_rights(model: XenStoreModel, dom0: Connection) -> None:
    guest_home(model, dom0, 7)
    model.write(dom0, "/local/domain/7/secret", b"s")
    stubdom = model.connect(8)
    assert errno(model.read, stubdom, "/local/domain/7/secret") == "EACCES"
    model.set_target(dom0, 8, 7)
    assert model.read(stubdom, "/local/domain/7/secret") == b"s"


def test_rm_fires_ancestor_watches_for_the_root_and_exact_watches_below(
        model: XenStoreModel, dom0: Connection) -> None:
    model.write(dom0, "/a/b/c", b"1")
    watcher = model.connect(0)
    for path in ("/a", "/a/b/c", "/a/b/c/d"):
        model.watch(watcher, path, path)
    model.take_events(watcher)
    model.rm(dom0, "/a/b")
    assert sorted(model.take_events(watcher), key=lambda e: e.token) == [
        WatchEvent("/a/b", "/a"), WatchEvent("/a/b/c", "/a/b/c")]


def test_mkdir_of_an_existing_node_fires_nothing(model: XenStoreModel,
                                                 dom0: Connection) -> None:
    model.write(dom0, "/n", b"")
    model.watch(dom0, "/n", "t")
    model.take_events(dom0)
    model.mkdir(dom0, "/n")
    assert model.take_events(dom0) == []


def test_a_watcher_losing_read_access_still_sees_the_permission_change(
        model: XenStoreModel, dom0: Connection) -> None:
    model.write(dom0, "/n", b"")
    model.set_perms(dom0, "/n", [Perm(Access.READ, 0)])
    guest = model.connect(4)
    model.watch(guest, "/n", "t")
    model.take_events(guest)
    model.set_perms(dom0, "/n", [Perm(Access.NONE, 0)])
    assert model.take_events(guest) == [WatchEvent("/n", "t")]
    model.write(dom0, "/n", b"x")
    assert model.take_events(guest) == []


def test_introduce_and_release_fire_the_special_watches(model: XenStoreModel,
                                                        dom0: Connection) -> None:
    model.watch(dom0, "@introduceDomain", "in")
    model.watch(dom0, "@releaseDomain", "out")
    model.watch(dom0, "/", "all")
    assert len(model.take_events(dom0)) == 3
    model.introduce(dom0, 12, 1234, 5)
    assert model.take_events(dom0) == [WatchEvent("@introduceDomain", "in")]
    assert model.is_domain_introduced(dom0, 12)
    model.release(dom0, 12)
    assert model.take_events(dom0) == [WatchEvent("@releaseDomain", "out")]
    assert not model.is_domain_introduced(dom0, 12)


def test_release_ends_the_domains_sessions(model: XenStoreModel, dom0: Connection) -> None:
    guest = model.connect(9)
    closed: list[Connection] = []
    guest.close_listener = closed.append
    model.watch(guest, "/local/domain/9", "t")
    model.release(dom0, 9)
    assert closed == [guest] and guest.closed and not guest.watches


def test_guests_get_no_special_events_by_default(model: XenStoreModel,
                                                 dom0: Connection) -> None:
    guest = model.connect(3)
    model.watch(guest, "@introduceDomain", "in")
    model.take_events(guest)
    model.introduce(dom0, 13, 0, 1)
    assert model.take_events(guest) == []


@pytest.mark.parametrize(("call", "args", "expected"), [
    ("introduce", (5, 0, 0), "EINVAL"),
    ("release", (0,), "EINVAL"),
    ("release", (77,), "ENOENT"),
    ("resume", (77,), "ENOENT"),
    ("set_target", (77, 0), "ENOENT"),
])
def test_domain_operation_errors(model: XenStoreModel, dom0: Connection, call: str,
                                 args: tuple[int, ...], expected: str) -> None:
    assert errno(getattr(model, call), dom0, *args) == expected


def test_domain_operations_need_privilege(model: XenStoreModel) -> None:
    guest = model.connect(3)
    for op, payload in ((Op.INTRODUCE, b"4\x001\x001\0"), (Op.RELEASE, b"3\0"),
                        (Op.IS_DOMAIN_INTRODUCED, b"3\0"), (Op.SET_TARGET, b"3\x000\0"),
                        (Op.RESUME, b"3\0"), (Op.CONTROL, b"check\0")):
        assert handle_request(model, guest, op, 0, payload) == (Op.ERROR, b"EACCES\0")


def test_get_domain_path_and_is_introduced_over_the_wire(model: XenStoreModel,
                                                         dom0: Connection) -> None:
    assert handle_request(model, dom0, Op.GET_DOMAIN_PATH, 0, b"5\0") == (
        Op.GET_DOMAIN_PATH, b"/local/domain/5\0")
    assert handle_request(model, dom0, Op.IS_DOMAIN_INTRODUCED, 0, b"0\0") == (
        Op.IS_DOMAIN_INTRODUCED, b"T\0")
    assert handle_request(model, dom0, Op.IS_DOMAIN_INTRODUCED, 0, b"55\0") == (
        Op.IS_DOMAIN_INTRODUCED, b"F\0")


# ---------------------------------------------------------------- transactions


def test_transaction_ids_start_at_one_and_unknown_ids_are_enoent(model: XenStoreModel,
                                                                 dom0: Connection) -> None:
    assert model.transaction_start(dom0) == 1
    assert model.transaction_start(dom0) == 2
    assert errno(model.read, dom0, "/", 99) == "ENOENT"
    assert errno(model.transaction_end, dom0, 0, True) == "ENOENT"


def test_transaction_start_inside_a_transaction_is_ebusy(model: XenStoreModel,
                                                         dom0: Connection) -> None:
    tx_id = model.transaction_start(dom0)
    assert errno(model.transaction_start, dom0, tx_id) == "EBUSY"


def test_transaction_end_needs_t_or_f(model: XenStoreModel, dom0: Connection) -> None:
    tx_id = model.transaction_start(dom0)
    assert handle_request(model, dom0, Op.TRANSACTION_END, tx_id, b"X\0") == (
        Op.ERROR, b"EINVAL\0")
    assert handle_request(model, dom0, Op.TRANSACTION_END, tx_id, b"F\0") == (
        Op.TRANSACTION_END, b"OK\0")


def test_two_transactions_creating_siblings_conflict(model: XenStoreModel,
                                                     dom0: Connection) -> None:
    model.mkdir(dom0, "/dir")
    first, second = model.transaction_start(dom0), model.transaction_start(dom0)
    model.write(dom0, "/dir/a", b"1", first)
    model.write(dom0, "/dir/b", b"1", second)
    model.transaction_end(dom0, first, True)
    assert errno(model.transaction_end, dom0, second, True) == "EAGAIN"
    assert model.directory(dom0, "/dir") == ["a"]


def test_reading_a_missing_node_conflicts_with_its_creation(model: XenStoreModel,
                                                            dom0: Connection) -> None:
    tx_id = model.transaction_start(dom0)
    assert errno(model.read, dom0, "/flag", tx_id) == "ENOENT"
    model.write(dom0, "/other", b"x", tx_id)
    model.write(dom0, "/flag", b"1")
    assert errno(model.transaction_end, dom0, tx_id, True) == "EAGAIN"
    assert model.node("/other") is None


def test_a_node_only_read_conflicts_with_its_change(model: XenStoreModel,
                                                  dom0: Connection) -> None:
    """As C xenstored (every node a transaction read is checked at commit, whether or not
    the transaction wrote anything near it): here the transaction writes only an existing
    node elsewhere, so no parent directory changes to hide a missing read check."""
    model.write(dom0, "/vif/state", b"4")
    model.write(dom0, "/elsewhere/key", b"0")
    tx_id = model.transaction_start(dom0)
    assert model.read(dom0, "/vif/state", tx_id) == b"4"
    model.write(dom0, "/elsewhere/key", b"1", tx_id)
    model.write(dom0, "/vif/state", b"4")  # the same value: the generation still moves
    assert errno(model.transaction_end, dom0, tx_id, True) == "EAGAIN"
    assert model.read(dom0, "/elsewhere/key") == b"0"


def test_a_read_only_transaction_conflicts_with_a_change_of_what_it_read(
        model: XenStoreModel, dom0: Connection) -> None:
    model.write(dom0, "/vif/state", b"4")
    tx_id = model.transaction_start(dom0)
    assert model.read(dom0, "/vif/state", tx_id) == b"4"
    model.write(dom0, "/vif/state", b"5")
    assert errno(model.transaction_end, dom0, tx_id, True) == "EAGAIN"


def test_a_read_node_removed_with_its_directory_conflicts(model: XenStoreModel,
                                                          dom0: Connection) -> None:
    """R14's guard: a step reads its own ``state``, the toolstack removes the device, the
    step's write of an existing node elsewhere must not commit."""
    model.write(dom0, "/backend/vif/1/0/state", b"4")
    model.write(dom0, "/elsewhere/key", b"0")
    tx_id = model.transaction_start(dom0)
    assert model.read(dom0, "/backend/vif/1/0/state", tx_id) == b"4"
    model.write(dom0, "/elsewhere/key", b"1", tx_id)
    model.rm(dom0, "/backend/vif/1")
    assert errno(model.transaction_end, dom0, tx_id, True) == "EAGAIN"
    assert model.read(dom0, "/elsewhere/key") == b"0"


def test_disjoint_transactions_both_commit(model: XenStoreModel, dom0: Connection) -> None:
    model.write(dom0, "/x/a", b"")
    model.write(dom0, "/x/b", b"")
    first, second = model.transaction_start(dom0), model.transaction_start(dom0)
    model.write(dom0, "/x/a", b"1", first)
    model.write(dom0, "/x/b", b"2", second)
    model.transaction_end(dom0, first, True)
    model.transaction_end(dom0, second, True)
    assert model.dump("/x") == {"/x": b"", "/x/a": b"1", "/x/b": b"2"}


def test_node_counts_follow_committed_transactions(model: XenStoreModel,
                                                   dom0: Connection) -> None:
    guest = guest_home(model, dom0, 3)
    before = model.usage(3).nodes
    tx_id = model.transaction_start(guest)
    model.write(guest, "a/b", b"1", tx_id)
    assert model.usage(3).nodes == before
    model.transaction_end(guest, tx_id, True)
    assert model.usage(3).nodes == before + 2
    model.rm(guest, "a")
    assert model.usage(3).nodes == before


# ---------------------------------------------------------------- quotas


def small_quota_model(**limits: int) -> tuple[XenStoreModel, Connection, Connection]:
    model = XenStoreModel(Quotas(**limits))
    dom0 = model.connect(0)
    return model, dom0, guest_home(model, dom0, 5)


def test_node_quota_is_enospc() -> None:
    model, _, guest = small_quota_model(nodes=4)
    model.write(guest, "a", b"")
    model.write(guest, "b/c", b"")
    assert errno(model.write, guest, "d", b"") == "ENOSPC"
    assert model.usage(5).nodes == 4


def test_node_size_quota_is_enospc_for_guests_only() -> None:
    model, dom0, guest = small_quota_model(node_size=100)
    assert errno(model.write, guest, "big", b"x" * 200) == "ENOSPC"
    model.write(guest, "small", b"x" * 10)
    model.write(dom0, "/local/domain/5/big", b"x" * 200)


def test_default_node_size_quota_is_2048_bytes() -> None:
    model, _, guest = small_quota_model()
    model.write(guest, "fits", b"x" * 1900)
    assert errno(model.write, guest, "too-big", b"x" * 2040) == "ENOSPC"


def test_watch_quota_is_e2big() -> None:
    model, _, guest = small_quota_model(watches=2)
    for index in range(3):  # C xenstored refuses only once the count exceeds the quota
        model.watch(guest, "a", f"t{index}")
    assert errno(model.watch, guest, "a", "t3") == "E2BIG"


def test_transaction_quota_is_enospc() -> None:
    model, _, guest = small_quota_model(transactions=1)
    model.transaction_start(guest)
    model.transaction_start(guest)
    assert errno(model.transaction_start, guest) == "ENOSPC"


def test_permission_count_quota_is_enospc() -> None:
    model, _, guest = small_quota_model()
    model.write(guest, "p", b"")
    perms = [Perm(Access.NONE, 5)] + [Perm(Access.READ, domid) for domid in range(1, 6)]
    assert errno(model.set_perms, guest, "p", perms) == "ENOSPC"
    model.set_perms(guest, "p", perms[:5])


def test_path_length_quota_is_einval_for_guests() -> None:
    model, dom0, guest = small_quota_model()
    long_rel = "/".join(["x" * 100] * 21)  # 2120 bytes below the home
    assert errno(model.write, guest, long_rel, b"") == "EINVAL"
    model.write(dom0, f"/local/domain/5/{long_rel}", b"")
    assert errno(model.write, dom0, "/" + "y" * 3072, b"") == "EINVAL"


def test_quotas_do_not_apply_to_dom0() -> None:
    model, dom0, _ = small_quota_model(nodes=1, watches=0, transactions=0, memory=1)
    before = model.usage(0).nodes
    tx_ids = []
    for index in range(5):
        model.write(dom0, f"/q/{index}", b"x" * 100)
        model.watch(dom0, "/q", f"t{index}")
        tx_ids.append(model.transaction_start(dom0))
    assert model.usage(0).nodes == before + 6  # /q and its five children
    assert sorted(token for _, token in dom0.watches) == [f"t{index}" for index in range(5)]
    assert sorted(dom0.transactions) == tx_ids == [1, 2, 3, 4, 5]
    assert model.usage(0).transactions == 5
    assert model.read(dom0, "/q/4") == b"x" * 100


# ---------------------------------------------------------------- node quota at commit


def test_node_quota_is_checked_again_at_commit() -> None:
    model, _, guest = small_quota_model(nodes=10)
    owned = model.usage(5).nodes  # its home
    first, second = model.transaction_start(guest), model.transaction_start(guest)
    for index in range(6):  # each transaction alone fits: 1 + 6 <= 10
        model.write(guest, f"a/{index}", b"", first)
        model.write(guest, f"b/{index}", b"", second)
    model.transaction_end(guest, first, True)
    assert model.usage(5).nodes == owned + 7
    with pytest.raises(XenStoreError) as excinfo:
        model.transaction_end(guest, second, True)
    assert excinfo.value.errno_name == "ENOSPC"
    assert model.node("/local/domain/5/b") is None  # nothing of it applied
    assert model.usage(5).nodes == owned + 7
    assert model.usage(5).transactions == 0


def test_eleven_concurrent_transactions_cannot_exceed_the_node_quota() -> None:
    """The issue's probe: each transaction fills the quota under its own parent."""
    model, _, guest = small_quota_model()
    for number in range(11):  # existing parents: the transactions do not conflict
        model.write(guest, f"p{number}", b"")
    tx_ids = [model.transaction_start(guest) for _ in range(11)]
    for number, tx_id in enumerate(tx_ids):
        for index in range(900):
            model.write(guest, f"p{number}/{index // 100}/{index % 100}", b"", tx_id)
    outcomes = []
    for tx_id in tx_ids:
        try:
            model.transaction_end(guest, tx_id, True)
            outcomes.append("OK")
        except XenStoreError as err:
            outcomes.append(err.errno_name)
    assert outcomes == ["OK"] + ["ENOSPC"] * 10
    assert model.usage(5).nodes <= model.quotas.nodes


def test_commit_quota_comes_before_the_conflict_check() -> None:
    """As C's do_transaction_end: ENOSPC, not EAGAIN, when both apply."""
    model, _dom0, guest = small_quota_model(nodes=3)
    tx_id = model.transaction_start(guest)
    model.write(guest, "x/y", b"", tx_id)
    model.write(guest, "other", b"")  # the guest owns 3 now; the home changed: a conflict too
    with pytest.raises(XenStoreError) as excinfo:
        model.transaction_end(guest, tx_id, True)
    assert excinfo.value.errno_name == "ENOSPC"


def test_dom0_commits_are_not_held_to_the_node_quota() -> None:
    model, dom0, _ = small_quota_model(nodes=1)
    tx_id = model.transaction_start(dom0)
    model.write(dom0, "/local/domain/5/a/b/c", b"", tx_id)
    model.set_perms(dom0, "/local/domain/5/a", [Perm(Access.NONE, 5)], tx_id)
    model.transaction_end(dom0, tx_id, True)
    assert model.node("/local/domain/5/a/b/c") is not None


# ---------------------------------------------------------------- memory quota


def test_memory_counts_what_a_domain_owns_watches_and_holds_open() -> None:
    model, _, guest = small_quota_model()
    idle = model.memory(5)
    model.write(guest, "data", b"x" * 1000)
    path = "/local/domain/5/data"
    assert model.memory(5) == idle + len(path) + 16 + 8 + 1000 + len("data") + 1
    model.watch(guest, "data", "tok")
    assert model.memory(5) == idle + len(path) + 16 + 8 + 1000 + len("data") + 1 + len(path) + 3
    tx_id = model.transaction_start(guest)
    model.read(guest, "data", tx_id)
    assert model.memory(5) > idle + 2 * 1000
    model.transaction_end(guest, tx_id, False)
    model.unwatch(guest, "data", "tok")
    model.rm(guest, "data")
    assert model.memory(5) == idle
    assert model.usage(5).memory == idle


def test_memory_quota_is_enomem_for_guests() -> None:
    model, dom0, guest = small_quota_model(memory=20000, node_size=4096)
    written = 0
    with pytest.raises(XenStoreError) as excinfo:
        for index in range(100):
            model.write(guest, f"n{index}", b"x" * 1500)
            written += 1
    assert excinfo.value.errno_name == "ENOMEM"
    assert 5 <= written < 14
    assert model.memory(5) < 20000
    model.write(dom0, "/local/domain/5/by-dom0", b"x" * 1500)  # dom0 is not refused


def test_memory_quota_bounds_open_transactions() -> None:
    model, _, guest = small_quota_model(memory=50000, node_size=4096)
    tx_id = model.transaction_start(guest)
    with pytest.raises(XenStoreError) as excinfo:
        for index in range(100):
            model.write(guest, f"t{index}", b"x" * 1500, tx_id)
    assert excinfo.value.errno_name == "ENOMEM"
    model.transaction_end(guest, tx_id, False)
    assert model.usage(5).memory < 1000  # what the transaction held is released


def test_charged_output_counts_against_the_memory_quota() -> None:
    model, _, guest = small_quota_model(memory=10000)
    model.charge(5, 9000)
    assert not model.memory_exceeded(5, 0)
    assert model.memory_exceeded(5, 2000)
    assert errno(model.write, guest, "big", b"x" * 1500) == "ENOMEM"
    model.charge(5, -9000)
    model.write(guest, "big", b"x" * 1500)
    assert not model.memory_exceeded(0, 10**9)  # dom0 has no memory quota


# ---------------------------------------------------------------- wire-level parsing


def test_directory_part_returns_generation_and_chunks(model: XenStoreModel,
                                                      dom0: Connection) -> None:
    names = [f"{index:03d}{'x' * 60}" for index in range(100)]
    for name in names:
        model.write(dom0, f"/big/{name}", b"")
    got: list[bytes] = []
    offset = 0
    while True:
        op, reply = handle_request(model, dom0, Op.DIRECTORY_PART, 0,
                                   b"/big\0" + str(offset).encode() + b"\0")
        assert op == Op.DIRECTORY_PART and len(reply) <= 4096
        generation, _, body = reply.partition(b"\0")
        assert generation.isdigit()
        if body.endswith(b"\0\0") or body == b"\0":
            got += body[:-1].split(b"\0")[:-1]
            break
        got += body.split(b"\0")[:-1]
        offset += len(body)
    assert [name.decode() for name in got] == names
    assert handle_request(model, dom0, Op.DIRECTORY, 0, b"/big\0") == (Op.ERROR, b"E2BIG\0")


@pytest.mark.parametrize(("op", "payload"), [
    (Op.READ, b"/a"), (Op.READ, b"/a\0extra\0"), (Op.WRITE, b"/no-nul"),
    (Op.WATCH, b"/a\0"), (Op.SET_PERMS, b"/a\0"), (Op.SET_PERMS, b"/\0x9\0"),
    (Op.INTRODUCE, b"1\0"), (Op.DIRECTORY_PART, b"/\0"),
])
def test_malformed_arguments_are_einval(model: XenStoreModel, dom0: Connection, op: int,
                                        payload: bytes) -> None:
    assert handle_request(model, dom0, op, 0, payload) == (Op.ERROR, b"EINVAL\0")


@pytest.mark.parametrize("op", [Op.WATCH_EVENT, Op.ERROR, Op.RESTRICT, Op.GET_FEATURE,
                                Op.SET_QUOTA, 27, 2**32 - 1])
def test_unknown_or_reply_only_types_are_enosys(model: XenStoreModel, dom0: Connection,
                                                op: int) -> None:
    assert handle_request(model, dom0, op, 0, b"") == (Op.ERROR, b"ENOSYS\0")


def test_write_value_may_contain_nuls(model: XenStoreModel, dom0: Connection) -> None:
    handle_request(model, dom0, Op.WRITE, 0, b"/v\0a\0b\0")
    assert model.read(dom0, "/v") == b"a\0b\0"


def test_control_check_answers_ok(model: XenStoreModel, dom0: Connection) -> None:
    assert handle_request(model, dom0, Op.CONTROL, 0, b"check\0") == (Op.CONTROL, b"OK\0")


def test_control_quota_lists_the_settings_as_c_does(model: XenStoreModel,
                                                    dom0: Connection) -> None:
    op, reply = handle_request(model, dom0, Op.CONTROL, 0, b"quota\0")
    lines = reply.rstrip(b"\0").decode().splitlines()
    assert op == Op.CONTROL and lines[0] == "Quota settings:"
    assert "nodes            :     1000 Nodes per domain" in lines
    assert "outstanding      :       20 Outstanding requests per domain" in lines
    assert any(line.startswith("memory           :  2621440 ") for line in lines)


def test_control_quota_of_a_domain_reports_its_usage(model: XenStoreModel,
                                                     dom0: Connection) -> None:
    guest = guest_home(model, dom0, 7)
    model.watch(guest, "x", "t")
    op, reply = handle_request(model, dom0, Op.CONTROL, 0, b"quota\x007\0")
    assert op == Op.CONTROL
    assert reply.decode().splitlines()[:3] == [
        "Domain 7:", "nodes           :        1", "watches         :        1"]
    assert handle_request(model, dom0, Op.CONTROL, 0, b"quota\x0099\0") == (
        Op.ERROR, b"ENOENT\0")

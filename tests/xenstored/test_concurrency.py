"""Several client processes racing transactions on the same nodes of the embedded xenstored.

Every worker increments /race/counter and records its step under /race/log/<new counter>, plus
a marker for the attempt, all in one transaction, retried on EAGAIN. Afterwards: every
successful commit is visible exactly once, no failed attempt left anything, and the final state
is what the commits produce applied one after another (a serial order).
"""

from __future__ import annotations

import json
import subprocess
import sys

from xenoffload.store.pyxs_store import PyxsStore
from xenoffload.xenstored.harness import EmbeddedXenstored

WORKERS = 4
ROUNDS = 25

WORKER = r"""
import json, sys
from xenoffload.store.pyxs_store import PyxsStore

path, worker, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = PyxsStore(path, timeout=20)
committed, failed = [], []
for step in range(rounds):
    attempt = 0
    while True:
        attempt += 1
        marker = f"{worker}-{step}-{attempt}"
        txn = store.transaction()
        count = int(txn.read("/race/counter"))
        txn.write("/race/counter", str(count + 1).encode())
        txn.write(f"/race/log/{count + 1}", marker.encode())
        txn.write(f"/race/attempt/{marker}", b"")
        if txn.commit():
            committed.append(marker)
            break
        failed.append(marker)
store.close()
print(json.dumps({"committed": committed, "failed": failed}))
"""


def test_racing_transactions_serialize(xenstored: EmbeddedXenstored) -> None:
    with PyxsStore(xenstored.socket_path, timeout=5) as store:
        store.write("/race/counter", b"0")
        store.mkdir("/race/log")
        store.mkdir("/race/attempt")
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, xenstored.socket_path,
                                 f"w{index}", str(ROUNDS)], stdout=subprocess.PIPE, text=True)
               for index in range(WORKERS)]
    results = []
    for worker in workers:
        stdout, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        results.append(json.loads(stdout))
    committed = {marker for result in results for marker in result["committed"]}
    failed = {marker for result in results for marker in result["failed"]}
    total = WORKERS * ROUNDS
    assert len(committed) == total

    tree = xenstored.model.dump("/race")
    assert tree["/race/counter"] == str(total).encode()
    log = {int(path.rsplit("/", 1)[1]): value.decode()
           for path, value in tree.items() if path.startswith("/race/log/")}
    assert sorted(log) == list(range(1, total + 1))  # one entry per commit, no gaps
    assert set(log.values()) == committed  # every successful commit visible, once
    attempts = {path.rsplit("/", 1)[1] for path in tree if path.startswith("/race/attempt/")}
    assert attempts == committed  # no EAGAIN left anything behind
    assert not attempts & failed

    # The commits, replayed one after another in log order, give the same tree.
    serial = {"/race": b"", "/race/counter": str(total).encode(), "/race/log": b"",
              "/race/attempt": b""}
    for number in sorted(log):
        serial[f"/race/log/{number}"] = log[number].encode()
        serial[f"/race/attempt/{log[number]}"] = b""
    assert tree == serial
    # each worker's own commits appear in its program order
    for result in results:
        positions = [next(n for n, m in log.items() if m == marker)
                     for marker in result["committed"]]
        assert positions == sorted(positions)

"""A XenStoreModel whose every public call holds one lock: for harnesses sharing a model between
threads (a server's loop, a test inspecting or changing the tree, in-memory sessions).

The model itself knows no threads (:mod:`xenoffload.xs.model`); :class:`LockedModel` is the
same model with each public method wrapped in ``with self.lock``. The lock is re-entrant, so a
caller can hold it around several calls that must not interleave with other threads (the
server does, around one request and the events it caused).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from xenoffload.xs.model import Quotas, XenStoreModel

__all__ = ["LockedModel"]


class LockedModel(XenStoreModel):
    """:class:`XenStoreModel` with every public method serialised on :attr:`lock`."""

    def __init__(self, quotas: Quotas | None = None) -> None:
        self.lock = threading.RLock()
        super().__init__(quotas)


def _serialised(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: LockedModel, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return call


for _name, _member in list(vars(XenStoreModel).items()):
    if not _name.startswith("_") and callable(_member):
        setattr(LockedModel, _name, _serialised(_member))

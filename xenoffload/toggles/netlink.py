"""Toggles over the kernel's ethtool generic-netlink family (what ``ethtool -k``/``-K`` use).

The messages are built and decoded by :mod:`xenoffload.toggles.ethtool_codec` (pure, fuzzed);
this module holds the conversation and the sockets (:mod:`xenoffload.toggles.nl_socket`, one
per network namespace). The family id is resolved once per socket (CTRL_CMD_GETFAMILY), the
feature names once per instance (STRSET_GET), then each read is one FEATURES_GET, and an apply
is that GET, plus, only when a feature must change, one FEATURES_SET naming just those features
(the kernel keeps every other bit as it is, so no other writer's change is lost) and a GET to
verify. Errors carry the kernel's extended-ACK text.
"""

from __future__ import annotations

import collections
import errno
import threading
from collections.abc import Mapping

from xenoffload.toggles import ethtool_codec
from xenoffload.toggles.base import (
    ApplyResult,
    DeviceGone,
    DeviceRef,
    FeatureState,
    ToggleError,
    TogglePermissionDenied,
    TogglesUnavailable,
)
from xenoffload.toggles.nl_codec import (
    Answer,
    ErrorAnswer,
    Message,
    NetlinkDecodeError,
    NetlinkTransport,
    Request,
)
from xenoffload.toggles.nl_socket import (
    NETLINK_GENERIC,
    NETNS_DIR,
    NamespaceSockets,
    Opener,
)
from xenoffload.toggles.plan import judge_after, plan_apply, side_effects

__all__ = ["NetlinkToggles", "NETNS_DIR", "translate_refusal"]


def translate_refusal(refusal: ErrorAnswer, device: DeviceRef) -> ToggleError:
    """Return the ToggleError for a kernel refusal concerning ``device``: ENODEV →
    DeviceGone, EPERM/EACCES → TogglePermissionDenied, EOPNOTSUPP → TogglesUnavailable,
    anything else → ToggleError with the kernel's text."""
    if refusal.errno == errno.ENODEV:
        return DeviceGone(f"no such device ({refusal.describe()})", device)
    if refusal.errno in (errno.EPERM, errno.EACCES):
        return TogglePermissionDenied(f"operation not permitted ({refusal.describe()})", device)
    if refusal.errno == errno.EOPNOTSUPP:
        return TogglesUnavailable(f"the device does not support this ({refusal.describe()})",
                                  device)
    return ToggleError(f"kernel error {refusal.describe()}", device)


class _EthtoolSocket:
    """A transport with the ethtool family's id resolved."""

    def __init__(self, transport: NetlinkTransport, sent: collections.Counter[str]) -> None:
        self.transport = transport
        self.sent = sent
        answer = self.request(ethtool_codec.family_request(), "CTRL_GETFAMILY")
        if isinstance(answer, ErrorAnswer):
            transport.close()
            if answer.errno == errno.ENOENT:
                raise TogglesUnavailable("the kernel has no ethtool netlink family")
            raise TogglesUnavailable(f"cannot resolve the ethtool netlink family: "
                                     f"{answer.describe()}")
        try:
            self.family_id = ethtool_codec.family_id(_single(answer, "CTRL_GETFAMILY"))
        except (NetlinkDecodeError, ToggleError) as error:
            transport.close()
            raise TogglesUnavailable(f"the kernel did not name the ethtool family: {error}"
                                     ) from error

    def close(self) -> None:
        self.transport.close()

    def request(self, request: Request, label: str) -> Answer | ErrorAnswer:
        self.sent[label] += 1
        return self.transport.exchange(request, label)


def _single(answer: Answer, label: str) -> Message:
    if len(answer.messages) != 1:
        raise ToggleError(f"expected one reply to {label}, got {len(answer.messages)}")
    return answer.messages[0]


class _Snapshot:
    __slots__ = ("features", "ifindex")

    def __init__(self, ifindex: int | None, features: Mapping[str, FeatureState]) -> None:
        self.ifindex = ifindex
        self.features = features


class _Reading(dict[str, FeatureState]):
    """What :meth:`NetlinkToggles.read` returns: the features, and the ifindex they were read
    from (an apply given this reading pins its FEATURES_SET to that device)."""

    ifindex: int | None = None


class NetlinkToggles:
    """:class:`~xenoffload.toggles.base.Toggles` over the ethtool netlink family.

    ``netns_dir``: where named namespaces live. ``opener``: opens the transport for a
    namespace file (default: a real generic-netlink socket; tests pass a replay of recorded
    kernel answers). ``sent`` counts the requests sent by kind (``FEATURES_GET``,
    ``FEATURES_SET``, ``STRSET_GET``, ``CTRL_GETFAMILY``). Thread-safe (one request at a
    time). ``close()`` (or use as a context manager) releases the cached sockets.
    """

    def __init__(self, netns_dir: str = NETNS_DIR, opener: Opener | None = None) -> None:
        self._lock = threading.Lock()
        self.sent: collections.Counter[str] = collections.Counter()
        self._sockets = NamespaceSockets(
            NETLINK_GENERIC, lambda transport: _EthtoolSocket(transport, self.sent), netns_dir,
            opener)
        self._feature_names: tuple[str, ...] | None = None

    def __enter__(self) -> NetlinkToggles:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every cached socket."""
        with self._lock:
            self._sockets.close()

    def read(self, device: DeviceRef) -> Mapping[str, FeatureState]:
        """Return every feature of ``device`` by kernel name (one FEATURES_GET).

        Raises DeviceGone, TogglesUnavailable, TogglePermissionDenied or ToggleError."""
        with self._lock:
            genl = self._sockets.get(device)
            snapshot = self._get(genl, device)
            reading = _Reading(snapshot.features)
            reading.ifindex = snapshot.ifindex
            return reading

    def apply(self, device: DeviceRef, wanted: Mapping[str, bool],
              before: Mapping[str, FeatureState] | None = None) -> ApplyResult:
        """Request ``wanted`` and return the verified outcome of each feature; see
        :meth:`xenoffload.toggles.base.Toggles.apply` (with ``before``: FEATURES_GET only to
        read back a change)."""
        with self._lock:
            genl = self._sockets.get(device)
            snapshot = (self._get(genl, device) if before is None else
                         _Snapshot(before.ifindex if isinstance(before, _Reading) else None,
                                   before))
            plan = plan_apply(snapshot.features, wanted)
            if not plan.to_send:
                return ApplyResult(device, plan.settled, set_issued=False)
            kernel_error = self._set_features(genl, device, snapshot.ifindex, plan.to_send)
            after = self._get(genl, device, ifindex=snapshot.ifindex)
            outcomes = judge_after(wanted, plan.to_send, after.features, kernel_error)
            return ApplyResult(
                device,
                outcomes,
                set_issued=True,
                side_effects=side_effects(snapshot.features, after.features, wanted),
            )

    # --- requests --------------------------------------------------------------------------

    def _get(self, genl: _EthtoolSocket, device: DeviceRef,
             ifindex: int | None = None) -> _Snapshot:
        answer = genl.request(
            ethtool_codec.features_get_request(genl.family_id, device.name, ifindex),
            "FEATURES_GET",
        )
        if isinstance(answer, ErrorAnswer):
            raise translate_refusal(answer, device)
        names = self._names(genl)
        try:
            reply = ethtool_codec.features_reply(_single(answer, "FEATURES_GET"), names)
        except NetlinkDecodeError as error:
            raise ToggleError(f"malformed FEATURES_GET reply: {error}", device) from error
        return _Snapshot(reply.ifindex, reply.features)

    def _set_features(
        self, genl: _EthtoolSocket, device: DeviceRef, ifindex: int | None,
        to_send: Mapping[str, bool]
    ) -> str | None:
        """Send one FEATURES_SET naming only ``to_send``; return the kernel's error text if it
        refused the request for a reason other than a vanished device or missing privilege."""
        answer = genl.request(
            ethtool_codec.features_set_request(genl.family_id, device.name, ifindex, to_send),
            "FEATURES_SET",
        )
        if isinstance(answer, ErrorAnswer):
            translated = translate_refusal(answer, device)
            if isinstance(translated, DeviceGone | TogglePermissionDenied):
                raise translated
            return answer.describe()
        return None

    def _names(self, genl: _EthtoolSocket) -> tuple[str, ...]:
        """Return the kernel's feature names by bit (fetched once: they are kernel-global)."""
        if self._feature_names is not None:
            return self._feature_names
        answer = genl.request(ethtool_codec.strset_request(genl.family_id), "STRSET_GET")
        if isinstance(answer, ErrorAnswer):
            raise ToggleError(f"cannot read the kernel's feature names: {answer.describe()}")
        try:
            self._feature_names = ethtool_codec.feature_names(_single(answer, "STRSET_GET"))
        except NetlinkDecodeError as error:
            raise ToggleError(f"malformed feature name table: {error}") from error
        return self._feature_names

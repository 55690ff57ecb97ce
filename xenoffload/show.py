"""``xenoffload show``: per vif, both ends' keys, states, the negotiated result, enforcement.

Reads each vif's two directories in one transaction (every vif's in a few round trips, opened
as every face opens a vif: :mod:`xenoffload.vifends`) and recomputes the result exactly as the
ends do (:func:`~xenoffload.negotiation.decide`), so what it prints is what both ends agree on.
Every ``--json`` output of the command line (``show``, ``backend-agent --once``,
``guest-agent --once``) is a list of the vif records :func:`vif_json` builds, described by the
JSON Schema shipped with the package (:func:`json_schema`, ``vif-report.schema.json``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import attrs

from xenoffload.endpoint import PeerLinkError
from xenoffload.negotiation import LinkResult, ResultValueError, decide, parse_result
from xenoffload.paths import VifPaths
from xenoffload.policy import node_text
from xenoffload.schema import (
    READ_KEYS,
    RESULT_KEY,
    STATUS_KEY,
    Advertisement,
    FamilyFlags,
    ParsedAdvertisement,
    Role,
    parse_advertisement,
)
from xenoffload.store.base import Store
from xenoffload.toggles.base import FeatureState
from xenoffload.vifends import AgentView, VifEnds, read_fields
from xenoffload.xenbus import XenbusState, parse_state

__all__ = ["VifReport", "EndReport", "KernelView", "AgentView", "collect", "render_table",
           "render_json", "list_vifs", "list_own_frontends", "vif_json",
           "json_schema", "ethtool_text", "enforced_status", "short_status", "SCHEMA_RESOURCE"]

#: The JSON Schema of every ``--json`` output, shipped in the package.
SCHEMA_RESOURCE = "vif-report.schema.json"


@attrs.frozen
class EndReport:
    """One end of a vif as its directory shows it: state, advertisement, published result and
    status. ``state`` is None when the node holds something that is not a state;
    ``result_problem`` says why a published result could not be read."""

    directory: str
    state: XenbusState | None
    advertised: ParsedAdvertisement
    published: LinkResult | None
    result_problem: str | None
    status: str | None


@attrs.frozen
class KernelView:
    """One kernel device's checksum features as ``ethtool -k`` shows them, or why it could not
    be read (``error``; ``features`` is then empty)."""

    end: Role
    device: str
    features: Mapping[str, FeatureState] = attrs.field(factory=dict)
    error: str | None = None


@attrs.frozen
class VifReport:
    """One vif as both directories show it now."""

    guest_domid: int
    devid: int
    backend_state: XenbusState | None
    frontend_state: XenbusState | None
    backend: ParsedAdvertisement
    frontend: ParsedAdvertisement
    result: LinkResult
    backend_status: str | None
    frontend_status: str | None
    bridge: str | None
    backend_domid: int = 0
    backend_end: EndReport | None = None
    frontend_end: EndReport | None = None
    domain: str | None = None
    mac: str | None = None
    vifname: str | None = None
    kernel: KernelView | None = None
    agent: AgentView | None = None

    @property
    def paths(self) -> VifPaths:
        return VifPaths(self.backend_domid, self.guest_domid, self.devid)

    @property
    def connected(self) -> bool:
        return self.backend_state is XenbusState.CONNECTED and \
            self.frontend_state is XenbusState.CONNECTED

    @property
    def agreed(self) -> bool:
        """True when both ends are Connected and both published the result :func:`decide`
        gives for the two advertisements in the store."""
        return self.connected and all(
            end is not None and end.published == self.result
            for end in (self.backend_end, self.frontend_end))

    def as_json(self) -> dict[str, Any]:
        return vif_json(self)


# ----------------------------------------------------------------------------- finding vifs


def list_vifs(store: Store, backend_domid: int, guest: int | None = None) -> list[VifPaths]:
    """Return every vif with a backend in ``backend_domid`` (optionally of one guest)."""
    found = VifEnds(Role.BACKEND, backend_domid).list(store, None if guest is None else [guest])
    return [VifPaths(backend_domid, *key) for key in sorted(found)]


def list_own_frontends(store: Store, guest_domid: int) -> list[VifPaths]:
    """Return the vifs of guest ``guest_domid`` as the guest sees them: each
    ``device/vif/<devid>`` whose ``backend`` key names a canonical backend directory of it
    (what the guest agent follows; anything else is left out)."""
    ends = VifEnds(Role.FRONTEND, guest_domid)
    keys = sorted(ends.list(store))
    found: list[VifPaths] = []
    for key, fields in zip(keys, read_fields(store, [ends.paths(key) for key in keys]),
                           strict=True):
        with contextlib.suppress(PeerLinkError):
            found.append(ends.build(store, key, fields).paths)
    return found


# ----------------------------------------------------------------------------- reading


def _text(raw: bytes | None) -> str | None:
    return raw.decode("ascii", "replace")[:200] if raw is not None else None


_END_KEYS = ("state", *READ_KEYS, RESULT_KEY, STATUS_KEY)


def _identity_paths(paths: VifPaths) -> dict[str, str]:
    return VifEnds(Role.BACKEND, paths.backend_domid).paths((paths.guest_domid, paths.devid))


def _wanted(paths: VifPaths) -> dict[str, str]:
    """What ``show`` reads of one vif, path -> path: both ends' keys, the vif's identity."""
    every = [f"{directory}/{key}" for directory in (paths.backend_dir, paths.frontend_dir)
             for key in _END_KEYS]
    every += [f"{paths.frontend_dir}/mac", *_identity_paths(paths).values()]
    return {path: path for path in every}


def _end(values: Mapping[str, bytes | None], directory: str) -> EndReport:
    keys = {k: values[f"{directory}/{k}"] for k in READ_KEYS}
    raw_result = values[f"{directory}/{RESULT_KEY}"]
    published: LinkResult | None = None
    problem: str | None = None
    if raw_result is not None:
        try:
            published = parse_result(raw_result)
        except ResultValueError as error:
            problem = str(error)
    return EndReport(directory, parse_state(values[f"{directory}/state"]),
                     parse_advertisement(directory, keys), published, problem,
                     _text(values[f"{directory}/{STATUS_KEY}"]))


def _report(paths: VifPaths, values: Mapping[str, bytes | None]) -> VifReport:
    key = (paths.guest_domid, paths.devid)
    identity = VifEnds(Role.BACKEND, paths.backend_domid).identity(key, {
        field: values[path] for field, path in _identity_paths(paths).items()})
    back = _end(values, paths.backend_dir)
    front = _end(values, paths.frontend_dir)
    backend_mac = values[f"{paths.backend_dir}/mac"]
    return VifReport(
        paths.guest_domid, paths.devid, back.state, front.state,
        back.advertised, front.advertised,
        decide(back.advertised.advertisement, front.advertised.advertisement),
        back.status, front.status, identity.bridge,
        backend_domid=paths.backend_domid, backend_end=back, frontend_end=front,
        domain=identity.domain,
        mac=identity.mac if backend_mac else node_text(values[f"{paths.frontend_dir}/mac"]),
        vifname=identity.vifname,
    )


def collect(store: Store, vifs: Iterable[VifPaths]) -> list[VifReport]:
    """Return a report for each vif: each read in a transaction of its own, all in a few
    round trips (:func:`~xenoffload.vifends.read_fields`)."""
    vifs = list(vifs)
    values = read_fields(store, [_wanted(paths) for paths in vifs], atomic=True)
    return [_report(paths, found) for paths, found in zip(vifs, values, strict=True)]


# ----------------------------------------------------------------------------- text


def _flags(flags: FamilyFlags) -> str:
    return {(True, True): "4+6", (True, False): "4", (False, True): "6",
            (False, False): "-"}[(flags.ipv4, flags.ipv6)]


def _adv(parsed: ParsedAdvertisement) -> str:
    advertisement: Advertisement = parsed.advertisement
    mark = {"xenoffload": "", "legacy": " (legacy)", "safe": " (REFUSED)"}[parsed.source]
    return f"tx {_flags(advertisement.tx)} rx {_flags(advertisement.rx)}{mark}"


def ethtool_text(state: FeatureState) -> str:
    """Return a feature's value as ``ethtool -k`` prints it: ``on``/``off``, then ``[fixed]``
    for a feature the driver does not let change, or ``[requested on|off]`` when what was asked
    for is not what is in effect."""
    shown = "on" if state.active else "off"
    if state.fixed:
        return f"{shown} [fixed]"
    if state.requested != state.active:
        return f"{shown} [requested {'on' if state.requested else 'off'}]"
    return shown


def enforced_status(status: str | None) -> bool:
    """Return True when an end's ``xenoffload-csum-status`` says its device does what was
    negotiated (``ok``, possibly with what tc enforces); False for ``unenforced``,
    ``no-device``, ``error`` or none published."""
    return status is not None and (status == "ok" or status.startswith("ok "))


def short_status(status: str | None) -> str:
    """The table's form of a status: its first word (``ok``, ``unenforced``, ``no-device``,
    ``error``), ``ok+tc`` when tc enforces part of it, ``-`` when none; the full text is in
    ``--json`` and ``show -v``."""
    if status is None:
        return "-"
    if status.startswith("ok (enforced-by-tc"):
        return "ok+tc"
    return status.split(":", 1)[0].split(" ", 1)[0] or "?"


def _cell(text: str | None, limit: int = 24) -> str:
    """A table cell of what the toolstack wrote: ``?`` when absent, cut when long."""
    if not text:
        return "?"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def render_table(reports: list[VifReport], full_status: bool = False) -> str:
    """Return a fixed-width table: one line per vif (its domain's name and MAC, as xl names
    a vif). In the result columns ``4+6`` means blank checksums may cross for both families,
    ``-`` that every checksum is computed; in parentheses while the ends are not both
    Connected (what their advertisements would decide: nothing is negotiated yet). Statuses
    are abbreviated (:func:`short_status`) unless ``full_status`` (a line after the table
    says so when one is).
    A vif's kernel device, when read, follows on lines of its own, one feature a line as
    ethtool prints it."""
    header = ("VIF", "DOMAIN", "MAC", "BRIDGE", "STATE B/F", "BACKEND ADVERTISES",
              "FRONTEND ADVERTISES", "TO-GUEST", "FROM-GUEST", "BACKEND STATUS",
              "FRONTEND STATUS")
    rows = [header]
    status = (lambda text: text or "-") if full_status else short_status
    for r in reports:
        result = (_flags(r.result.to_guest), _flags(r.result.from_guest))
        if not r.connected:
            result = (f"({result[0]})", f"({result[1]})")
        rows.append((
            f"{r.guest_domid}/{r.devid}", _cell(r.domain), _cell(r.mac), _cell(r.bridge),
            f"{r.backend_state or '?'}/{r.frontend_state or '?'}",
            _adv(r.backend), _adv(r.frontend), *result,
            status(r.backend_status), status(r.frontend_status),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in rows]
    if not all(r.connected for r in reports):
        lines.append("(results in parentheses: the ends are not both Connected; what their "
                     "advertisements would decide)")
    if any(text is not None and status(text) != text
           for r in reports for text in (r.backend_status, r.frontend_status)):
        lines.append("(statuses abbreviated: -v or --json for the full text)")
    for r in reports:
        if r.kernel is None:
            continue
        where = f"  {r.guest_domid}/{r.devid} {r.kernel.end.value} {r.kernel.device}"
        if r.kernel.error is not None:
            lines.append(f"{where}: cannot read: {r.kernel.error}")
            continue
        lines.append(f"{where}:")
        lines.extend(f"      {name}: {ethtool_text(state)}"
                     for name, state in sorted(r.kernel.features.items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- JSON


def _flags_json(flags: FamilyFlags) -> dict[str, bool]:
    return {"ipv4": flags.ipv4, "ipv6": flags.ipv6}


def _result_json(result: LinkResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {"to_guest": _flags_json(result.to_guest),
            "from_guest": _flags_json(result.from_guest)}


def _state_json(state: XenbusState | None) -> dict[str, Any] | None:
    return None if state is None else {"value": int(state), "name": str(state)}


def _end_json(end: EndReport) -> dict[str, Any]:
    advertised = end.advertised
    return {
        "directory": end.directory,
        "state": _state_json(end.state),
        "advertised": {
            "source": advertised.source,
            "tx": _flags_json(advertised.advertisement.tx),
            "rx": _flags_json(advertised.advertisement.rx),
            "problems": [{"path": p.path, "value": p.value[:64].decode("ascii", "replace"),
                          "reason": p.reason} for p in advertised.problems],
        },
        "result": _result_json(end.published),
        "result_problem": end.result_problem,
        "status": end.status,
    }


def _kernel_json(kernel: KernelView) -> dict[str, Any]:
    return {
        "end": kernel.end.value,
        "device": kernel.device,
        "features": {name: {"active": state.active, "requested": state.requested,
                            "fixed": state.fixed, "shown": ethtool_text(state)}
                     for name, state in sorted(kernel.features.items())},
        "error": kernel.error,
    }


def _agent_json(agent: AgentView) -> dict[str, Any]:
    return {
        "role": agent.role.value,
        "own_state": _state_json(agent.own_state),
        "peer_state": _state_json(agent.peer_state),
        "result": _result_json(agent.result),
        "enforcement": None if agent.status is None else {
            "status": agent.status, "unsafe": agent.unsafe, "retry": agent.retry,
            "details": list(agent.details)},
        "refused": agent.refused,
    }


def vif_json(report: VifReport) -> dict[str, Any]:
    """Return the JSON record of one vif (the ``vif`` definition of the shipped schema)."""
    assert report.backend_end is not None and report.frontend_end is not None
    record: dict[str, Any] = {
        "domid": report.guest_domid,
        "devid": report.devid,
        "backend_domid": report.backend_domid,
        "domain": report.domain,
        "bridge": report.bridge,
        "mac": report.mac,
        "vifname": report.vifname,
        "connected": report.connected,
        "agreed": report.agreed,
        "negotiated": _result_json(report.result),
        "backend": _end_json(report.backend_end),
        "frontend": _end_json(report.frontend_end),
    }
    if report.kernel is not None:
        record["kernel"] = _kernel_json(report.kernel)
    if report.agent is not None:
        record["agent"] = _agent_json(report.agent)
    return record


def render_json(reports: list[VifReport]) -> str:
    """Return the JSON list of the vif records of ``reports``."""
    return json.dumps([vif_json(report) for report in reports], indent=2, sort_keys=True)


def json_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) every ``--json`` output follows."""
    text = resources.files("xenoffload").joinpath(SCHEMA_RESOURCE).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema

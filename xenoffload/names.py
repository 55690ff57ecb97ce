"""xl's ways of naming a domain and a vif, resolved against XenStore.

``xl`` accepts a domain as a domid or a name (``/local/domain/<domid>/name``) everywhere (and
xenoffload a VM's UUID too), and a
network device as a devid or a MAC (``xl network-detach DOMAIN DEVID|MAC``). ``xenoffload show``
and ``set`` take the same: ``DOMAIN[/DEVICE]``. :func:`parse_vif_spec` checks the syntax (no
I/O); :func:`resolve_domain` and :func:`resolve_vif` look the names up.
"""

from __future__ import annotations

import re

import attrs

from xenoffload.paths import backend_vif_root, domain_path, domain_vm_path
from xenoffload.policy import node_text, parse_uuid, vm_uuid
from xenoffload.store.base import Store, XenStoreError, read_own_domid

__all__ = ["DOMID_LIMIT", "VifSpec", "NotFound", "parse_domid", "parse_vif_spec",
           "parse_bridge_pattern", "resolve_domain", "resolve_vif"]

#: Domids at or above this are Xen's reserved ids (DOMID_FIRST_RESERVED, 0x7FF0).
DOMID_LIMIT = 0x7FF0
#: Largest devid a vif can have (libxl allocates small integers; the kernel's handle is 16-bit).
DEVID_LIMIT = 0xFFFF

_MAC = re.compile(r"\A[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}\Z")
#: A domain name as libxl accepts it: not all digits, no '/', printable, at most 256 bytes.
_NAME = re.compile(r"\A[^/\s]{1,256}\Z")


class NotFound(LookupError):
    """A named domain, vif or override does not exist; the message says which."""


def parse_domid(text: str) -> int:
    """Return the domid ``text`` states (decimal, 0 .. 32751). Raises ValueError."""
    if not text.isascii() or not text.isdigit() or len(text) > 5 or int(text) >= DOMID_LIMIT:
        raise ValueError(f"not a domid (0..{DOMID_LIMIT - 1}): {text!r}")
    return int(text)


def _parse_devid(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or int(text) > DEVID_LIMIT:
        raise ValueError(f"not a devid (0..{DEVID_LIMIT}): {text!r}")
    return int(text)


@attrs.frozen
class VifSpec:
    """What the user typed: a domain (domid or name) and optionally a device (devid or MAC)."""

    domid: int | None = None
    name: str | None = None
    devid: int | None = None
    mac: str | None = None

    @property
    def has_device(self) -> bool:
        return self.devid is not None or self.mac is not None

    def __str__(self) -> str:
        domain = str(self.domid) if self.domid is not None else str(self.name)
        device = str(self.devid) if self.devid is not None else self.mac
        return f"{domain}/{device}" if device is not None else domain


def parse_vif_spec(text: str, need_device: bool) -> VifSpec:
    """Return the spec ``DOMAIN[/DEVICE]`` states: DOMAIN a domid or a domain name, DEVICE a
    devid or a MAC (``00:16:3e:..``). Raises ValueError for anything else, or when
    ``need_device`` and no device is given."""
    domain, slash, device = text.partition("/")
    if domain.isascii() and domain.isdigit():
        spec = VifSpec(domid=parse_domid(domain))
    elif _NAME.match(domain) and domain.isprintable():
        spec = VifSpec(name=domain)
    else:
        raise ValueError(f"not a domain (domid or name): {domain!r}")
    if not slash:
        if need_device:
            raise ValueError(f"expected DOMAIN/DEVID or DOMAIN/MAC, got {text!r}")
        return spec
    if _MAC.match(device):
        return attrs.evolve(spec, mac=device.lower())
    try:
        return attrs.evolve(spec, devid=_parse_devid(device))
    except ValueError:
        raise ValueError(f"not a devid or MAC: {device!r} (in {text!r})") from None


def parse_bridge_pattern(text: str) -> str:
    """Return ``text`` if it names bridges: a Linux device name (1-15 bytes, no ``/``, ``:``
    or white space; ``xenbr0.100`` is one) or a shell glob over such names (``xenpriv*``,
    at most 64 characters). Raises ValueError."""
    glob = any(char in text for char in "*?[")
    limit = 64 if glob else 15
    if not text or len(text) > limit or not text.isascii() or not text.isprintable() or \
            any(char in text for char in "/: \t") or text in (".", ".."):
        raise ValueError(f"not a bridge name or glob: {text!r} (1-{limit} printable ASCII "
                         "characters, no '/', ':' or blanks)")
    return text


def resolve_domain(store: Store, spec: VifSpec) -> int:
    """Return the domid ``spec`` names. A name is looked up as xl does, in
    ``/local/domain/*/name``; a name no domain has that is a UUID, in ``/local/domain/*/vm``.
    Raises NotFound (no such name; or, in a guest that cannot list the domains, a name that
    is not its own)."""
    if spec.domid is not None:
        return spec.domid
    assert spec.name is not None
    try:
        domids = [d for d in store.directory("/local/domain") if d.isdigit()]
    except XenStoreError:
        domids = []
    if not domids:
        # A guest may not list /local/domain: it can still name itself.
        own = read_own_domid(store)
        domids = [str(own)] if own is not None else []
    found = [int(d) for d in domids
             if _read_text(store, f"{domain_path(int(d))}/name") == spec.name]
    uuid = parse_uuid(spec.name)
    if not found and uuid is not None:
        found = [int(d) for d in domids
                 if vm_uuid(store.try_read(domain_vm_path(int(d)))) == uuid]
    if not found:
        raise NotFound(f"no domain named {spec.name!r}")
    if len(found) > 1:
        raise NotFound(f"domain name {spec.name!r} is ambiguous (domids "
                       f"{', '.join(map(str, sorted(found)))})")
    return found[0]


def resolve_vif(store: Store, spec: VifSpec, domid: int, backend_domid: int) -> int:
    """Return the devid of the vif ``spec`` names in domain ``domid`` whose backend is in
    ``backend_domid`` (or, seen from the guest itself, in its own ``device/vif``). A MAC is
    matched case-insensitively against each vif's ``mac``. Raises NotFound."""
    candidates = _devids(store, f"{backend_vif_root(backend_domid)}/{domid}")
    own_frontends = f"{domain_path(domid)}/device/vif"
    via_frontend = not candidates
    if via_frontend:
        candidates = _devids(store, own_frontends)
    if spec.devid is not None:
        if spec.devid in candidates:
            return spec.devid
        raise NotFound(f"no vif {domid}/{spec.devid} (backend domain {backend_domid})")
    for devid in candidates:
        directory = f"{own_frontends}/{devid}" if via_frontend else \
            f"{backend_vif_root(backend_domid)}/{domid}/{devid}"
        mac = _read_text(store, f"{directory}/mac")
        if mac is not None and mac.lower() == spec.mac:
            return devid
    raise NotFound(f"no vif of domain {domid} with MAC {spec.mac}")


def _devids(store: Store, directory: str) -> list[int]:
    try:
        return sorted(int(d) for d in store.directory(directory) if d.isdigit())
    except XenStoreError:
        return []


def _read_text(store: Store, path: str) -> str | None:
    try:
        return node_text(store.try_read(path))
    except XenStoreError:
        return None

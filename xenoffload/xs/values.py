"""XenStore's value types: permissions and watch events, as both ends of the wire speak them.

Paths are ``str``; node values are ``bytes`` (a hostile guest may write any bytes, so nothing
here decodes values).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

import attrs

__all__ = ["Access", "Perm", "WatchEvent", "format_perms", "parse_perm"]


class Access(enum.Enum):
    """One XenStore permission letter."""

    NONE = "n"
    READ = "r"
    WRITE = "w"
    BOTH = "b"


_PERM_RE = re.compile(r"\A([nrwb])(\d{1,10})\Z")


@attrs.frozen
class Perm:
    """One entry of a node's permission list, e.g. ``r1``.

    The first entry of a list names the node's owner and the access every domain not listed
    later gets; later entries grant per-domain access.
    """

    access: Access
    domid: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(0),
                                                             attrs.validators.lt(2**32)))

    def __str__(self) -> str:
        return f"{self.access.value}{self.domid}"


def parse_perm(text: str) -> Perm:
    """Return the :class:`Perm` written as ``text`` (``n0``, ``r1``, ...).

    Raises ValueError for anything else.
    """
    match = _PERM_RE.match(text)
    if match is None:
        raise ValueError(f"not a XenStore permission: {text!r}")
    return Perm(Access(match.group(1)), int(match.group(2)))


def format_perms(perms: Sequence[Perm]) -> str:
    """Return the list as xenstore-ls prints it, e.g. ``n0 r1``."""
    return " ".join(str(perm) for perm in perms)


@attrs.frozen
class WatchEvent:
    """A watch fired: ``path`` changed (or the watch was just registered), ``token`` is the
    watcher's. Carries no value: a client must re-read."""

    path: str
    token: str

"""XenServer / XCP-ng per-VIF ethtool settings as a policy source. Pure.

An administrator of a xapi host sets a VIF's checksum offload with ``xe vif-param-set
uuid=... other-config:ethtool-tx=off``; xapi copies the VIF's ``other-config`` into
``/xapi/<domid>/private/vif/<devid>/other-config/`` (:func:`xenoffload.paths.xapi_vif_config_root`)
and its vif script applies ``ethtool-tx``/``ethtool-rx`` to the dom0 vif with ``ethtool -K``:
one end, never negotiated. xenoffload keeps the setting's meaning and makes it reach the guest:
``ethtool-tx`` is the dom0 vif's transmit, the **to-guest** direction; ``ethtool-rx`` its
receive, **from-guest**; ``true``/``on`` allow blank checksums (both IP families), ``false``/
``off`` compute them. The rules it makes sit between the policy file's and ``xenoffload set``'s
overrides (docs/configuration.md, "Precedence").
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from xenoffload.policy import DirectionSetting, Match, PolicyError, Rule

__all__ = ["XAPI_KEYS", "XapiSetting", "parse_xapi_config", "rules_from_xapi"]

#: The other-config keys read, and the direction each one sets.
XAPI_KEYS: Mapping[str, str] = {"ethtool-tx": "to_guest", "ethtool-rx": "from_guest"}
_VALUES = {b"true": True, b"on": True, b"false": False, b"off": False}


@attrs.frozen
class XapiSetting:
    """What a VIF's other-config sets: per direction True/False, or None = not set."""

    to_guest: bool | None = None
    from_guest: bool | None = None


def parse_xapi_config(where: str, values: Mapping[str, bytes | None]) -> XapiSetting:
    """Return the setting of one VIF's other-config ``values`` (key -> raw value, None =
    absent). Raises PolicyError naming ``where`` and the key for a value that is not one of
    ``true``, ``on``, ``false``, ``off`` (xapi's vif script refuses those too)."""
    found: dict[str, bool] = {}
    for key, direction in XAPI_KEYS.items():
        raw = values.get(key)
        if raw is None:
            continue
        if raw not in _VALUES:
            raise PolicyError(f"{where}/{key}: not true, on, false or off: {raw[:40]!r}")
        found[direction] = _VALUES[raw]
    return XapiSetting(**found)


def rules_from_xapi(settings: Mapping[tuple[int, int], XapiSetting]) -> list[Rule]:
    """Return one policy rule per VIF (key: guest domid, devid) whose other-config sets
    anything; a direction set applies to both IP families."""
    rules = []
    for (domid, devid), setting in sorted(settings.items()):
        if setting == XapiSetting():
            continue
        rules.append(Rule(Match(domid=domid, devid=devid),
                          _direction(setting.to_guest), _direction(setting.from_guest),
                          name=f"xapi other-config of vif {domid}/{devid}"))
    return rules


def _direction(value: bool | None) -> DirectionSetting:
    return DirectionSetting(value, value)

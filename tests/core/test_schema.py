"""Feature schema: value grammar, own keys, legacy interpretation, rendering."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenoffload.schema import (
    LEGACY_IPV6_CSUM_OFFLOAD,
    LEGACY_NO_CSUM_OFFLOAD,
    SAFE,
    Advertisement,
    FamilyFlags,
    FeatureValueError,
    Role,
    parse_advertisement,
    parse_flag,
    render_advertisement,
)

flags = st.builds(FamilyFlags, st.booleans(), st.booleans())
adverts = st.builds(Advertisement, flags, flags)


def test_flag_accepts_exactly_zero_and_one() -> None:
    assert parse_flag("/p", b"1") is True
    assert parse_flag("/p", b"0") is False


@pytest.mark.parametrize("raw", [b"", b"2", b"yes", b"1x", b" 1", b"01", b"\xff\xfe",
                                 b"x" * 4096, b"1\n", b"-1"])
def test_malformed_flag_is_a_typed_error_with_path_and_value(raw: bytes) -> None:
    with pytest.raises(FeatureValueError) as caught:
        parse_flag("/local/domain/1/device/vif/0/feature-csum-rx", raw)
    assert caught.value.path.endswith("feature-csum-rx")
    assert caught.value.value == raw


@given(role=st.sampled_from(Role), advert=adverts)
def test_rendered_keys_parse_back_to_the_same_advertisement(
    role: Role, advert: Advertisement
) -> None:
    keys = render_advertisement(role, advert)
    parsed = parse_advertisement("/d", dict(keys))
    assert parsed.advertisement == advert
    assert parsed.source == "xenoffload"
    assert not parsed.problems


@given(advert=adverts)
def test_frontend_legacy_keys_are_consistent_with_own_keys(advert: Advertisement) -> None:
    keys = render_advertisement(Role.FRONTEND, advert)
    assert keys[LEGACY_NO_CSUM_OFFLOAD] == (b"0" if advert.rx.ipv4 else b"1")
    assert keys[LEGACY_IPV6_CSUM_OFFLOAD] == (b"1" if advert.rx.ipv6 else b"0")


def test_backend_never_writes_feature_no_csum_offload() -> None:
    assert LEGACY_NO_CSUM_OFFLOAD not in render_advertisement(Role.BACKEND, SAFE)


def test_stock_netfront_keys_read_as_ipv4_and_ipv6_offload_accepted() -> None:
    # What a real Linux netfront wrote (tests/conformance/fixtures/real-xen-vif-negotiation.trace):
    # no feature-no-csum-offload, ipv6=1.
    parsed = parse_advertisement("/d", {LEGACY_IPV6_CSUM_OFFLOAD: b"1"})
    assert parsed.source == "legacy"
    assert parsed.advertisement.rx == FamilyFlags(True, True)


def test_legacy_frontend_that_needs_checksums_accepts_no_blank_ipv4() -> None:
    parsed = parse_advertisement("/d", {LEGACY_NO_CSUM_OFFLOAD: b"1"})
    assert parsed.advertisement.rx == FamilyFlags(False, False)


def test_legacy_key_in_backend_dir_is_read_as_the_backends() -> None:
    # A Solaris-derived netback writes feature-no-csum-offload into the backend directory.
    parsed = parse_advertisement("/d", {LEGACY_NO_CSUM_OFFLOAD: b"1"})
    assert parsed.advertisement.rx.ipv4 is False


def test_nothing_written_reads_as_stock_driver_defaults() -> None:
    parsed = parse_advertisement("/d", {})
    assert parsed.advertisement.rx == FamilyFlags(ipv4=True, ipv6=False)


@given(junk=st.binary(max_size=4096).filter(lambda b: b not in (b"0", b"1")),
       key=st.sampled_from(["feature-csum-tx", "feature-csum-rx", "feature-csum-rx-ipv6",
                            LEGACY_NO_CSUM_OFFLOAD, LEGACY_IPV6_CSUM_OFFLOAD]),
       role=st.sampled_from(Role))
def test_any_malformed_value_gives_the_safe_advertisement(
    junk: bytes, key: str, role: Role
) -> None:
    keys = dict(render_advertisement(role, Advertisement(FamilyFlags(True, True),
                                                         FamilyFlags(True, True))))
    keys[key] = junk
    parsed = parse_advertisement("/d", keys)
    assert parsed.advertisement == SAFE
    assert parsed.source == "safe"
    assert parsed.problems and parsed.problems[0].value == junk


def test_own_keys_partially_missing_read_as_not_offered() -> None:
    parsed = parse_advertisement("/d", {"feature-csum-rx": b"1"})
    assert parsed.advertisement == Advertisement(FamilyFlags(False, False),
                                                 FamilyFlags(True, False))

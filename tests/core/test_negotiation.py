"""The decision: never enables what an end or the policy forbids; the same for both ends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenoffload.negotiation import (
    LinkPolicy,
    LinkResult,
    ResultValueError,
    advertise,
    decide,
    explain,
    format_result,
    parse_result,
)
from xenoffload.schema import (
    Advertisement,
    Family,
    FamilyFlags,
    Role,
    parse_advertisement,
    render_advertisement,
)

flags = st.builds(FamilyFlags, st.booleans(), st.booleans())
adverts = st.builds(Advertisement, flags, flags)
policies = st.builds(LinkPolicy, flags, flags)


@given(b_cap=adverts, f_cap=adverts, b_pol=policies, f_pol=policies)
def test_result_never_allows_what_an_end_or_a_policy_forbids(
    b_cap: Advertisement, f_cap: Advertisement, b_pol: LinkPolicy, f_pol: LinkPolicy
) -> None:
    backend = advertise(Role.BACKEND, b_cap, b_pol)
    frontend = advertise(Role.FRONTEND, f_cap, f_pol)
    result = decide(backend, frontend)
    for family in Family:
        if result.to_guest[family]:
            assert b_cap.tx[family] and f_cap.rx[family]
            assert b_pol.to_guest[family] and f_pol.to_guest[family]
        if result.from_guest[family]:
            assert f_cap.tx[family] and b_cap.rx[family]
            assert b_pol.from_guest[family] and f_pol.from_guest[family]


@given(b_cap=adverts, f_cap=adverts, b_pol=policies, f_pol=policies)
def test_both_ends_compute_the_same_result_from_the_same_store_contents(
    b_cap: Advertisement, f_cap: Advertisement, b_pol: LinkPolicy, f_pol: LinkPolicy
) -> None:
    backend_keys = render_advertisement(Role.BACKEND, advertise(Role.BACKEND, b_cap, b_pol))
    frontend_keys = render_advertisement(Role.FRONTEND, advertise(Role.FRONTEND, f_cap, f_pol))
    # What the backend reads of the frontend, and the frontend of the backend:
    seen_by_backend = decide(advertise(Role.BACKEND, b_cap, b_pol),
                             parse_advertisement("/f", frontend_keys).advertisement,
                             b_pol)
    seen_by_frontend = decide(parse_advertisement("/b", backend_keys).advertisement,
                              advertise(Role.FRONTEND, f_cap, f_pol), f_pol)
    assert seen_by_backend == seen_by_frontend


def test_default_policy_computes_every_checksum() -> None:
    everything = Advertisement(FamilyFlags.both(True), FamilyFlags.both(True))
    backend = advertise(Role.BACKEND, everything, LinkPolicy())
    assert decide(backend, everything) == LinkResult()


@given(b_pol=policies)
def test_legacy_only_stock_netfront_gets_the_documented_result(b_pol: LinkPolicy) -> None:
    # Stock Linux netfront: no feature-no-csum-offload, feature-ipv6-csum-offload=1.
    everything = Advertisement(FamilyFlags.both(True), FamilyFlags.both(True))
    frontend = parse_advertisement("/f",
                                   {"feature-ipv6-csum-offload": b"1"}).advertisement
    result = decide(advertise(Role.BACKEND, everything, b_pol), frontend)
    assert result == LinkResult(to_guest=b_pol.to_guest, from_guest=b_pol.from_guest)


def test_explain_names_who_refused() -> None:
    backend = Advertisement(tx=FamilyFlags(True, False), rx=FamilyFlags(True, True))
    frontend = Advertisement(tx=FamilyFlags(True, True), rx=FamilyFlags(False, True))
    lines = explain(backend, frontend, decide(backend, frontend))
    assert "to-guest ipv4: checksums computed (refused by frontend rx)" in lines
    assert "to-guest ipv6: checksums computed (refused by backend tx)" in lines
    assert ("from-guest ipv4: blank checksums allowed (frontend tx and backend rx both allow it)"
            in lines)


@given(to_guest=flags, from_guest=flags)
def test_a_published_result_reads_back_as_the_same_result(
        to_guest: FamilyFlags, from_guest: FamilyFlags) -> None:
    result = LinkResult(to_guest, from_guest)
    assert parse_result(format_result(result)) == result


@pytest.mark.parametrize("raw", [
    b"", b"to-guest=none", b"to-guest=none  from-guest=none", b" to-guest=none from-guest=none",
    b"to-guest=none from-guest=none\n", b"to-guest=ipv6+ipv4 from-guest=none",
    b"from-guest=none to-guest=none", b"to-guest=all from-guest=none", b"\xff" * 40,
])
def test_a_published_result_outside_the_grammar_is_refused(raw: bytes) -> None:
    with pytest.raises(ResultValueError):
        parse_result(raw)

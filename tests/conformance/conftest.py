"""Shared settings of the conformance tests: fast timings for in-process subjects."""

from __future__ import annotations

from xenoffload.conformance.lab import Timing

#: In-process agents answer within milliseconds; a mutant that never does fails in 1.5 s.
FAST = Timing(timeout=1.5, quiet=0.1)

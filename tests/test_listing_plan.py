"""The no-op rule as a pure function (issue 10): what a run reads of Garmin's list, from
Garmin's count, what the manifest expects it to be, and the last full listing."""

from __future__ import annotations

import pytest
from helpers import import_script

garminsync = import_script()
Plan = garminsync.ListingPlan
RECENT, DUE = "2026-11-29T10:00:00Z", "2026-11-23T12:00:00Z"  # last full listing; 7 days ago


@pytest.mark.parametrize(
    ("count", "expected", "last_full", "plan"),
    [
        (150, 150, RECENT, Plan("nothing")),
        (153, 150, RECENT, Plan("newest", 3)),
        (149, 150, RECENT, Plan("all")),  # deletions: find out which
        (150, 150, None, Plan("all")),  # never read whole
        (150, 150, "2026-11-20T09:00:00Z", Plan("all")),  # the weekly full listing
        (0, 0, RECENT, Plan("nothing")),
    ],
    ids=["same", "three-new", "fewer", "first-run", "week-old", "empty-account"],
)
def test_listing_plan(count, expected, last_full, plan):
    assert garminsync.listing_plan(count, expected, last_full, DUE) == plan

"""The row schema documents what the harness produces."""

import re

from lambda_bench import results, zoo


def test_every_family_the_zoo_produces_is_documented():
    documented = set(re.findall(r"[a-z_]+", results.COLUMNS["family"]))
    produced = {zoo.family(spec) for spec in zoo.MODELS.values()} | {"layer"}
    assert produced <= documented, f"undocumented families: {sorted(produced - documented)}"


def test_every_status_is_documented():
    for status in results.STATUSES:
        assert status in results.COLUMNS["status"]

"""The models of the suite CI covers (lambda_bench.zoo.CHECK_SUITE: a ResNet with every mixer, one with
SE and the ResNet-D stem, EfficientNet-B0) and the registered sample (CHECK_SAMPLE), each in both
stages. Apart from tests/test_equivalence.py so that a second test process can run them (tox.ini)."""

import pytest

from lambda_bench import equivalence, zoo

from conftest import framework_params
from test_equivalence import assert_matches_reference


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("case", [c for c in zoo.suite() if c.is_model], ids=lambda c: c.name)
def test_model_matches_reference(case, framework):
    assert_matches_reference(case, framework)


@pytest.mark.parametrize("name", zoo.CHECK_SAMPLE)
def test_sample_of_registered_models_passes(name):
    """Registered models as `check --all` checks them, every installed framework together (the
    float32-agreeing route compares them with each other)."""
    frameworks = equivalence.installed_frameworks()
    if "torch" not in frameworks:
        pytest.skip("the anchor is torch float64: torch not installed")
    rows = equivalence.check_case(zoo.get(name), frameworks)
    assert {r.framework for r in rows} == set(frameworks) and {r.stage for r in rows} == {"float32", "float64"}
    bad = [(r.framework, r.stage, r.tensor, f"{r.rel_error:.2e}") for r in rows if not r.ok]
    assert not bad, bad

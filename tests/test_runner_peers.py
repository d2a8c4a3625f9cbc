"""Peers in the sweep engine: a case's ``implementation`` and ``spec`` options, their expansion from a
sweep config, the peers preset, what preflight makes of a peer that is missing or cannot compute the
case, and the worker passing both on to the backend. No timing is asserted."""

from __future__ import annotations

import pytest

from conftest import require_or_skip
from lambda_bench import counting, peers, preflight, results, runner, zoo


def _sweep(**group):
    config = {"models": ["lambda_conv"], "image_sizes": [8], "batch_sizes": [1], **group}
    return runner.build_sweep(config, "test")


def test_each_framework_runs_the_implementations_it_has():
    sweep = _sweep(frameworks=["torch", "tensorflow", "jax"],
                   implementations=["ours", "timm", "lambda_networks", "lambda_networks_keras"])
    got = {(c.framework, c.implementation) for c in sweep.cases}
    assert got == {("torch", "ours"), ("torch", "timm"), ("torch", "lambda_networks"), ("tensorflow", "ours"),
                   ("tensorflow", "lambda_networks_keras"), ("jax", "ours")}
    assert {c.implementation for c in _sweep(frameworks=["torch"]).cases} == {"ours"}  # the default
    # a peer runs in its own framework only: in a group without it, it adds no case
    assert {c.implementation for c in _sweep(frameworks=["jax"], implementations=["ours", "timm"]).cases} == {"ours"}


@pytest.mark.parametrize("group,message", [
    ({"implementations": ["flax_lambda"]}, "implementation 'flax_lambda': must be one of"),
    ({"frameworks": ["jax"], "implementations": ["timm"]}, "no compile mode or implementation given applies"),
    ({"spec": {"colour": 1}}, "option 'colour': unknown for lambda_conv"),
    ({"spec": [1, 2]}, "spec: must be a table"),
    ({"spec": {"r": 4}}, "lambda_conv with r=4 at image size 8"),
    ({"spec": {"batch": 4}}, "spec key 'batch': the input size is image_sizes"),
])
def test_bad_implementations_and_spec_options_fail_before_anything_runs(group, message):
    with pytest.raises(ValueError, match=message):
        _sweep(**group)


def test_case_ids_name_the_implementation_and_options_only_where_not_default():
    ours = _sweep(frameworks=["torch"]).cases[0]
    assert ours.case_id == "lambda_conv|torch|8|1|infer|fp32|eager|cpu|t" + str(ours.threads)  # as before
    peer = _sweep(frameworks=["torch"], implementations=["timm"], spec={"r": 5, "conv_bias": True}).cases[0]
    assert peer.case_id == ours.case_id + "|timm|conv_bias=True,r=5"
    assert "[timm]" in peer.describe() and "r=5" in peer.describe()
    spec = peer.zoo_case().spec
    assert (spec.r, spec.conv_bias, spec.d_in) == (5, True, 64)
    options = (("conv_bias", True), ("bn_eps", 0.001), ("d_in", 256), ("position", "none"), ("size", (4, 5)),
               ("mixers", ("conv", "lambda_conv")))
    assert runner.parse_spec_options(runner.format_spec_options(options)) == tuple(sorted(options))
    assert runner.parse_spec_options(None) == () == runner.parse_spec_options("")


def test_spec_options_reach_a_global_layer_and_its_table():
    case = runner.zoo_case("lambda", 16, 8, (("d_in", 256), ("d_out", 256)))
    assert case.spec.size == (16, 16) and case.input_shape == (8, 16, 16, 256)


def test_the_peers_preset_measures_the_five_layers_in_every_framework():
    sweep = runner.build_sweep(runner.preset("peers"), "preset peers")
    layers = {(c.model, c.image_size, c.zoo_case().spec.d_in, c.zoo_case().spec.position) for c in sweep.cases}
    assert layers == {("lambda_conv", 56, 64, "conv"), ("lambda_conv", 28, 128, "conv"),
                      ("lambda_conv", 16, 256, "conv"), ("lambda_conv", 7, 512, "conv"), ("lambda", 16, 256, "global")}
    who = {(c.framework, c.compile, c.implementation) for c in sweep.cases}
    assert who == {("torch", "eager", "ours"), ("torch", "eager", "timm"), ("torch", "eager", "lambda_networks"),
                   ("tensorflow", "eager", "ours"), ("tensorflow", "compiled", "ours"),
                   ("tensorflow", "eager", "lambda_networks_keras"),
                   ("tensorflow", "compiled", "lambda_networks_keras"), ("jax", "compiled", "ours")}
    assert {c.mode for c in sweep.cases} == {"infer", "train"} and {c.batch_size for c in sweep.cases} == {8}
    for c in sweep.cases:
        spec = c.zoo_case().spec
        assert (spec.k, spec.heads, spec.u) == (16, 4, 1)
        if spec.position == "conv":
            assert spec.r == 23 and spec.conv_bias  # the peers' lambda convolution always has a bias
        # every peer can compute every layer except the Keras layer's global form
        reason = peers.unsupported(c.implementation, spec)
        assert (reason is not None) == (c.implementation == "lambda_networks_keras" and spec.position == "global")


def test_narrowing_the_peers_preset_keeps_each_frameworks_own_cases():
    preset = runner.preset("peers")
    full = runner.build_sweep(preset)
    for fw in ("torch", "tensorflow", "jax"):
        narrowed = runner.build_sweep(runner.override(preset, frameworks=[fw]))
        assert {c.case_id for c in narrowed.cases} == {c.case_id for c in full.cases if c.framework == fw}


def test_preflight_rows_for_a_peer_that_is_missing_or_cannot_compute_the_case(monkeypatch):
    require_or_skip("timm", "peers")
    sweep = _sweep(frameworks=["torch"], implementations=["ours", "timm", "lambda_networks"], spec={"u": 2})
    monkeypatch.setattr(preflight, "framework_missing", lambda framework: None)
    monkeypatch.setitem(peers.PEERS, "lambda_networks",
                        {**peers.PEERS["lambda_networks"], "module": "no_such_module_x"})
    blocked = preflight.blocked(sweep.cases)
    by_impl = {c.implementation: blocked.get(c.case_id) for c in sweep.cases}
    assert by_impl["ours"] is None
    assert by_impl["timm"][0] == "unsupported" and "|u| is fixed at 1" in by_impl["timm"][1]
    assert by_impl["lambda_networks"][0] == "unavailable" and "no_such_module_x" in by_impl["lambda_networks"][1]


def test_the_worker_passes_the_implementation_and_spec_options_on():
    """In process (the real worker's measure, no subprocess): the spec options set the spec it measures
    (its parameter count), and the implementation reaches prepare (a peer that cannot compute the
    layer is an unsupported row naming itself)."""
    require_or_skip("torch", "torch")
    require_or_skip("timm", "peers")
    from lambda_bench import worker

    case = {"model": "lambda_conv", "framework": "torch", "image_size": 6, "batch_size": 1, "mode": "infer",
            "precision": "fp32", "compile": "eager", "device": "cpu", "threads": None,
            "timing": {"warmup_steps": 0, "min_steps": 1, "min_time_s": 0.0, "remeasure": 0},
            "spec_options": [["conv_bias", True], ["d_in", 16], ["d_out", 16], ["r", 3]]}
    measured = worker.measure({**case, "implementation": "timm"})
    assert measured["status"] == "ok", measured.get("error")
    row = results.make_row({**case, "implementation": "timm"}, measured, run_id="r", commit=None)
    assert row["spec_options"] == "conv_bias=True,d_in=16,d_out=16,r=3" and row["case_id"].endswith("|timm|" + row["spec_options"])
    spec = runner.zoo_case("lambda_conv", 6, 1, (("conv_bias", True), ("d_in", 16), ("d_out", 16), ("r", 3))).spec
    assert row["params"] == counting.params(spec) != counting.params(zoo.case("lambda_conv", 6, 1).spec)
    refused = worker.measure({**case, "implementation": "timm", "spec_options": [["d_in", 16], ["r", 3]]})
    assert refused["status"] == "unsupported" and "timm cannot compute this layer" in refused["error"]

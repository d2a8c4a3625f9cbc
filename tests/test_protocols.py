"""The framework contract in code: every backend and the step it prepares satisfy lambda_bench.backend's
Backend and lambda_bench.measure.steps' Step protocols (members, signatures, definition order), and
every method the harness calls on a backend or a step is in those protocols."""

from __future__ import annotations

import ast
import inspect
import pathlib

import pytest

from conftest import framework_params
from lambda_bench import zoo
from lambda_bench.backend import Backend, contract_problems, get_backend, protocol_members
from lambda_bench.measure import steps
from lambda_bench.measure.steps import Step

HARNESS = pathlib.Path(__file__).resolve().parent.parent / "lambda_bench"


def definition_order(cls: type, protocol: type) -> list[str]:
    """The protocol's members in the order ``cls`` defines them (attributes set in the class body too)."""
    members = set(protocol_members(protocol))
    return [name for name in vars(cls) if name in members]


def expected_order(cls: type, protocol: type) -> list[str]:
    return [name for name in protocol_members(protocol) if name in vars(cls)]


# --- the real backends ------------------------------------------------------------------------

@pytest.mark.parametrize("framework", framework_params())
def test_backend_satisfies_the_protocol(framework):
    backend = get_backend(framework)
    assert isinstance(backend, Backend)
    assert contract_problems(backend, Backend) == []
    assert backend.name == framework
    cls = type(backend)
    assert definition_order(cls, Backend) == expected_order(cls, Backend)
    compile_default = inspect.signature(backend.prepare).parameters["compile"].default
    assert compile_default in steps.COMPILE_MODES[framework]


@pytest.mark.parametrize("framework", framework_params())
def test_step_satisfies_the_protocol(framework):
    step = get_backend(framework).prepare(zoo.case("lambda_conv", 8, 1))
    assert isinstance(step, Step)
    assert contract_problems(step, Step) == []  # the constructor's arguments included
    assert definition_order(type(step), Step) == protocol_members(Step)  # every member, in order


def test_the_three_step_classes_take_the_same_constructor_arguments():
    """Read from the protocol, so that a change there must be made in every framework (the test above
    checks each installed one against it)."""
    params = list(inspect.signature(Step.__init__).parameters)
    assert params == ["self", "model", "case", "mode", "precision", "compile", "device", "seed"]


# --- the check can fail -----------------------------------------------------------------------

class CompleteBackend:
    """Every method the contract names, with its signature: the baseline the fakes below break."""
    name = "fake"

    def configure(self, threads=None): ...
    def build(self, spec, seed=0, dtype="float32"): ...
    def prepare(self, case, *, mode="infer", precision="fp32", compile="eager", device="cpu", seed=0,
                implementation="ours"): ...
    def load_weights(self, model, weights): ...
    def export_weights(self, model): ...
    def forward(self, model, x, train=False): ...
    def forward_backward(self, model, x, cotangent): ...
    def device_info(self): ...


def test_a_complete_fake_backend_passes():
    assert isinstance(CompleteBackend(), Backend)
    assert contract_problems(CompleteBackend(), Backend) == []


def test_a_backend_without_prepare_fails():
    class NoPrepare(CompleteBackend):
        prepare = None  # as if the method were never written

    class Incomplete:  # a backend written before prepare existed
        name = "fake"
        configure, build = CompleteBackend.configure, CompleteBackend.build
        load_weights, export_weights = CompleteBackend.load_weights, CompleteBackend.export_weights
        forward, forward_backward = CompleteBackend.forward, CompleteBackend.forward_backward
        device_info = CompleteBackend.device_info

    assert not isinstance(Incomplete(), Backend)
    assert contract_problems(Incomplete(), Backend) == ["Incomplete has no 'prepare'"]
    assert contract_problems(NoPrepare(), Backend) == ["NoPrepare.prepare is not a method"]


def test_a_backend_with_other_arguments_fails():
    class NoDtype(CompleteBackend):
        def build(self, spec, seed=0): ...

    class Positional(CompleteBackend):  # the options must be keywords, in the contract's order
        def prepare(self, case, mode="infer", precision="fp32", compile="eager", device="cpu", seed=0,
                    implementation="ours"): ...

    class OtherDefault(CompleteBackend):
        def forward(self, model, x, train=True): ...

    [problem] = contract_problems(NoDtype(), Backend)
    assert problem.startswith("NoDtype.build: takes (self, spec, seed=0)") and "dtype" in problem
    [problem] = contract_problems(Positional(), Backend)
    assert problem.startswith("Positional.prepare: takes")
    assert contract_problems(OtherDefault(), Backend) == [
        "OtherDefault.forward: train defaults to True, the contract says False"]


def test_a_step_without_count_flops_or_with_other_constructor_arguments_fails():
    class FakeStep:
        def __init__(self, backend, case, mode, precision, device, seed): ...  # the shape JaxStep once had
        traces = 0
        def step(self): ...
        def loss(self): ...
        def reset_peak_memory(self): ...
        def peak_memory(self): ...
        def _output(self): ...
        def _weights(self): ...

    problems = contract_problems(FakeStep(None, None, "infer", "fp32", "cpu", 0), Step)
    assert problems[0].startswith("FakeStep.__init__: takes (self, backend, case, mode")
    assert problems[1:] == ["FakeStep has no 'count_flops'"]
    assert not isinstance(FakeStep(None, None, "infer", "fp32", "cpu", 0), Step)


# --- every call the harness makes is in the contract ------------------------------------------

RECEIVERS = {"backend": Backend, "BACKEND": Backend, "step": Step}


def harness_calls(source: str) -> set[tuple[str, str]]:
    """(receiver, attribute) for every ``backend.X`` / ``BACKEND.X`` / ``step.X`` in ``source``."""
    return {(node.value.id, node.attr) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in RECEIVERS}


def outside_the_contract(calls: set[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(who, attr) for who, attr in calls if attr not in protocol_members(RECEIVERS[who])}


def test_the_scan_sees_a_call_outside_the_contract():
    calls = harness_calls("step = backend.prepare(case)\nstep.step()\nbackend.compile_everything(step)\n")
    assert calls == {("backend", "prepare"), ("step", "step"), ("backend", "compile_everything")}
    assert outside_the_contract(calls) == {("backend", "compile_everything")}


def test_every_method_the_harness_calls_is_in_the_protocols():
    calls = set()
    for path in sorted(HARNESS.rglob("*.py")):
        calls |= {(who, attr, path.relative_to(HARNESS.parent).as_posix())
                  for who, attr in harness_calls(path.read_text())}
    seen = {(who, attr) for who, attr, _ in calls}
    # the worker's own calls, so that the scan is known to look where the harness uses a backend
    assert {("backend", "prepare"), ("backend", "configure"), ("step", "step"), ("step", "count_flops")} <= seen
    missing = sorted((path, f"{who}.{attr}") for who, attr, path in calls
                     if (who, attr) in outside_the_contract(seen))
    assert missing == [], f"called but not in lambda_bench.backend.Backend / measure.steps.Step: {missing}"

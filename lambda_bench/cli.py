"""`lambda-bench`: the command line.

Exit codes: 0 all good; 1 a check exceeded its tolerance; 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Sequence

from . import zoo
from .specs import AttentionSpec, EfficientNetSpec, LambdaSpec, ResNetSpec


class UsageError(ValueError):
    pass


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _parse_size(text: str) -> tuple[int, int] | None:
    if text.lower() == "none":
        return None
    parts = text.lower().split("x")
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not HxW")
    return int(parts[0]), int(parts[1])


def _parse_mixers(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(","))


def _parse_optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


_PARSERS = {"int": int, "float": float, "str": str, "bool": _parse_bool, "tuple[int, int] | None": _parse_size,
            "tuple[str, str, str, str]": _parse_mixers, "int | None": _parse_optional_int}


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings -> typed spec/case overrides (types from LambdaSpec's annotations)."""
    types = {f.name: f.type for cls in (LambdaSpec, AttentionSpec, ResNetSpec, EfficientNetSpec)
             for f in dataclasses.fields(cls)}
    types.update({name: "int" for name in zoo.CASE_FIELDS})
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise UsageError(f"--set {pair!r}: expected key=value")
        if key not in types:
            raise UsageError(f"--set {key}: unknown option; options are {', '.join(sorted(types))}")
        try:
            out[key] = _PARSERS[types[key]](text.strip())
        except ValueError as exc:
            raise UsageError(f"--set {key}={text}: {exc}") from None
    return out


def _cmd_list(args: argparse.Namespace) -> int:
    for name in zoo.names():
        print(f"{name:12s} {zoo.get(name).describe()}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from . import counting

    rows = []
    for name, spec in zoo.MODELS.items():
        rows.append({"name": name, "family": zoo.family(spec), "description": zoo.describe_model(spec),
                     "image_size": spec.image_size, "params": counting.params(spec),
                     "flops": counting.flops(spec), "spec": {"type": type(spec).__name__, **dataclasses.asdict(spec)}})
    if args.json:
        print(json.dumps({"flops_convention": "2 per multiply-add, per image, products and convolutions only",
                          "models": rows}, indent=2))
        return 0
    print(f"{'name':24s} {'family':16s} {'image':>5s} {'params':>12s} {'GFLOPs':>8s}  description")
    for r in rows:
        print(f"{r['name']:24s} {r['family']:16s} {r['image_size']:5d} {r['params']:12,d} "
              f"{r['flops'] / 1e9:8.2f}  {r['description']}")
    print("FLOPs: 2 per multiply-add, per image, at the listed image size (lambda_bench/counting.py)")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from . import equivalence

    overrides = parse_overrides(args.set or [])
    if args.size:
        try:
            overrides["height"], overrides["width"] = _parse_size(args.size)
        except (TypeError, ValueError):
            raise UsageError(f"--size {args.size!r}: expected HxW, e.g. 7x9") from None
    if args.batch is not None:
        overrides["batch"] = args.batch
    if args.suite:
        if args.names or overrides:
            raise UsageError("--suite runs the fixed CI cases: give no NAME, --set, --size or --batch with it")
        cases = zoo.suite()
    else:
        cases = [zoo.get(name, **overrides) for name in (args.names or zoo.names())]
    frameworks, left_out = equivalence.resolve_frameworks(args.frameworks)
    rows = []
    for case in cases:
        rows.extend(equivalence.check_case(case, frameworks, seed=args.seed, threads=args.threads,
                                           perturb=args.perturb))
    ok = all(r.ok for r in rows)
    worst: dict[str, dict] = {}
    for r in rows:
        if r.framework not in worst or not (r.rel_error <= worst[r.framework]["rel_error"]):
            worst[r.framework] = {"case": r.case, "tensor": r.tensor, "rel_error": r.rel_error}
    if args.json:
        print(json.dumps({
            "ok": ok,
            "precision": "float32",
            "tolerance": equivalence.TOLERANCES["float32"],
            "cases": [{"name": c.name, "input_shape": list(c.input_shape), "spec": dataclasses.asdict(c.spec)} for c in cases],
            "frameworks": frameworks,
            "not_installed": left_out,
            "perturbed": args.perturb,
            "worst": worst,
            "checks": [r.as_dict() for r in rows],
        }, indent=2))
    else:
        for case in cases:
            print(f"{case.name}: {case.describe()}")
            for fw in frameworks:
                mine = [r for r in rows if r.case == case.name and r.framework == fw]
                bad = [r for r in mine if not r.ok]
                top = max(mine, key=lambda r: r.rel_error)
                status = "ok" if not bad else f"FAIL ({len(bad)} of {len(mine)} tensors)"
                print(f"  {fw:10s} {status:22s} worst {top.rel_error:.2e} ({top.tensor})")
                for r in bad:
                    print(f"    {r.tensor:32s} {r.rel_error:.2e} > {r.tolerance:.0e}")
        if left_out:
            print(f"not installed, not checked: {', '.join(left_out)}")
        tolerances = sorted({f"{r.tolerance:.1e}" for r in rows})
        print(f"{'all within' if ok else 'NOT within'} tolerance ({', '.join(tolerances)}; "
              "max|ours - ref| / max|ref| per tensor; anchor: float64 reference, or torch float64 for models)")
    return 0 if ok else 1


def _cmd_peers(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from . import peer_bench

    return peer_bench.run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lambda-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered names")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("models", help="registered models: family, image size, parameters, analytic FLOPs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("check", help="compare the frameworks with the float64 reference")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"registered names (default: all of them): {', '.join(zoo.names())}")
    p.add_argument("--suite", action="store_true",
                   help="instead of NAMEs, the CI cases (lambda_bench.zoo.CHECK_SUITE): every option the layer has")
    p.add_argument("--frameworks", help="comma-separated subset of torch,tensorflow,jax (default: every installed one)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a spec option (k, heads, u, r, position, content, conv_bias, stride, pool, "
                        "d_in, d_out, bn_eps, bn_momentum) or batch/height/width; repeatable")
    p.add_argument("--size", metavar="HxW", help="input size (for a global layer, also its table size)")
    p.add_argument("--batch", type=int, help="batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads per framework")
    p.add_argument("--perturb", metavar="WEIGHT",
                   help="self-test: change this canonical weight in the frameworks' copy only; the check must fail")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("peers", help="time and memory of our lambda layers against timm and lambda-networks")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--groups", help="comma-separated subset of torch,tensorflow,jax (default: all three)")
    p.add_argument("--configs", help="comma-separated subset of conv_d64_56,conv_d128_28,conv_d256_16,"
                                     "conv_d512_7,global_d256_16 (default: all)")
    p.add_argument("--threads", type=int, help="CPU threads in every framework (default 2)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-measurement memory subprocesses")
    p.add_argument("--torch-compile", action="store_true",
                   help="also time torch.compile'd members (slow to compile on a small CPU; off by default)")
    p.add_argument("--budget", type=float, help="seconds of timing per group after warm-up (default 8)")
    p.set_defaults(func=_cmd_peers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad input, framework missing: one line, exit 2
        print(f"lambda-bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`lambda-bench flops`: the analytic FLOP count of a spec beside each framework's own counter.

Both in FLOPs (2 per multiply-add), forward pass, per image (batch 1). The analytic count covers
convolutions, matrix products and the lambda/attention contractions (lambda_bench.counting); the
counters see what they see: torch's FlopCounterMode counts matmul/conv-like ops only, XLA's cost
analysis also counts every elementwise op. Their notes say so; the ratio shows the gap.
"""

from __future__ import annotations

from typing import Any, Iterable

from . import counting, zoo
from .backend import FRAMEWORKS, FrameworkUnavailable, get_backend
from .runner import DEFAULT_COMPILE


def compare(names: Iterable[str], frameworks: list[str] | None = None, image_size: int | None = None) -> list[dict[str, Any]]:
    names = list(names)
    for name in names:
        if name not in zoo.MODELS and name not in zoo.PRESETS:
            raise ValueError(f"name={name!r}: not registered; `lambda-bench list` and `lambda-bench models` name them")
    if image_size is not None and (isinstance(image_size, bool) or image_size <= 0):
        raise ValueError(f"--image-size {image_size}: must be a positive integer")
    for fw in frameworks or ():
        if fw not in FRAMEWORKS:
            raise ValueError(f"framework={fw!r}: must be one of {', '.join(FRAMEWORKS)}")
    cases = [zoo.case(name, image_size, 1) for name in names]
    explicit = frameworks is not None
    frameworks = [fw for fw in FRAMEWORKS if fw in (frameworks or FRAMEWORKS)]  # torch before tensorflow
    rows = []
    for case in cases:
        rows.append({"model": case.name, "image_size": case.height, "params": counting.params(case.spec),
                     "flops_analytic": counting.flops(case.spec, case.height, case.width), "counted": {}})
    for fw in frameworks:
        try:
            backend = get_backend(fw)
        except FrameworkUnavailable as exc:
            if explicit:
                raise
            for row in rows:
                row["counted"][fw] = {"flops": None, "counter": "", "note": f"not installed ({exc})", "ratio": None}
            continue
        backend.configure(None)
        for case, row in zip(cases, rows):
            step = backend.prepare(case, mode="infer", compile=DEFAULT_COMPILE[fw], device="cpu")
            counted = dict(step.count_flops())
            counted["ratio"] = (counted["flops"] / row["flops_analytic"]) if counted.get("flops") else None
            row["counted"][fw] = counted
            del step
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = []
    notes: dict[str, str] = {}
    for row in rows:
        lines.append(f"{row['model']} @ {row['image_size']}px: {row['params']:,} params, "
                     f"analytic {row['flops_analytic'] / 1e9:.3f} GFLOPs")
        for fw, c in row["counted"].items():
            if c.get("flops") is None:
                lines.append(f"  {fw:10s} -            ({c.get('note')})")
                continue
            lines.append(f"  {fw:10s} {c['flops'] / 1e9:.3f} GFLOPs  counted/analytic {c['ratio']:.3f}  [{c['counter']}]")
            notes[c["counter"]] = c.get("note", "")
    if notes:
        lines.append("")
        lines.extend(f"{counter}: {note}" for counter, note in notes.items())
    return "\n".join(lines)

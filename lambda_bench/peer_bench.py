"""`lambda-bench peers`: our lambda layers against the other implementations, time and memory.

Groups (one process, interleaved, same threads, same input):
  torch       ours vs timm ``LambdaLayer`` vs lucidrains ``lambda_networks.LambdaLayer`` (eager)
  tensorflow  ours vs lucidrains ``lambda_networks.tfkeras.LambdaLayer`` (eager and tf.function;
              lambda convolution only: its global form is an absolute table with no equivalent)
  jax         ours under jax.jit (split state) vs our PyTorch layer, eager (JAX has no peer)
Configurations (batch 8, float32, |k| 16, |h| 4, |u| 1): the lambda convolution r = 23 at
(d 64, 56x56), (d 128, 28x28), (d 256, 16x16), (d 512, 7x7) and global relative embeddings at
(d 256, 16x16). Modes: forward (eval mode, no gradient) and forward + backward (train mode,
gradients of sum(y * cotangent) with respect to the input and every parameter).

Before any timing, every peer's weights are mapped into ours (lambda_bench.peers.from_*) and the
outputs (eval mode) and input gradients (train mode) compared: a relative error max|a - b| / max|b|
above MATCH_TOL marks the row "mismatch" and no ratio is reported for it.

Time: all members of a group are warmed up, then timed in alternating order (forward, then reverse)
round after round, each round one call of each, until every member has at least ``min_reps`` calls
and the group's time budget is spent (or ``max_reps``). Median, interquartile range and n per member.

Memory (CPU): a fresh subprocess per (implementation, config, mode, compile) builds the same member,
runs two warm-up steps, then reads its resident set size, resets the peak (writing 5 to
/proc/self/clear_refs resets VmHWM) and runs one step: peak = VmHWM - baseline ("peak RSS above the
pre-step baseline"). glibc's malloc is told to return freed memory to the system
(MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ = 128 KiB), else memory freed by the warm-up stays
resident and hides the step's peak. On CUDA the source is torch.cuda.max_memory_allocated.

Threads: ``threads`` (default 2) CPU threads in every framework: the process is pinned to that many
cores (sched_setaffinity; JAX/XLA has no thread-count flag and uses the cores it may run on),
torch.set_num_threads, TensorFlow's intra-op pool, and OMP/MKL variables for the subprocesses.
OMP_WAIT_POLICY is left as the user has it (see _pin_threads).

``plans=True`` (``--plans``) adds our PyTorch layer with its memory plan forced ("torch:ours-full",
"torch:ours-lean"): timed and measured like the others, with their own ratios, never used for the
issue's bars (those take the automatic "torch:ours").
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

MATCH_TOL = 1e-4
BATCH, K, HEADS, U, R = 8, 16, 4, 1, 23
DEFAULT_THREADS = 2


@dataclass(frozen=True)
class Config:
    name: str
    d: int
    size: int
    position: str  # "conv" | "global"

    def describe(self) -> str:
        form = f"conv r={R}" if self.position == "conv" else "global"
        return f"{form} d{self.d} {self.size}x{self.size}"


CONFIGS = (
    Config("conv_d64_56", 64, 56, "conv"),
    Config("conv_d128_28", 128, 28, "conv"),
    Config("conv_d256_16", 256, 16, "conv"),
    Config("conv_d512_7", 512, 7, "conv"),
    Config("global_d256_16", 256, 16, "global"),
)
MODES = ("forward", "forward+backward")
GROUPS = ("torch", "tensorflow", "jax")
# the members of each group: (implementation key, is ours)
MEMBERS = {
    "torch": ("torch:ours", "torch:timm", "torch:lucidrains"),
    "tensorflow": ("tensorflow:ours", "tensorflow:lucidrains-keras"),
    "jax": ("jax:ours", "torch:ours"),
}
# with --plans: our PyTorch layer again with its memory mode forced (lambda_bench.plans), to show the
# time / memory trade-off of the lean plan beside the automatic choice
PLAN_VARIANTS = {"torch:ours-full": "full", "torch:ours-lean": "lean"}


# --- the members: a peer (or ours) built for a config, and a step to time ---------------------------


def _inputs(cfg: Config, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x and the output cotangent, NHWC float32 (the same arrays for every member)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, cfg.size, cfg.size, cfg.d)).astype(np.float32)
    cot = rng.normal(size=(BATCH, cfg.size, cfg.size, cfg.d)).astype(np.float32)
    return x, cot


def _torch_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _build_torch_peer(kind: str, cfg: Config, seed: int = 0):
    import torch
    torch.manual_seed(seed)
    if kind == "timm":
        from timm.layers.lambda_layer import LambdaLayer
        if cfg.position == "conv":
            return LambdaLayer(cfg.d, cfg.d, r=R, num_heads=HEADS, dim_head=K)
        return LambdaLayer(cfg.d, cfg.d, feat_size=(cfg.size, cfg.size), r=None, num_heads=HEADS, dim_head=K)
    from lambda_networks import LambdaLayer
    if cfg.position == "conv":
        return LambdaLayer(cfg.d, dim_k=K, r=R, heads=HEADS, dim_out=cfg.d, dim_u=U)
    return LambdaLayer(cfg.d, dim_k=K, n=cfg.size, heads=HEADS, dim_out=cfg.d, dim_u=U)


def _torch_peer_and_mapping(kind: str, cfg: Config, seed: int = 0):
    from . import peers
    module = _build_torch_peer(kind, cfg, seed)
    peers.randomise_torch_batchnorm(module, seed)
    spec, w = (peers.from_timm if kind == "timm" else peers.from_lucidrains)(module)
    return module, spec, w


def _torch_ours(spec, w, **options):
    from implementations.torch.lambda_layer import LambdaLayer
    model = LambdaLayer(spec, **options)
    model.load_canonical(w)
    return model.to(_torch_device())


def _torch_steps(module, x: np.ndarray, cot: np.ndarray, compiled: bool = False) -> dict[str, Callable]:
    import torch
    dev = _torch_device()
    module = module.to(dev)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(dev)
    ct = torch.from_numpy(cot).permute(0, 3, 1, 2).contiguous().to(dev)
    xg = xt.clone().requires_grad_()
    params = [p for p in module.parameters() if p.requires_grad]
    fn = torch.compile(module) if compiled else module
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def forward():
        module.eval()
        with torch.no_grad():
            y = fn(xt)
        sync()
        return y

    def forward_backward():
        module.train()
        y = fn(xg)
        grads = torch.autograd.grad(y, [xg, *params], grad_outputs=ct)
        sync()
        return y, grads

    return {"forward": forward, "forward+backward": forward_backward}


def _tf_configure(threads: int) -> None:
    import tensorflow as tf
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already started: the pinning to `threads` cores still holds


def _keras_peer_and_mapping(cfg: Config, x: np.ndarray, seed: int = 0):
    import keras
    import tensorflow as tf
    from lambda_networks.tfkeras import LambdaLayer

    from . import peers
    keras.utils.set_random_seed(seed)
    layer = LambdaLayer(dim_k=K, r=R, heads=HEADS, dim_out=cfg.d, dim_u=U)
    layer(tf.convert_to_tensor(x[:1]))  # Keras builds the weights on the first call
    rng = np.random.default_rng(seed + 1)
    for bn in (layer.norm_q, layer.norm_v):
        c = bn.gamma.shape[0]
        bn.gamma.assign(0.5 + rng.random(c, dtype=np.float32))
        bn.beta.assign(0.2 * rng.standard_normal(c, dtype=np.float32))
        bn.moving_mean.assign(0.2 * rng.standard_normal(c, dtype=np.float32))
        bn.moving_variance.assign(0.5 + rng.random(c, dtype=np.float32))
    layer.pos_conv.bias.assign(0.1 * rng.standard_normal(K, dtype=np.float32))
    spec, w = peers.from_lucidrains_keras(layer)
    return layer, spec, w


def _tf_ours(spec, w, **options):
    from implementations.tensorflow.lambda_layer import LambdaLayer
    layer = LambdaLayer(spec, **options)
    layer.load_canonical(w)
    return layer


def _tf_steps(layer, x: np.ndarray, cot: np.ndarray, compiled: bool = False) -> dict[str, Callable]:
    import tensorflow as tf
    xt, ct = tf.convert_to_tensor(x), tf.convert_to_tensor(cot)
    variables = list(layer.trainable_variables)

    def forward():
        return layer(xt, training=False)

    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, training=True)
            loss = tf.reduce_sum(y * ct)
        return y, tape.gradient(loss, [xt, *variables])

    if compiled:
        forward, forward_backward = tf.function(forward), tf.function(forward_backward)
    return {"forward": lambda: _tf_done(forward()), "forward+backward": lambda: _tf_done(forward_backward())}


def _tf_done(out):
    import tensorflow as tf
    for t in tf.nest.flatten(out):  # CPU eager ops complete on return; on GPU reading one value waits
        if hasattr(t, "device") and "GPU" in getattr(t, "device", ""):
            t.numpy()
            break
    return out


def _jax_ours(spec, w, **options):
    from implementations.jax.lambda_layer import LambdaLayer
    model = LambdaLayer(spec, **options)
    model.load_canonical(w)
    return model


def _jax_steps(model, x: np.ndarray, cot: np.ndarray, compiled: bool = True) -> dict[str, Callable]:
    """jax.jit-compiled steps on the model's split state (Flax's functional pattern: nnx.split once,
    nnx.merge inside the compiled function). nnx.jit traverses the module graph in Python on every
    call (Flax's "Performance considerations" guide says so and recommends this pattern); measured
    here it added ~9 ms per call to a 28 ms step. The training step returns the updated BatchNorm
    statistics, which the next call uses, as a training loop would."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    xj, cj = jnp.asarray(x), jnp.asarray(cot)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = {"rest": rest}

    def forward(params, rest, x):
        return nnx.merge(graphdef, params, rest, copy=True)(x, train=False)

    def forward_backward(params, rest, x, cot):
        def loss(params, x):
            # copy: fresh Variables at this trace level (BatchNorm updates its statistics under
            # value_and_grad's trace), as implementations/jax/backend.py does
            module = nnx.merge(graphdef, params, rest, copy=True)
            y = module(x, train=True)
            return jnp.sum(y * cot), (y, nnx.split(module, nnx.Param, ...)[2])
        (_, (y, new_rest)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
        return y, grads, new_rest

    if compiled:
        forward, forward_backward = jax.jit(forward), jax.jit(forward_backward)

    def train_step():
        y, grads, state["rest"] = forward_backward(params, state["rest"], xj, cj)
        return jax.block_until_ready((y, grads))

    return {"forward": lambda: jax.block_until_ready(forward(params, state["rest"], xj)),
            "forward+backward": train_step}


@dataclass
class Member:
    key: str  # "torch:ours", "torch:timm", ...
    ours: bool
    steps: dict[str, Callable]
    compile: str  # "eager" | "torch.compile" | "tf.function" | "jax.jit"
    match: dict[str, float] = field(default_factory=dict)  # relative errors against ours
    status: str = "ok"


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b)))
    return float(np.max(np.abs(a - b))) / scale if scale > 0 else float(np.max(np.abs(a - b)))


def compare_outputs(ours: dict[str, np.ndarray], peer: dict[str, np.ndarray], tol: float = MATCH_TOL) -> tuple[bool, dict[str, float]]:
    """Relative error of every tensor the two share; ok when all are within ``tol`` (NaN fails)."""
    errors = {name: _rel(peer[name], ours[name]) for name in ours if name in peer}
    ok = bool(errors) and all(e <= tol for e in errors.values())  # NaN compares False
    return ok, errors


def _torch_probe(module, x: np.ndarray, cot: np.ndarray) -> dict[str, np.ndarray]:
    """Eval-mode output and train-mode input gradient, NHWC NumPy (weights are restored after)."""
    dev = _torch_device()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    steps = _torch_steps(module, x, cot)
    y = steps["forward"]()
    _, grads = steps["forward+backward"]()
    module.load_state_dict(state)
    del dev
    return {"output": y.permute(0, 2, 3, 1).cpu().numpy(), "input gradient": grads[0].permute(0, 2, 3, 1).cpu().numpy()}


def _tf_probe(layer, x, cot) -> dict[str, np.ndarray]:
    steps = _tf_steps(layer, x, cot)
    saved = [v.numpy() for v in layer.non_trainable_variables]
    y = steps["forward"]()
    _, grads = steps["forward+backward"]()
    for v, s in zip(layer.non_trainable_variables, saved):
        v.assign(s)
    return {"output": np.asarray(y), "input gradient": np.asarray(grads[0])}


def _jax_probe(model, x, cot) -> dict[str, np.ndarray]:
    steps = _jax_steps(model, x, cot, compiled=True)
    y = steps["forward"]()
    _, (_, gx) = steps["forward+backward"]()
    return {"output": np.asarray(y), "input gradient": np.asarray(gx)}


def build_group(group: str, cfg: Config, *, torch_compile: bool = False, tf_function: bool = True,
                members: tuple[str, ...] | None = None, check: bool = True,
                tol: float = MATCH_TOL, seed: int = 0) -> list[Member]:
    """The members of ``group`` for ``cfg``, each checked against ours on mapped weights (check=True)."""
    x, cot = _inputs(cfg, seed)
    keys = members or MEMBERS[group]
    out: list[Member] = []
    if group == "torch":
        peers_built = {kind: _torch_peer_and_mapping(kind, cfg, seed) for kind in ("timm", "lucidrains")
                       if f"torch:{kind}" in keys}
        if not peers_built:
            peers_built = {"timm": _torch_peer_and_mapping("timm", cfg, seed)}
        ref_kind = "timm" if "timm" in peers_built else next(iter(peers_built))
        _, spec, w = peers_built[ref_kind]
        ours = _torch_ours(spec, w)
        forced = {key: _torch_ours(spec, w, memory=mode) for key, mode in PLAN_VARIANTS.items() if key in keys}
        variants = [("eager", False)] + ([("torch.compile", True)] if torch_compile else [])
        for label, compiled in variants:
            if "torch:ours" in keys:
                out.append(Member("torch:ours", True, _torch_steps(ours, x, cot, compiled), label))
            for key, model in forced.items():
                out.append(Member(key, True, _torch_steps(model, x, cot, compiled), label))
            for kind, (module, pspec, pw) in peers_built.items():
                if f"torch:{kind}" not in keys:
                    continue
                m = Member(f"torch:{kind}", False, _torch_steps(module, x, cot, compiled), label)
                if check and label == "eager":
                    mine = _torch_probe(_torch_ours(pspec, pw), x, cot)
                    ok, m.match = compare_outputs(mine, _torch_probe(module, x, cot), tol)
                    m.status = "ok" if ok else "mismatch"
                out.append(m)
        for m in out:  # a compiled peer inherits its eager check
            if m.compile != "eager":
                twin = next(e for e in out if e.key == m.key and e.compile == "eager")
                m.match, m.status = twin.match, twin.status
    elif group == "tensorflow":
        if cfg.position != "conv":
            return []
        layer, spec, w = _keras_peer_and_mapping(cfg, x, seed)
        ours = _tf_ours(spec, w)
        match, status = {}, "ok"
        if check:
            ok, match = compare_outputs(_tf_probe(ours, x, cot), _tf_probe(layer, x, cot), tol)
            status = "ok" if ok else "mismatch"
        variants = [("eager", False)] + ([("tf.function", True)] if tf_function else [])
        for label, compiled in variants:
            if "tensorflow:ours" in keys:
                out.append(Member("tensorflow:ours", True, _tf_steps(ours, x, cot, compiled), label))
            if "tensorflow:lucidrains-keras" in keys:
                out.append(Member("tensorflow:lucidrains-keras", False, _tf_steps(layer, x, cot, compiled),
                                  label, dict(match), status))
    elif group == "jax":
        module, spec, w = _torch_peer_and_mapping("timm", cfg, seed)
        del module
        model = _jax_ours(spec, w)
        torch_ours = _torch_ours(spec, w)
        match, status = {}, "ok"
        if check:
            ok, match = compare_outputs(_jax_probe(model, x, cot), _torch_probe(torch_ours, x, cot), tol)
            status = "ok" if ok else "mismatch"
        if "jax:ours" in keys:
            out.append(Member("jax:ours", True, _jax_steps(model, x, cot, compiled=True), "jax.jit"))
        if "torch:ours" in keys:
            out.append(Member("torch:ours", False, _torch_steps(torch_ours, x, cot), "eager", dict(match), status))
    else:
        raise ValueError(f"group={group!r}: must be one of {', '.join(GROUPS)}")
    return out


# --- timing ----------------------------------------------------------------------------------------


def summarise(seconds: list[float]) -> dict[str, float]:
    a = np.asarray(seconds, np.float64) * 1e3
    q1, med, q3, p90 = np.percentile(a, [25, 50, 75, 90])
    return {"median_ms": float(med), "iqr_ms": float(q3 - q1), "p90_ms": float(p90), "n": int(a.size)}


def time_interleaved(steps: dict[str, Callable], *, min_reps: int = 5, max_reps: int = 50,
                     budget_s: float = 10.0, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Warm every step up, then time them round-robin (forward order, then reversed, alternately)."""
    names = list(steps)
    first_call = {}
    for name in names:
        t0 = time.perf_counter()
        steps[name]()
        first_call[name] = time.perf_counter() - t0  # includes compilation where there is one
        for _ in range(warmup - 1):
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    rep = 0
    while rep < max_reps and (rep < min_reps or time.perf_counter() - start < budget_s):
        for name in (names if rep % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
        rep += 1
    return {name: {**summarise(times[name]), "first_call_ms": first_call[name] * 1e3} for name in names}


# --- memory: a fresh process per measurement --------------------------------------------------------


def _rss_kib() -> tuple[int, int]:
    text = open("/proc/self/status").read()
    return (int(re.search(r"VmRSS:\s+(\d+)", text).group(1)), int(re.search(r"VmHWM:\s+(\d+)", text).group(1)))


def _worker(job: dict) -> dict:
    """In a fresh process: peak memory of one step of one member above the pre-step baseline."""
    _pin_threads(job["threads"])
    cfg = next(c for c in CONFIGS if c.name == job["config"])
    group, key = job["group"], job["key"]
    compiled = job["compile"] != "eager"
    if group == "tensorflow":
        _tf_configure(job["threads"])
    members = build_group(group, cfg, torch_compile=job["compile"] == "torch.compile",
                          tf_function=job["compile"] == "tf.function", members=(key,), check=False)
    member = next(m for m in members if m.key == key and m.compile == job["compile"])
    step = member.steps[job["mode"]]
    step()
    step()
    gc.collect()
    cuda = key.startswith("torch:") and _torch_device().type == "cuda"
    if cuda:
        import torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return {"peak_bytes": int(peak), "source": "torch.cuda.max_memory_allocated above the pre-step allocation"}
    base, _ = _rss_kib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    out = step()
    _, hwm = _rss_kib()
    del out, compiled
    return {"peak_bytes": (hwm - base) * 1024, "source": MEMORY_SOURCE}


MEMORY_SOURCE = ("CPU peak RSS (VmHWM, reset via /proc/self/clear_refs) above the RSS after two warm-up "
                 "steps, fresh process per measurement, glibc MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=128KiB")


def measure_memory(group: str, cfg: Config, key: str, mode: str, compile_label: str, threads: int,
                   timeout: float = 600) -> dict:
    env = dict(os.environ)
    env.update({"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072",
                "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "TF_CPP_MIN_LOG_LEVEL": "3", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                "TF_FORCE_GPU_ALLOW_GROWTH": "true"})
    job = {"group": group, "config": cfg.name, "key": key, "mode": mode, "compile": compile_label, "threads": threads}
    try:
        proc = subprocess.run([sys.executable, "-m", "lambda_bench.peer_bench", "--worker", json.dumps(job)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"peak_bytes": None, "status": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"peak_bytes": None, "status": f"worker failed (exit {proc.returncode}): {tail[:200]}"}
    return {**json.loads(lines[-1]), "status": "ok"}


# --- the whole run ---------------------------------------------------------------------------------


def _pin_threads(threads: int) -> str:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    # OMP_WAIT_POLICY is left as the user has it: PyTorch users run with libgomp's default (workers
    # spin briefly after each parallel region, then sleep). PASSIVE (sleep at once) was tried to keep
    # frameworks sharing this process off each other's cores; it costs every PyTorch op that starts
    # a parallel region a thread wake-up (measured: our reordered layer 9.6 -> 15 ms forward, the
    # lucidrains layer 19 -> 17 ms), so it measures a setting users do not run. The members of a
    # group run one at a time, so the brief default spin costs the next member little.
    policy = os.environ.get("OMP_WAIT_POLICY")
    note = f"OMP_WAIT_POLICY={policy}" if policy else ""
    try:
        cores = sorted(os.sched_getaffinity(0))
        if threads < len(cores):
            os.sched_setaffinity(0, cores[:threads])
            note = ", ".join(filter(None, [note, f"pinned to cores {cores[:threads]}"]))
        elif threads > len(cores):
            note = ", ".join(filter(None, [note, f"asked for {threads} threads on {len(cores)} cores"]))
    except (AttributeError, OSError):
        pass
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    return note


def _versions() -> dict[str, str]:
    """Installed versions, read from package metadata: importing timm after TensorFlow has loaded
    kills the process (seen with TF 2.21 and timm 1.0.31), so nothing is imported here."""
    from importlib import metadata

    out = {"python": platform.python_version(), "machine": platform.machine()}
    for dist in ("torch", "timm", "lambda-networks", "tensorflow", "keras", "jax", "flax", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def run(*, groups=GROUPS, configs=CONFIGS, modes=MODES, threads: int = DEFAULT_THREADS, memory: bool = True,
        torch_compile: bool = False, tf_function: bool = True, budget_s: float = 8.0, min_reps: int = 5,
        max_reps: int = 40, plans: bool = False, progress: Callable[[str], None] | None = None) -> dict:
    """Every group x config x mode: equivalence first, then interleaved time, then memory."""
    note = _pin_threads(threads)
    say = progress or (lambda s: None)
    rows: list[dict] = []
    for group in groups:
        if group == "tensorflow":
            _tf_configure(threads)
        if group == "jax":
            import jax
            jax.config.update("jax_default_matmul_precision", "highest")
        if group in ("torch", "jax"):
            import torch
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        for cfg in configs:
            try:
                keys = MEMBERS[group] + (tuple(PLAN_VARIANTS) if plans and group == "torch" else ())
                members = build_group(group, cfg, torch_compile=torch_compile, tf_function=tf_function, members=keys)
            except Exception as exc:  # a crash is a result row, never a lost sweep
                rows.append({"group": group, "config": cfg.name, "status": f"error: {type(exc).__name__}: {exc}"})
                continue
            if not members:
                continue
            for mode in modes:
                # interleave members that share a compile label with ours (jax: all of them)
                labels = list(dict.fromkeys(m.compile for m in members if m.ours))
                for label in labels:
                    batch = [m for m in members if m.compile == label or group == "jax"]
                    say(f"{group} {cfg.name} {mode} {label}: timing {', '.join(m.key for m in batch)}")
                    timed = {m.key: m for m in batch if m.status == "ok"}
                    try:
                        stats = time_interleaved({k: m.steps[mode] for k, m in timed.items()},
                                                 min_reps=min_reps, max_reps=max_reps, budget_s=budget_s)
                    except Exception as exc:
                        stats = {k: {"error": f"{type(exc).__name__}: {exc}"} for k in timed}
                    for m in batch:
                        row = {"group": group, "config": cfg.name, "describe": cfg.describe(), "mode": mode,
                               "implementation": m.key, "ours": m.ours and (group != "jax" or m.key.startswith("jax")),
                               "compile": m.compile, "status": m.status, "match": m.match, **stats.get(m.key, {})}
                        if "error" in row:
                            row["status"] = "error: " + row.pop("error")
                        rows.append(row)
    if memory:
        for row in rows:
            if row.get("status") != "ok" or "mode" not in row:
                continue
            if row["implementation"].split(":")[0] != "torch":
                # TensorFlow's and XLA's CPU allocators keep memory they have freed: after the
                # warm-up the step reuses it and RSS barely moves, so RSS above the baseline is not
                # their peak (it read ~0 MB). No sound CPU source here; not reported.
                row["memory_status"] = "not measured (allocator caches)"
                continue
            cfg = next(c for c in configs if c.name == row["config"])
            say(f"memory {row['group']} {row['config']} {row['mode']} {row['implementation']} {row['compile']}")
            mem = measure_memory(row["group"], cfg, row["implementation"], row["mode"], row["compile"], threads)
            row["peak_bytes"] = mem.get("peak_bytes")
            row["memory_source"] = mem.get("source")
            if mem["status"] != "ok":
                row["memory_status"] = mem["status"]
    _ratios(rows)
    return {"threads": threads, "thread_note": note, "batch": BATCH, "k": K, "heads": HEADS, "u": U, "r": R,
            "precision": "float32", "device": _device_name(), "versions": _versions(), "commit": _git_commit(),
            "match_tolerance": MATCH_TOL, "memory_source": MEMORY_SOURCE if memory else None,
            "timing": f"interleaved round-robin, warm-up 2, >= {min_reps} reps, budget {budget_s} s per group, max {max_reps}",
            "rows": rows, "bars": bars(rows)}


def _device_name() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {name}, {os.cpu_count()} cores visible"


def _ratios(rows: list[dict]) -> None:
    """ours / fastest peer (time, memory) within each (group, config, mode, compile label)."""
    keyf = lambda r: (r["group"], r["config"], r.get("mode"), r.get("compile") if r["group"] != "jax" else "")
    for row in rows:
        if not row.get("ours") or "median_ms" not in row:
            continue
        peers_ = [p for p in rows if keyf(p) == keyf(row) and not p.get("ours") and p.get("status") == "ok"
                  and "median_ms" in p]
        if not peers_:
            continue
        fastest = min(peers_, key=lambda p: p["median_ms"])
        row["fastest_peer"] = fastest["implementation"]
        row["time_ratio"] = row["median_ms"] / fastest["median_ms"]
        if row.get("peak_bytes") is not None and fastest.get("peak_bytes"):
            row["memory_ratio"] = row["peak_bytes"] / fastest["peak_bytes"]
        mism = [p["implementation"] for p in rows if keyf(p) == keyf(row) and p.get("status") == "mismatch"]
        if mism:
            row["not_compared"] = mism


def bars(rows: list[dict]) -> list[dict]:
    """The issue's acceptance bars, each met / not met with the rows behind it."""
    out = []
    for cfg in CONFIGS:
        r = [x for x in rows if x["group"] == "torch" and x["config"] == cfg.name and x.get("implementation") == "torch:ours"
             and x.get("mode") == "forward+backward" and x.get("compile") == "eager"]
        if r:
            t, m = r[0].get("time_ratio"), r[0].get("memory_ratio")
            out.append({"bar": f"torch {cfg.name} fwd+bwd: time <= 0.80 x fastest peer, memory <= fastest peer's",
                        "time_ratio": t, "memory_ratio": m,
                        "met": t is not None and t <= 0.80 and m is not None and m <= 1.0})
        for mode in MODES:
            r = [x for x in rows if x["group"] == "tensorflow" and x["config"] == cfg.name and x.get("ours")
                 and x.get("mode") == mode]
            for x in r:
                out.append({"bar": f"tensorflow {cfg.name} {mode} {x['compile']}: time <= 0.80 x Keras peer",
                            "time_ratio": x.get("time_ratio"),
                            "met": x.get("time_ratio") is not None and x["time_ratio"] <= 0.80})
            r = [x for x in rows if x["group"] == "jax" and x["config"] == cfg.name and x.get("ours") and x.get("mode") == mode]
            for x in r:
                out.append({"bar": f"jax {cfg.name} {mode}: jit time <= 1.25 x our torch eager",
                            "time_ratio": x.get("time_ratio"),
                            "met": x.get("time_ratio") is not None and x["time_ratio"] <= 1.25})
    return out


def format_table(result: dict) -> str:
    lines = [f"lambda-bench peers: batch {result['batch']}, float32, |k| {result['k']}, |h| {result['heads']}, "
             f"|u| {result['u']}, r {result['r']}; {result['threads']} threads ({result['thread_note'] or 'all visible cores'}); "
             f"{result['device']}; commit {result['commit']}",
             f"time: {result['timing']}; memory: {result['memory_source'] or 'not measured (--no-memory)'}",
             "", "| group | config | mode | compile | implementation | median ms | IQR ms | n | peak MB | time ours/fastest | mem ours/fastest | check |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "mode" not in r:
            lines.append(f"| {r['group']} | {r['config']} | | | | | | | | | | {r['status']} |")
            continue
        med = f"{r['median_ms']:.1f}" if "median_ms" in r else "-"
        iqr = f"{r['iqr_ms']:.1f}" if "iqr_ms" in r else "-"
        n = str(r.get("n", "-"))
        mb = f"{r['peak_bytes'] / 2**20:.1f}" if r.get("peak_bytes") is not None else r.get("memory_status", "-")
        tr = f"**{r['time_ratio']:.2f}** vs {r['fastest_peer'].split(':')[1]}" if "time_ratio" in r else ""
        mr = f"{r['memory_ratio']:.2f}" if "memory_ratio" in r else ""
        err = max(r["match"].values()) if r.get("match") else None
        chk = r["status"] + (f" ({err:.1e})" if err is not None else "")
        lines.append(f"| {r['group']} | {r['describe']} | {r['mode']} | {r['compile']} | {r['implementation']} | "
                     f"{med} | {iqr} | {n} | {mb} | {tr} | {mr} | {chk} |")
    lines += ["", "Bars (ours against the fastest peer):"]
    for b in result["bars"]:
        extra = "" if b.get("memory_ratio") is None else f", memory {b['memory_ratio']:.2f}"
        tr = "-" if b.get("time_ratio") is None else f"{b['time_ratio']:.2f}"
        lines.append(f"  {'met    ' if b['met'] else 'NOT MET'} {b['bar']} (time {tr}{extra})")
    return "\n".join(lines)


def run_cli(args) -> int:
    groups = tuple(g.strip() for g in (getattr(args, "groups", None) or ",".join(GROUPS)).split(",") if g.strip())
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise ValueError(f"--groups {bad[0]!r}: must be among {', '.join(GROUPS)}")
    names = getattr(args, "configs", None)
    configs = CONFIGS
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in {c.name for c in CONFIGS}]
        if unknown:
            raise ValueError(f"--configs {unknown[0]!r}: known configs are {', '.join(c.name for c in CONFIGS)}")
        configs = tuple(c for c in CONFIGS if c.name in wanted)
    threads = getattr(args, "threads", None) or DEFAULT_THREADS
    if threads <= 0:
        raise ValueError(f"--threads {threads}: must be a positive integer")
    progress = None if args.json else (lambda s: print(f"  .. {s}", file=sys.stderr, flush=True))
    result = run(groups=groups, configs=configs, threads=threads, memory=not getattr(args, "no_memory", False),
                 torch_compile=getattr(args, "torch_compile", False), budget_s=getattr(args, "budget", None) or 8.0,
                 plans=getattr(args, "plans", False), progress=progress)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0 if all(r.get("status") == "ok" for r in result["rows"]) else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        print(json.dumps(_worker(json.loads(sys.argv[2]))), flush=True)
    else:
        print("usage: lambda-bench peers (this module's own entry point is the memory worker)", file=sys.stderr)
        sys.exit(2)

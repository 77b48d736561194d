"""Speed and peak memory of ntkit.empirical_ntk against the plain torch.func recipe, side by side.

    python benchmarks/empirical.py                 # all cases, 3 timed repeats each
    python benchmarks/empirical.py --cases mlp1 --repeats 1
    python benchmarks/empirical.py --nt-python PATH  # with the neural-tangents columns (default: $NT_PYTHON)
    python benchmarks/empirical.py --threads 1     # one intra-op thread (see below)

Cases (float32, CPU, the traced kernel Θ̂(x, x) of shape (N, N), the default of ``empirical_ntk``):

- ``mlp1``: MLP 64-512-512-512-1 (ReLU), N = 256;
- ``mlp10``: the same with 10 outputs, N = 128;
- ``cnn``: 3 conv layers of 64 channels (3x3, padding 1) on 3x16x16 images, ReLU, global average pooling,
  a linear head with 10 outputs, N = 128;
- ``transformer``: Embedding (vocabulary 100, d = 64), 2 ``nn.TransformerEncoderLayer`` (4 heads,
  feed-forward 256, eval mode), mean pooling over 16 positions, 10 outputs, N = 64.

Each case and method runs in a fresh subprocess:

1. build the model and inputs (seed 0) and run the method once on two examples (a warm-up that pays
   one-time costs, e.g. torch.func's lazy imports, equally for every method);
2. read the process's peak resident memory ``ru_maxrss`` (``resource.getrusage``), then time one run on
   the full batch;
3. report the growth of ``ru_maxrss`` over step 1 as the peak memory of the computation.

This is repeated ``--repeats`` times, interleaved across methods (round 1: every method once, round 2: ...),
so that load changes on a shared machine hit all methods alike; the table shows the fastest time and the
largest peak. A method slower than 20 s is run once. neural-tangents' worker compiles on the full batch and
then times three warm runs in one process (its peak memory counts from before the compiling call). (torch's CPU
   allocations are invisible to ``tracemalloc``; the resident-set high-water mark sees everything, at page
   granularity, including memory the allocator keeps.)

The baseline "torch.func recipe" is the PyTorch tutorial's Jacobian contraction: ``vmap(jacrev(f))`` over
the examples, then ``einsum('nap,map->nm')`` per parameter. neural-tangents 0.6.5 (JAX, CPU) runs with
its structured-derivatives and Jacobian-contraction implementations, jit-compiled, timed after compilation,
when an interpreter with it is given (``--nt-python``, default ``$NT_PYTHON``; benchmarks/README.md).
Machines shared with other jobs make absolute times noisy; the ratios measured in one run are what to compare. On an
oversubscribed machine (load average well above the core count) spinning OpenMP threads can make torch's small
matrix products ten times slower; run with ``OMP_WAIT_POLICY=PASSIVE`` in the environment (the workers inherit it),
or ``--threads 1`` (which also restricts XLA to one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from nt_python import add_nt_python_option, nt_python

CASES = ["mlp1", "mlp10", "cnn", "transformer"]
TORCH_METHODS = ["recipe", "jacobian", "ntvp", "structured", "auto"]
NT_METHODS = ["nt-structured", "nt-jacobian"]
NT_CASES = {"mlp1", "mlp10", "cnn"}
SLOW = 20.0  # seconds: a method slower than this is timed once
TIMEOUT = 900.0  # seconds per case and method


# ---------------------------------------------------------------------------------------------- torch side
def torch_case(name: str):
    """(model, inputs) in float32, eval mode, seed 0."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name in ("mlp1", "mlp10"):
        out, n = (1, 256) if name == "mlp1" else (10, 128)
        layers = [nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(512, out)).eval(), torch.randn(n, 64)
    if name == "cnn":
        convs = [nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()]
        convs += [nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return nn.Sequential(*convs, nn.Linear(64, 10)).eval(), torch.randn(128, 3, 16, 16)
    if name == "transformer":

        class Encoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.emb = nn.Embedding(100, 64)
                layer = nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
                self.head = nn.Linear(64, 10)

            def forward(self, ids):
                return self.head(self.encoder(self.emb(ids)).mean(1))

        return Encoder().eval(), torch.randint(0, 100, (64, 16))
    raise ValueError(name)


def torch_func_recipe(model, x):
    """The tutorial recipe: per-example Jacobians by vmap(jacrev), contracted parameter by parameter."""
    import torch
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def single(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(single), (None, 0))(params, x)
    n_outputs = next(iter(jac.values())).shape[1]
    return sum(torch.einsum("nap,map->nm", j.flatten(2), j.flatten(2)) for j in jac.values()) / n_outputs


def torch_worker(case: str, method: str, threads: int | None) -> dict:
    """One timed run of one method on one case (the driver interleaves the repeats across methods)."""
    import torch

    import ntkit as nk
    from ntkit._functional import functionalize
    from ntkit.empirical.cost import Problem
    from ntkit.empirical.ntk import choose_method
    from ntkit.empirical.tracing import trace_model

    if threads:
        torch.set_num_threads(threads)
    model, x = torch_case(case)

    def run(batch):
        return torch_func_recipe(model, batch) if method == "recipe" else nk.empirical_ntk(model, batch, method=method)

    run(x[:2])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = run(x)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    result = {"time": elapsed, "peak_mib": peak / 1024, "checksum": float(out.double().sum())}
    if method == "auto":
        fm = functionalize(model)
        trace = trace_model(fm, x)
        problem = Problem(len(x), len(x), True, False, False, trace.n_outputs)
        result["chose"] = choose_method(fm, trace, problem, "auto", 2**40, None, 4)[0].name
    return result


# ------------------------------------------------------------------------------------ neural-tangents side
def nt_worker(case: str, method: str, threads: int | None, repeats: int = 3) -> dict:
    """Compile, then time ``repeats`` warm runs (compiling once per process is what a user would do)."""
    if threads:
        os.environ["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
    import jax
    import neural_tangents as nt
    from neural_tangents import stax

    if case in ("mlp1", "mlp10"):
        out, n = (1, 256) if case == "mlp1" else (10, 128)
        layers = [stax.Dense(512), stax.Relu()] * 3
        init_fn, apply_fn, _ = stax.serial(*layers, stax.Dense(out))
        x = jax.random.normal(jax.random.PRNGKey(0), (n, 64))
    else:
        conv = [stax.Conv(64, (3, 3), padding="SAME"), stax.Relu()] * 3
        init_fn, apply_fn, _ = stax.serial(*conv, stax.GlobalAvgPool(), stax.Dense(10))
        x = jax.random.normal(jax.random.PRNGKey(0), (128, 16, 16, 3))  # NHWC
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    implementation = {
        "nt-structured": nt.NtkImplementation.STRUCTURED_DERIVATIVES,
        "nt-jacobian": nt.NtkImplementation.JACOBIAN_CONTRACTION,
    }[method]
    kernel_fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=implementation))
    kernel_fn(x[:2], None, params).block_until_ready()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    kernel_fn(x, None, params).block_until_ready()  # compiles for this shape, then runs
    first = time.perf_counter() - start
    times = []
    while len(times) < repeats and sum(times) < SLOW:
        start = time.perf_counter()
        out = kernel_fn(x, None, params).block_until_ready()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    return {"time": min(times), "first": first, "peak_mib": peak / 1024, "checksum": float(out.sum())}


# ------------------------------------------------------------------------------------------------ driver
def spawn(python: str, case: str, method: str, threads: int | None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [python, __file__, "--worker", case, method]
    cmd += ["--threads", str(threads)] if threads else []
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": f"over {TIMEOUT:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(case: str, methods: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Each method ``repeats`` times, the repeats interleaved across methods (so that a change in the load of
    a shared machine affects all methods alike); fastest time, largest peak. neural-tangents runs once (its
    worker compiles, then times warm runs itself); a method slower than ``SLOW`` seconds is timed once."""
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for round_ in range(args.repeats):
        for method in methods:
            done = runs[method]
            if round_ and (method.startswith("nt-") or "error" in done[0] or done[0]["time"] > SLOW):
                continue
            python = args.nt_python if method.startswith("nt-") else sys.executable
            done.append(spawn(python, case, method, args.threads))
    results = {}
    for method, done in runs.items():
        ok = [r for r in done if "error" not in r]
        if not ok:
            results[method] = done[0]
            continue
        best = min(ok, key=lambda r: r["time"])
        results[method] = {**best, "peak_mib": max(r["peak_mib"] for r in ok)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--methods", nargs="+", default=TORCH_METHODS, choices=TORCH_METHODS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="intra-op threads for torch and XLA (default: theirs)")
    add_nt_python_option(parser)
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case, method = args.worker
        worker = nt_worker if method.startswith("nt-") else torch_worker
        print(json.dumps(worker(case, method, args.threads)))
        return

    import torch

    with_nt = nt_python(args) is not None
    print(
        f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, float32, best of "
        f"{args.repeats}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    header = f"{'case':12s} {'method':14s} {'time (s)':>9s} {'peak (MiB)':>11s} {'speed-up':>9s} {'memory':>7s}  note"
    print(header)
    print("-" * len(header))
    summary = []
    for case in args.cases:
        methods = list(args.methods) + (NT_METHODS if with_nt and case in NT_CASES else [])
        results = measure(case, methods, args)
        base = results.get("recipe", {})
        for method, r in results.items():
            if "error" in r:
                print(f"{case:12s} {method:14s} {'error':>9s}  {r['error']}")
                continue
            speed = f"{base['time'] / r['time']:8.1f}x" if "time" in base else ""
            memory = f"{base['peak_mib'] / max(r['peak_mib'], 1):6.1f}x" if "peak_mib" in base else ""
            note = f"chose {r['chose']}" if "chose" in r else (f"first call {r['first']:.1f} s" if "first" in r else "")
            print(f"{case:12s} {method:14s} {r['time']:9.3f} {r['peak_mib']:11.0f} {speed:>9s} {memory:>7s}  {note}")
        if "auto" in results and "time" in base and "time" in results["auto"]:
            summary.append((case, base["time"] / results["auto"]["time"]))
    if summary:
        print("\nauto vs torch.func recipe (speed-up): " + ", ".join(f"{c} {s:.1f}x" for c, s in summary))
        print("speed-up and memory columns: recipe / method (above 1: ntkit is faster / uses less memory)")


if __name__ == "__main__":
    main()

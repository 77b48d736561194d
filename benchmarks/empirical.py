"""Speed and peak memory of ntkit.empirical_ntk against the plain torch.func recipe and neural-tangents, side by side.

    python benchmarks/empirical.py                 # the CPU cases, 3 rounds
    python benchmarks/empirical.py --cases mlp1 --repeats 1
    python benchmarks/empirical.py --full          # the full kernel (N, N, O, O) instead of the traced one
    python benchmarks/empirical.py --nt-python PATH  # with the neural-tangents column (default: $NT_PYTHON)
    python benchmarks/empirical.py --threads 1     # one intra-op thread (see below)
    python benchmarks/empirical.py --device cuda   # the GPU cases, with the device's roofline measured first

Cases (float32, the traced kernel Θ̂(x, x) of shape (N, N), the default of ``empirical_ntk``, or with ``--full``
the full kernel (N, N, O, O)):

- ``tinycnn``: 2 conv layers of 8 channels (3x3, padding 1) on 3x6x6 images, ReLU, flatten, 4 outputs, N = 64
  (a problem small enough that fixed costs per call decide); ``tinymlp``: MLP 8-16-1 (ReLU), N = 8 (fixed costs
  are everything);
- ``mlp1``: MLP 64-512-512-512-1 (ReLU), N = 256; ``mlp1-2048``: the same with N = 2048 (GPU default);
- ``mlp10``: the same with 10 outputs, N = 128; ``mlp10-512``: N = 512 (GPU default);
- ``cnn``: 3 conv layers of 64 channels (3x3, padding 1) on 3x16x16 images, ReLU, global average pooling,
  a linear head with 10 outputs, N = 128;
- ``transformer``: Embedding (vocabulary 100, d = 64), 2 ``nn.TransformerEncoderLayer`` (4 heads,
  feed-forward 256, eval mode), mean pooling over 16 positions, 10 outputs, N = 64;
- ``resnet18``: ResNet-18 (torchvision's layout: BasicBlocks [2, 2, 2, 2], batch norm in eval mode) on 3x32x32
  images, 10 outputs, N = 64 (GPU default).

Each case and method runs in a fresh subprocess:

1. build the model and inputs (seed 0) and run the method once on two examples (a warm-up that pays
   one-time costs, e.g. torch.func's lazy imports, equally for every method);
2. time the first call on the full batch (the ``first`` column; the process's peak memory, ``ru_maxrss`` on
   CPU and ``torch.cuda.max_memory_allocated`` on CUDA, is measured over this call);
3. time ``--warm`` more calls with the same model and inputs and keep the fastest: the ``time`` column, what
   repeated calls cost (ntkit reuses its traced structure between them, ``empirical/tracing.py``), and the
   smallest CPU time of the process over those calls (``cpu``; with ``--threads 1`` the work done, which time
   spent waiting for a shared CPU does not inflate: on a loaded machine it is the better comparison).

This is repeated ``--repeats`` times, interleaved across methods (round 1: every method once, round 2: ...),
so that load changes on a shared machine hit all methods alike; the table shows the fastest time and the
largest peak. A method slower than 20 s is run once. On CUDA every timed call ends with a synchronisation.

The baseline "torch.func recipe" is the PyTorch tutorial's Jacobian contraction: ``vmap(jacrev(f))`` over
the examples, then ``einsum('nap,map->nm')`` per parameter (``'nap,mbp->nmab'`` for the full kernel).
neural-tangents 0.6.5 (JAX, CPU only) runs when an interpreter with it is given (``--nt-python``, default
``$NT_PYTHON``; benchmarks/README.md): in one process, each of its three implementations (Jacobian contraction,
NTK-vector products, structured derivatives) with ``vmap_axes=0`` and with ``None``, each jit-compiled on the
full batch and then timed on warm calls; the column shows the best of the six and which it was.
Machines shared with other jobs make absolute times noisy; the ratios measured in one run are what to compare. On an
oversubscribed machine (load average well above the core count) spinning OpenMP threads can make torch's small
matrix products ten times slower; run with ``OMP_WAIT_POLICY=PASSIVE`` in the environment (the workers inherit it),
or ``--threads 1`` (which also restricts XLA to one thread and pins every worker to one core: XLA's own
threads otherwise still run on other cores).

Targets (issue 14): ``auto`` never slower than the recipe (ratio >= 1 on every case), >= 2x neural-tangents on
the MLP cases and >= 3x on the CNN.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from nt_python import add_nt_python_option, nt_python

CASES = ["tinycnn", "tinymlp", "mlp1", "mlp10", "cnn", "transformer", "mlp1-2048", "mlp10-512", "resnet18"]
DEFAULT_CASES = {"cpu": ["tinycnn", "tinymlp", "mlp1", "mlp10", "cnn", "transformer"], "cuda": CASES}
TORCH_METHODS = ["recipe", "jacobian", "ntvp", "structured", "auto"]
NT_CASES = {"tinycnn", "tinymlp", "mlp1", "mlp10", "cnn"}
MLP_SIZES = {"mlp1": (1, 256), "mlp10": (10, 128), "mlp1-2048": (1, 2048), "mlp10-512": (10, 512)}
SLOW = 20.0  # seconds: a method slower than this is timed once
TIMEOUT = 900.0  # seconds per case and method
TARGET_VS_NT = {"mlp1": 2.0, "mlp10": 2.0, "cnn": 3.0}


# ---------------------------------------------------------------------------------------------- torch side
def pin_to_one_core(args: argparse.Namespace) -> None:
    """With ``--threads 1`` on the CPU, the worker process runs on one core (the last it may use): XLA keeps
    worker threads of its own whatever its flags say (measured: neural-tangents' CPU time 1.7x its wall time
    with ``--xla_cpu_multi_thread_eigen=false``), so only the affinity makes both libraries use one core."""
    if args.threads == 1 and args.device == "cpu" and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})


def _resnet18(n_outputs: int):
    """ResNet-18 as torchvision builds it (stem conv 7x7/2 and max pool, BasicBlocks [2, 2, 2, 2] with 1x1
    projection shortcuts, batch norm, global average pooling, a linear head), written out here so that the
    benchmark needs no torchvision."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.down = (
                nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                if stride != 1 or c_in != c_out
                else nn.Identity()
            )

        def forward(self, x):
            h = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
            return (h + self.down(x)).relu()

    stages, c_in = [], 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        stages += [Block(c_in, c_out, stride), Block(c_out, c_out, 1)]
        c_in = c_out
    stem = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    return nn.Sequential(*stem, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, n_outputs))


def torch_case(name: str):
    """(model, inputs) in float32, eval mode, seed 0."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name in MLP_SIZES:
        out, n = MLP_SIZES[name]
        layers = [nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(512, out)).eval(), torch.randn(n, 64)
    if name == "tinycnn":
        convs = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten()]
        return nn.Sequential(*convs, nn.Linear(8 * 6 * 6, 4)).eval(), torch.randn(64, 3, 6, 6)
    if name == "tinymlp":
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)).eval(), torch.randn(8, 8)
    if name == "cnn":
        convs = [nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()]
        convs += [nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return nn.Sequential(*convs, nn.Linear(64, 10)).eval(), torch.randn(128, 3, 16, 16)
    if name == "resnet18":
        return _resnet18(10).eval(), torch.randn(64, 3, 32, 32)
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


def torch_func_recipe(model, x, full: bool = False):
    """The tutorial recipe: per-example Jacobians by vmap(jacrev), contracted parameter by parameter."""
    import torch
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def single(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(single), (None, 0))(params, x)
    if full:
        return sum(torch.einsum("nap,mbp->nmab", j.flatten(2), j.flatten(2)) for j in jac.values())
    n_outputs = next(iter(jac.values())).shape[1]
    return sum(torch.einsum("nap,map->nm", j.flatten(2), j.flatten(2)) for j in jac.values()) / n_outputs


def torch_worker(case: str, method: str, args: argparse.Namespace) -> dict:
    """One process's measurement of one method on one case (see the module docstring)."""
    import torch

    import ntkit as nk
    from ntkit._functional import functionalize
    from ntkit.empirical.cost import Problem
    from ntkit.empirical.ntk import choose_method
    from ntkit.empirical.tracing import trace_model

    if args.threads:
        torch.set_num_threads(args.threads)
    pin_to_one_core(args)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model, x = torch_case(case)
    model, x = model.to(args.device), x.to(args.device)

    def run(batch):
        if method == "recipe":
            out = torch_func_recipe(model, batch, args.full)
        else:
            out = nk.empirical_ntk(model, batch, method=method, trace_outputs=not args.full)
        if cuda:
            torch.cuda.synchronize(args.device)
        return out

    def timed(batch):
        start, cpu = time.perf_counter(), time.process_time()
        out = run(batch)
        return time.perf_counter() - start, out, time.process_time() - cpu

    run(x[:2])
    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
        base = torch.cuda.memory_allocated(args.device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    first, out, first_cpu = timed(x)
    if cuda:
        peak = torch.cuda.max_memory_allocated(args.device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    warm = [timed(x) for _ in range(args.warm)] if first < SLOW else [(first, out, first_cpu)]
    result = {
        "time": min(w[0] for w in warm),
        "cpu": min(w[2] for w in warm),
        "first": first,
        "peak_mib": peak / 2**20,
        "checksum": float(out.double().sum()),
    }
    if method == "auto":
        fm = functionalize(model)
        trace = trace_model(fm, x)
        problem = Problem(len(x), len(x), True, False, args.full, trace.n_outputs)
        result["chose"] = choose_method(fm, trace, problem, "auto", 2**40, None, 4)[0].name
    return result


# ------------------------------------------------------------------------------------ neural-tangents side
def nt_worker(case: str, args: argparse.Namespace, repeats: int = 3) -> dict:
    """Each implementation with vmap_axes 0 and None: compile on the full batch, then the fastest of ``repeats``
    warm runs (compiling once per process is what a user would do); the best of the six is the result."""
    if args.threads:
        os.environ["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'}"
    pin_to_one_core(args)
    import jax
    import neural_tangents as nt
    from neural_tangents import stax

    if case in MLP_SIZES:
        out, n = MLP_SIZES[case]
        init_fn, apply_fn, _ = stax.serial(*[stax.Dense(512), stax.Relu()] * 3, stax.Dense(out))
        x = jax.random.normal(jax.random.PRNGKey(0), (n, 64))
    elif case == "tinycnn":
        conv = [stax.Conv(8, (3, 3), padding="SAME"), stax.Relu()] * 2
        init_fn, apply_fn, _ = stax.serial(*conv, stax.Flatten(), stax.Dense(4))
        x = jax.random.normal(jax.random.PRNGKey(0), (64, 6, 6, 3))  # NHWC
    elif case == "tinymlp":
        init_fn, apply_fn, _ = stax.serial(stax.Dense(16), stax.Relu(), stax.Dense(1))
        x = jax.random.normal(jax.random.PRNGKey(0), (8, 8))
    else:
        conv = [stax.Conv(64, (3, 3), padding="SAME"), stax.Relu()] * 3
        init_fn, apply_fn, _ = stax.serial(*conv, stax.GlobalAvgPool(), stax.Dense(10))
        x = jax.random.normal(jax.random.PRNGKey(0), (128, 16, 16, 3))  # NHWC
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    implementations = {
        "jacobian": nt.NtkImplementation.JACOBIAN_CONTRACTION,
        "ntvp": nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
        "structured": nt.NtkImplementation.STRUCTURED_DERIVATIVES,
    }
    trace_axes = () if args.full else (-1,)
    results = []
    for label, implementation in implementations.items():
        for vmap_axes in (0, None):
            kernel_fn = jax.jit(
                nt.empirical_ntk_fn(apply_fn, trace_axes=trace_axes, vmap_axes=vmap_axes, implementation=implementation)
            )
            try:
                kernel_fn(x[:2], None, params).block_until_ready()
                base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                start = time.perf_counter()
                out = kernel_fn(x, None, params).block_until_ready()  # compiles for this shape, then runs
            except Exception as err:  # e.g. XLA out of memory for one implementation: the others still count
                print(f"{label}, vmap_axes={vmap_axes}: {str(err).splitlines()[0][:100]}", file=sys.stderr)
                continue
            first = time.perf_counter() - start
            times, cpus = [first], [math.inf]
            while len(times) <= repeats and sum(times) < SLOW and first < SLOW:
                start, cpu = time.perf_counter(), time.process_time()
                out = kernel_fn(x, None, params).block_until_ready()
                times.append(time.perf_counter() - start)
                cpus.append(time.process_time() - cpu)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
            warm = min(times[1:]) if len(times) > 1 else first
            results.append(
                {
                    "time": warm,
                    "cpu": min(cpus) if len(cpus) > 1 else math.nan,
                    "first": first,
                    "peak_mib": peak / 1024,
                    "checksum": float(out.sum()),
                    "chose": f"{label}, vmap_axes={vmap_axes}",
                }
            )
    best = min(results, key=lambda r: r["time"])
    return {**best, "cpu": min((r["cpu"] for r in results if not math.isnan(r["cpu"])), default=math.nan)}


# ------------------------------------------------------------------------------------------------ driver
def spawn(python: str, case: str, method: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [python, __file__, "--worker", case, method, "--device", args.device, "--warm", str(args.warm)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--full"] if args.full else []
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
    worker times warm runs itself); a method slower than ``SLOW`` seconds is timed once."""
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for round_ in range(args.repeats):
        for method in methods:
            done = runs[method]
            if round_ and (method == "nt" or "error" in done[0] or done[0]["time"] > SLOW):
                continue
            python = args.nt_python if method == "nt" else sys.executable
            done.append(spawn(python, case, method, args))
    results = {}
    for method, done in runs.items():
        ok = [r for r in done if "error" not in r]
        if not ok:
            results[method] = done[0]
            continue
        best = min(ok, key=lambda r: r["time"])
        results[method] = {**best, "peak_mib": max(r["peak_mib"] for r in ok), "cpu": min(r["cpu"] for r in ok)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, help="default: the device's cases (module docs)")
    parser.add_argument("--methods", nargs="+", default=TORCH_METHODS, choices=TORCH_METHODS)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of fresh processes (default 3)")
    parser.add_argument("--warm", type=int, default=3, help="warm calls timed in each process (default 3)")
    parser.add_argument("--full", action="store_true", help="the full kernel (N, N, O, O)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (neural-tangents runs on CPU only)")
    parser.add_argument("--threads", type=int, help="intra-op threads for torch and XLA (default: theirs)")
    add_nt_python_option(parser)
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case, method = args.worker
        print(json.dumps(nt_worker(case, args) if method == "nt" else torch_worker(case, method, args)))
        return

    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: torch sees no CUDA device here.")
    with_nt = not cuda and nt_python(args) is not None
    print(
        f"torch {torch.__version__}, {args.device}, {args.threads or torch.get_num_threads()} threads, float32, "
        f"{'full' if args.full else 'traced'} kernel, best of {args.repeats} rounds x {args.warm} warm calls; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    if cuda:
        from roofline import describe

        print(describe(args.device))
    header = (
        f"{'case':12s} {'method':12s} {'time (s)':>9s} {'cpu (s)':>9s} {'first (s)':>9s} {'peak (MiB)':>11s} "
        f"{'speed-up':>9s} {'memory':>7s}  note"
    )
    print(header)
    print("-" * len(header))
    summary = []
    for case in args.cases or DEFAULT_CASES["cuda" if cuda else "cpu"]:
        methods = list(args.methods) + (["nt"] if with_nt and case in NT_CASES else [])
        results = measure(case, methods, args)
        base = results.get("recipe", {})
        for method, r in results.items():
            if "error" in r:
                print(f"{case:12s} {method:12s} {'error':>9s}  {r['error']}")
                continue
            speed = f"{base['time'] / r['time']:8.2f}x" if "time" in base else ""
            memory = f"{base['peak_mib'] / max(r['peak_mib'], 1):6.1f}x" if "peak_mib" in base else ""
            note = f"chose {r['chose']}" if "chose" in r else ""
            print(
                f"{case:12s} {method:12s} {r['time']:9.4f} {r['cpu']:9.4f} {r['first']:9.4f} {r['peak_mib']:11.0f} "
                f"{speed:>9s} {memory:>7s}  {note}"
            )
        auto = results.get("auto", {})
        if "time" in auto:
            line = [f"{case}:"]
            for label, other in (("the recipe", base), ("neural-tangents' best", results.get("nt", {}))):
                if "time" in other:
                    target = TARGET_VS_NT.get(case, 0) if other is not base else 1
                    ratios = f"{other['time'] / auto['time']:.2f}x (cpu {other['cpu'] / auto['cpu']:.2f}x)"
                    line.append(f"{ratios} {label}" + (f" (target >= {target:g})" if target else ""))
            summary.append(" ".join(line[:1]) + " " + ", ".join(line[1:]))
    if summary:
        print("\nauto, warm calls: " + "; ".join(summary))
        print("speed-up and memory columns: recipe / method (above 1: ntkit is faster / uses less memory)")
        print("cpu: the process's CPU time of the fastest warm call, which waiting for a shared CPU does not inflate")


if __name__ == "__main__":
    main()

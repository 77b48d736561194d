"""The whole GPU check of issue 14 in one command, for a session that has a GPU (about 6-8 minutes on one H200).

    python3 benchmarks/gpu_check.py --out gpu_check.txt     # on the GPU machine, from the repository root
    python3 benchmarks/gpu_check.py --dry-run               # anywhere: print the steps' commands, run nothing
    python3 benchmarks/gpu_check.py --device cpu            # a rehearsal: the same steps, small, on the CPU

Steps, in this order (the most important first), each with a time limit; the whole run keeps within ``--budget``
seconds (480 by default), and a step that no longer fits is skipped with a line saying so:

1. ``env``: torch and CUDA versions, the device's name, ``nvidia-smi -L``;
2. ``roofline``: copy bandwidth and float32/float64 GEMM rates of the device, measured now (benchmarks/roofline.py);
3. ``tests``: the CUDA tests (tests/test_cuda.py: every public entry point on the device against CPU float64; the
   device cases of tests/linearize/test_linearize_module.py; tests/scale/test_scale_store.py::test_cuda_devices);
4. ``infinite``: ``nk.kernel`` against the plain whole-array torch recursion at N = 4000 and 20000 and on the pooled
   CNN (benchmarks/infinite.py --device cuda);
5. ``linearize``: a training step of ``nk.linearize(model)`` against the model's
   (benchmarks/linearize.py --device cuda);
6. ``reproduce``: the wall time of ``ntkit reproduce --quick --device cuda`` (target: under 25 s);
7. ``empirical``: ``nk.empirical_ntk`` (auto) against the torch.func recipe on the tiny CNN, the MLPs (N = 256,
   2048; 10 outputs N = 512), the CNN and ResNet-18 (benchmarks/empirical.py --device cuda --methods recipe auto);
8. ``conv``: benchmarks/conv.py --device cuda --quick (the pooled-CNN kernels of issue 16), if that script exists
   (it is written under issue 16; until it lands this step prints that it is absent).

Everything the steps print goes to ``--out`` (default gpu_check.txt) and to the terminal, each step under a header
with its command, exit status and time. With ``--device cpu`` (a rehearsal of the script itself on a machine
without a GPU) the tests run on the CPU against itself (``NTKIT_TEST_DEVICE=cpu``) and the benchmarks on their
smallest CPU cases; ``--steps`` picks steps by name. Asked for CUDA where torch sees none, it stops at once with a
message saying so (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
REPRODUCE_TARGET = 25.0  # seconds, issue 14
GPU_EMPIRICAL_CASES = ["tinycnn", "mlp1", "mlp1-2048", "mlp10-512", "cnn", "resnet18"]  # the cases of issue 14


@dataclass
class Step:
    name: str
    argv: list[str]
    limit: float  # seconds
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


def steps(device: str, python: str, out_dir: str) -> list[Step]:
    """The check's steps for ``device`` ('cuda' or 'cpu': the rehearsal's small versions)."""
    cuda = device.startswith("cuda")
    tests = ["tests/test_cuda.py"] + (
        ["tests/linearize/test_linearize_module.py", "tests/scale/test_scale_store.py::test_cuda_devices"]
        if cuda
        else []
    )
    env_probe = (
        "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', "
        "torch.cuda.is_available()); print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    )
    run = [python]
    result = [
        Step("env", [*run, "-c", env_probe], 60),
        Step("roofline", [*run, str(BENCH / "roofline.py"), "--device", device], 60),
        Step(
            "tests",
            [*run, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider"]
            + ([] if cuda else ["-x", "-k", "mlp or kernel"]),
            150,
            {"NTKIT_TEST_DEVICE": device},
        ),
        Step(
            "infinite",
            [*run, str(BENCH / "infinite.py"), "--device", device, "--repeats", "1"]
            + ([] if cuda else ["--cases", "mlp-1000"]),
            120,
            {"NT_PYTHON": ""},
        ),
        Step(
            "linearize", [*run, str(BENCH / "linearize.py"), "--device", device, "--repeats", "20" if cuda else "2"], 90
        ),
        Step(
            "reproduce",
            [*run, "-m", "ntkit", "reproduce", "--quick", "--device", device, "--out", out_dir, "--no-progress"]
            + ["--no-resume"]
            + ([] if cuda else ["--only", "E1"]),
            120,
            note=f"target on one GPU: under {REPRODUCE_TARGET:g} s of wall time",
        ),
        Step(
            "empirical",
            [*run, str(BENCH / "empirical.py"), "--device", device, "--methods", "recipe", "auto", "--repeats", "1"]
            + (["--cases", *GPU_EMPIRICAL_CASES] if cuda else ["--cases", "tinycnn", "--warm", "1"]),
            180,
            {"NT_PYTHON": ""},
        ),
    ]
    conv = BENCH / "conv.py"
    if conv.exists():
        result.append(Step("conv", [*run, str(conv), "--device", device, "--quick"], 120))
    else:
        result.append(Step("conv", [], 0, note="benchmarks/conv.py (issue 16) is not in this checkout: skipped"))
    return result


class Log:
    """Writes to the output file and the terminal."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w", encoding="utf-8")

    def __call__(self, text: str) -> None:
        self.file.write(text + "\n")
        self.file.flush()
        print(text, flush=True)


def run_step(step: Step, remaining: float, log: Log) -> None:
    log(f"\n=== {step.name}: {' '.join(step.argv) if step.argv else '(nothing to run)'}")
    if step.note:
        log(f"    {step.note}")
    if not step.argv:
        return
    limit = min(step.limit, remaining)
    if limit < 10:
        log(f"--- {step.name}: SKIPPED, only {remaining:.0f} s of the budget left")
        return
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE", **step.env)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.perf_counter()
    proc = subprocess.Popen(
        step.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            log(line.rstrip("\n"))
            if time.perf_counter() - start > limit:
                proc.kill()
                break
        rc = proc.wait(timeout=max(1.0, limit - (time.perf_counter() - start)))
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    seconds = time.perf_counter() - start
    status = f"exit status {rc}" if seconds <= limit else f"STOPPED at its limit of {limit:.0f} s"
    log(f"--- {step.name}: {status}, {seconds:.1f} s wall time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a rehearsal on small cases)")
    parser.add_argument("--out", default="gpu_check.txt", help="file for the whole output (default gpu_check.txt)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together (default 480)")
    parser.add_argument("--steps", nargs="+", help="run only these steps (names in the module docs)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps' commands and run nothing")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the steps (default: this one)")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device must be cuda[:i] or cpu, got {args.device!r}")
    if args.budget <= 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget:g}")
    with tempfile.TemporaryDirectory() as out_dir:
        plan = steps(args.device, args.python, out_dir)
        unknown = sorted(set(args.steps or []) - {s.name for s in plan})
        if unknown:
            parser.error(f"unknown steps {unknown}; the steps are {[s.name for s in plan]}")
        chosen = [s for s in plan if not args.steps or s.name in args.steps]
        if args.dry_run:
            for s in chosen:
                print(f"{s.name} (limit {s.limit:.0f} s): {' '.join(s.argv) or s.note}")
            return 0
        if args.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                print(
                    f"gpu_check: --device {args.device}, but torch {torch.__version__} sees no CUDA device here. "
                    "Run it on a machine with a GPU, or rehearse it on the CPU with --device cpu.",
                    file=sys.stderr,
                )
                return 2
        log = Log(Path(args.out))
        log(
            f"gpu_check on {args.device}, budget {args.budget:.0f} s, started {time.strftime('%Y-%m-%d %H:%M:%S')}; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        if args.device.startswith("cuda"):
            subprocess.run(["nvidia-smi", "-L"], check=False, stdout=log.file, stderr=subprocess.STDOUT)
        start = time.perf_counter()
        for step in chosen:
            run_step(step, args.budget - (time.perf_counter() - start), log)
        log(f"\ngpu_check finished in {time.perf_counter() - start:.0f} s; output in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

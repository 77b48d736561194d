"""Time budget of `ntkit reproduce --quick`: each experiment's quick configuration, timed with torch's default
thread count and with one thread, against the budget (under 3 minutes for all eight together, so about 20 s
each). Prints one row per experiment and the ratio time / budget (below 1 is within budget).

    PYTHONPATH=src python benchmarks/reproduce.py [--only E3] [--full]

On a machine shared with other busy processes, compare the two rows, and run it again with
OMP_WAIT_POLICY=PASSIVE in the environment: torch's OpenMP threads spin while they wait for each other, which is
very slow when the cores are oversubscribed.
"""

from __future__ import annotations

import argparse
import time

import torch

from ntkit.experiments import RunContext, run_one, select

QUICK_BUDGET_S = 180.0
N_EXPERIMENTS = 8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only")
    parser.add_argument("--full", action="store_true", help="time the full configurations (budget 45 min)")
    args = parser.parse_args()
    budget = (45 * 60.0 if args.full else QUICK_BUDGET_S) / N_EXPERIMENTS
    default_threads = torch.get_num_threads()
    ctx = RunContext(quick=not args.full)
    ctx.load_data(n_train=8)  # load scikit-learn's digits once, outside the timings
    print(f"budget per experiment: {budget:.0f} s ({'full' if args.full else 'quick'})")
    print(f"{'id':<4} {'threads':>7} {'wall s':>8} {'cpu s':>8} {'ratio':>6}  verdict")
    for exp in select(args.only):
        for threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            wall, cpu = time.perf_counter(), time.process_time()
            result = run_one(exp, ctx)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            ratio = wall / budget
            print(f"{exp.id:<4} {threads:>7} {wall:>8.1f} {cpu:>8.1f} {ratio:>6.2f}  {result.label}", flush=True)
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()

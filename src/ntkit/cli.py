"""The ``ntkit`` command (also ``python -m ntkit``).

``ntkit reproduce [--quick] [--only E1,E3,...] [--dataset NAME] [--data-dir DIR] [--download] [--out DIR]
[--device cpu|cuda] [--seed N] [--threads N] [--no-progress] [--no-resume]`` runs the paper's experiments and
writes the report (``docs/reproduce.md``). ``ntkit reproduce --list`` lists the experiments.

Each experiment is saved in ``DIR/checkpoints/<ID>/`` as soon as it finishes, and a later run into the same
folder reuses those that finished with the same configuration (``--no-resume`` runs them all again). The report
files are written atomically at the end; figures of an earlier run that are not in this report are removed.

Exit codes: 0 all experiments ran, 1 at least one experiment failed (it is in the report), 2 a usage error
(unknown experiment, an ``--out`` folder that cannot be written, missing data folder or files, unavailable
device), reported in one line without traceback and before any experiment runs; 130 interrupted (Ctrl-C): the
experiments that finished are kept and written to the report.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from . import data as ntdata
from .errors import NtkitError

if TYPE_CHECKING:
    from .experiments import Experiment
    from .report import ExperimentResult

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A problem with the command line or the environment, reported as ``ntkit: error: ...`` with exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ntkit", description="Neural tangent kernels for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rep = sub.add_parser(
        "reproduce",
        help="reproduce the experiments of Lee et al. 2019 and write a report",
        description="Run the paper's experiments and write a self-contained report (index.html, figures/, "
        "results.json).",
    )
    rep.add_argument("--quick", action="store_true", help="small configurations (about 3 minutes on 2 CPU cores)")
    rep.add_argument("--only", metavar="IDS", help="comma-separated experiment ids, e.g. E1,E3 (default: all)")
    rep.add_argument("--dataset", default="digits", choices=ntdata.DATASETS, help="data set (default: digits)")
    rep.add_argument("--data-dir", type=Path, metavar="DIR", help="folder holding the data set's files")
    rep.add_argument("--download", action="store_true", help="download missing data files (into DIR or the cache)")
    rep.add_argument("--no-verify", action="store_true", help="do not check local data files against official MD5s")
    rep.add_argument("--out", type=Path, default=Path("ntkit-report"), metavar="DIR", help="report folder")
    rep.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (default: cpu)")
    rep.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    rep.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.add_argument(
        "--no-resume",
        action="store_true",
        help="run every experiment again (default: reuse those saved in DIR/checkpoints with the same configuration)",
    )
    rep.add_argument("--list", action="store_true", help="list the experiments and exit")
    return parser


def _import_experiments() -> tuple[ModuleType, ModuleType]:
    try:
        from . import experiments, report
    except ModuleNotFoundError as exc:  # matplotlib, scikit-learn or tqdm missing
        raise UsageError(
            f"ntkit reproduce needs the 'repro' extra ({exc.name} is not installed): pip install 'ntkit[repro]'"
        ) from None
    return experiments, report


def _check_environment(args: argparse.Namespace) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was given but CUDA is not available here (torch sees no GPU); use --device cpu."
        )
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {args.threads}.")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError(f"--data-dir {args.data_dir} does not exist or is not a folder.")
    if args.data_dir is not None and args.dataset not in ntdata.FILE_DATASETS:
        print(f"ntkit: note: --data-dir is not used by the {args.dataset} data set.", file=sys.stderr)
    ntdata.ensure_available(args.dataset, args.data_dir, download=args.download, verify=not args.no_verify)


def _check_out(out: Path) -> None:
    """``--out`` must be a folder this process can write to, or one it can create (it is created when the first
    experiment is saved; nothing is created here)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder; pass a folder (it is created if missing).")
    existing = out if out.exists() else next(p for p in out.absolute().parents if p.exists())
    if not existing.is_dir():
        raise UsageError(f"--out {out} cannot be created: {existing} is not a folder; pass another folder.")
    try:
        probe = existing / f".ntkit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        where = "" if existing == out else f" (in {existing})"
        raise UsageError(
            f"--out {out} cannot be written{where}: {exc.strerror or exc}; pass a folder you can create and write to."
        ) from None


def _busy_machine_hint(args: argparse.Namespace) -> str | None:
    """A hint when the cores are oversubscribed and torch's OpenMP threads would spin (docs/reproduce.md)."""
    if args.device != "cpu" or args.threads == 1 or os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return None
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None
    cores = os.cpu_count() or 1
    if torch.get_num_threads() < 2 or load < cores:
        return None
    return (
        f"ntkit: note: this machine is busy (load {load:.1f} on {cores} cores); running with "
        "OMP_WAIT_POLICY=PASSIVE in the environment or with --threads 1 can be several times faster."
    )


def _reproduce(args: argparse.Namespace, argv: list[str]) -> int:
    experiments, report = _import_experiments()
    if args.list:
        for eid in experiments.known_ids():
            exp = experiments.EXPERIMENTS[eid]
            print(f"{eid}  {exp.title}\n    {exp.claim}")
        return EXIT_OK
    selected = experiments.select(args.only)
    _check_out(args.out)
    _check_environment(args)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    hint = _busy_machine_hint(args)
    if hint:
        print(hint, file=sys.stderr)
    mode = "quick" if args.quick else "full"
    ctx = experiments.RunContext(
        seed=args.seed,
        device=args.device,
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        verify=not args.no_verify,
        quick=args.quick,
        progress=not args.no_progress,
    )
    started = datetime.datetime.now().astimezone()
    print(
        f"ntkit reproduce: {', '.join(e.id for e in selected)} ({mode} configuration) on {args.dataset}, "
        f"seed {args.seed}, {report.device_description(args.device)}"
    )
    t0 = time.perf_counter()

    def on_start(i: int, exp: Experiment) -> None:
        print(f"[{i + 1}/{len(selected)}] {exp.id} {exp.title} ...", flush=True)

    store = experiments.CheckpointStore(args.out / "checkpoints", reuse=not args.no_resume)
    finished: list[ExperimentResult] = []

    def on_end(i: int, result: ExperimentResult) -> None:
        reused = " from an earlier run, reused" if result.id in store.reused else ""
        print(f"      {result.label} ({result.runtime_s:.1f} s{reused})", flush=True)
        finished.append(result)

    try:
        results = experiments.run_experiments(selected, ctx, on_start=on_start, on_end=on_end, store=store)
    except KeyboardInterrupt:
        if finished:
            run = _run_record(args, argv, started, t0, report, store.reused, interrupted=True)
            report.write_report(finished, args.out, run=run)
        print(
            f"\nntkit: interrupted; {len(finished)} finished experiment(s) kept in {args.out / 'checkpoints'}"
            + (f" and in the report {args.out / 'index.html'}" if finished else "")
            + ". Run the same command again to continue where it stopped.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    run = _run_record(args, argv, started, t0, report, store.reused, interrupted=False)
    index = report.write_report(results, args.out, run=run)
    print()
    print(report.summary_table(results))
    print(f"\nReport: {index.resolve()}  (figures in {args.out / 'figures'}, numbers in {args.out / 'results.json'})")
    failed = [r.id for r in results if r.status != "ok"]
    if failed:
        print(
            f"ntkit: {len(failed)} experiment(s) failed: {', '.join(failed)} (tracebacks in the report).",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _run_record(
    args: argparse.Namespace,
    argv: list[str],
    started: datetime.datetime,
    t0: float,
    report: ModuleType,
    reused: list[str],
    *,
    interrupted: bool,
) -> dict[str, object]:
    """How the report was made (its "run" section and results.json's ``run``)."""
    return {
        "command": "ntkit " + " ".join(shlex.quote(a) for a in argv),
        "mode": "quick" if args.quick else "full",
        "dataset": args.dataset,
        "seed": args.seed,
        "device": args.device,
        "started": started.isoformat(timespec="seconds"),
        "total_runtime_s": time.perf_counter() - t0,
        "environment": report.collect_environment(args.device),
        "reused": list(reused),
        "interrupted": interrupted,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ntkit`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        return _reproduce(args, argv)
    except (UsageError, NtkitError) as exc:
        print(f"ntkit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nntkit: interrupted; no report was written.", file=sys.stderr)
        return EXIT_INTERRUPTED

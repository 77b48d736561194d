"""The neural-tangents interpreter of the side-by-side benchmarks: one option, one rule.

Benchmarks that compare against google/neural-tangents run it in a separate Python (JAX and neural-tangents
0.6.5 do not install next to current torch and numpy). That interpreter is given by ``--nt-python PATH``,
default the environment variable ``NT_PYTHON``; without either (or if the path is not an executable file) the
neural-tangents columns are skipped with a note. benchmarks/README.md says how to build the interpreter.
"""

from __future__ import annotations

import argparse
import os


def add_nt_python_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--nt-python`` (default ``$NT_PYTHON``) to a benchmark's command line."""
    parser.add_argument(
        "--nt-python",
        default=os.environ.get("NT_PYTHON"),
        metavar="PATH",
        help="Python interpreter with neural-tangents 0.6.5 (default: $NT_PYTHON); without it the "
        "neural-tangents columns are skipped (benchmarks/README.md says how to build one)",
    )


def nt_python(args: argparse.Namespace) -> str | None:
    """The interpreter to run neural-tangents with, or None (after printing why) to skip its columns."""
    path = args.nt_python
    if not path:
        print("neural-tangents columns skipped: no --nt-python and no NT_PYTHON (see benchmarks/README.md)")
        return None
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        print(f"neural-tangents columns skipped: --nt-python / NT_PYTHON {path!r} is not an executable file")
        return None
    return path


def nt_env() -> dict[str, str]:
    """The environment of a neural-tangents worker process: JAX on CPU, and nothing of this project's."""
    return {
        "JAX_PLATFORMS": "cpu",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
    }

"""The adapters' dependencies are optional: `import ntkit` never imports them, and importing an adapter without
its dependency is a MissingDependencyError naming the extra. Each case runs in a fresh interpreter (the test
process has already imported everything)."""

import subprocess
import sys

import pytest

ADAPTER_PACKAGES = ("sklearn", "gpytorch", "botorch", "linear_operator")


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_ntkit_imports_no_adapter_dependency():
    result = run(
        "import sys, ntkit, ntkit.predict, ntkit.nn\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {ADAPTER_PACKAGES!r})\n"
        "print(bad)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("adapter", ["sklearn", "gpytorch"])
def test_missing_dependency_names_the_extra(adapter):
    # sys.modules[name] = None makes `import name` fail as if the package were not installed
    result = run(
        f"import sys; sys.modules[{adapter!r}] = None\n"
        "from ntkit.errors import MissingDependencyError\n"
        "try:\n"
        f"    import ntkit.{adapter}\n"
        "except MissingDependencyError as exc:\n"
        "    print('raised', isinstance(exc, ImportError), exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("raised True")
    assert f"pip install 'ntkit[{adapter}]'" in result.stdout

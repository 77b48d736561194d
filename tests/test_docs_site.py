"""The documentation site builds (`mkdocs build --strict`, as `make docs`: a broken link, a page missing from the
navigation or a docstring the API reference cannot render fails it), and its API reference (docs/api/) documents
every public name: each entry of the ``__all__`` of every module with a reference page has an anchor there."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p.stem for p in (ROOT / "docs" / "api").glob("*.md"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_every_module_has_a_reference_page():
    assert set(PAGES) == {"ntkit", "nn", "predict", "scale", "approx", "sklearn", "gpytorch", "errors", "data",
                          "experiments", "report"}  # fmt: skip


@pytest.mark.parametrize("page", PAGES)
def test_reference_documents_every_public_name(site: Path, page: str):
    module_name = "ntkit" if page == "ntkit" else f"ntkit.{page}"
    module = importlib.import_module(module_name)
    html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
    public = [
        name for name in module.__all__
        if name != "__version__" and not isinstance(getattr(module, name), types.ModuleType)
    ]  # fmt: skip
    # a function named like the module that defines it (ntkit.linearize.linearize) is documented under that path
    missing = [
        name for name in public
        if f'id="{module_name}.{name}"' not in html and f'id="{module_name}.{name}.{name}"' not in html
    ]  # fmt: skip
    assert not missing, f"docs/api/{page}.md does not document {missing}"

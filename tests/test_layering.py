"""The package layering: imports run one way, ntkit.gaussian -> ntkit.infinite -> ntkit.nn, and every
ntkit.nn layer carries its own kernel rule (docs/infinite.md, "Layers").

The imports are read from the source with ``ast`` (module level and inside functions alike), so a new upward
import fails here whether or not it would create a cycle at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from torch import nn

import ntkit.nn as nnk
from ntkit.nn.layer import KernelLayer

SRC = Path(__file__).resolve().parents[1] / "src"

#: ntkit modules that every layer may import: errors and the small shared helpers, which import no package.
FOUNDATION = ("ntkit.errors", "ntkit._memory", "ntkit._validation", "ntkit._derivatives", "ntkit._progress")

#: For each package, the ntkit packages it may import besides itself and FOUNDATION (lower layers only).
ALLOWED = {
    "ntkit.gaussian": (),
    "ntkit.infinite": ("ntkit.gaussian",),
}


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, src: Path = SRC) -> set[str]:
    """Absolute names of every module ``path`` (under ``src``) imports, relative imports resolved; for
    ``from a import b`` both ``a`` and ``a.b`` (b may be a module)."""
    module = _module_name(path, src)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                name = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                name = node.module
            if node.module:  # `from .. import x` imports ntkit.x, not all of ntkit
                found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package):
    allowed = (package, *ALLOWED[package], *FOUNDATION)
    files = sorted((SRC / package.replace(".", "/")).glob("*.py"))
    assert files, f"no modules found for {package}"
    upward = {
        f"{_module_name(path)} imports {name}"
        for path in files
        for name in _imports(path)
        if _within(name, "ntkit") and not any(_within(name, a) for a in allowed)
    }
    assert not upward, f"{package} may import only {allowed}: " + "; ".join(sorted(upward))


def test_the_import_reader_sees_relative_and_nested_imports(tmp_path):
    # A check that cannot fail is no check: upward imports inside a function, relative or not, must be found.
    fake = tmp_path / "ntkit" / "gaussian"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text(
        "def f():\n    from .. import nn\n    from ..infinite.transforms import x\n    import ntkit.predict\n"
    )
    found = _imports(fake / "bad.py", tmp_path)
    assert {"ntkit.nn", "ntkit.infinite.transforms", "ntkit.predict"} <= found
    assert "ntkit" not in found


def _layer_classes() -> list[type]:
    return [obj for name in nnk.__all__ if isinstance(obj := getattr(nnk, name), type) and issubclass(obj, nn.Module)]


@pytest.mark.parametrize("cls", _layer_classes(), ids=lambda c: c.__name__)
def test_every_nn_layer_has_its_own_kernel_rule(cls):
    rule = getattr(cls, "kernel_transform", None)
    assert rule is not None, f"ntkit.nn.{cls.__name__} has no kernel_transform"
    assert rule is not KernelLayer.kernel_transform, f"ntkit.nn.{cls.__name__} keeps the abstract kernel_transform"


# ------------------------------------------------------------------ privacy (docs/development.md, "Conventions")

MODULES = sorted((SRC / "ntkit").rglob("*.py"))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def underscored_modules(modules: list[Path], src: Path = SRC) -> list[str]:
    """Modules inside a subpackage whose name starts with an underscore (only ntkit's top level has them)."""
    return [
        str(p.relative_to(src))
        for p in modules
        if p.parent != src / "ntkit" and _is_private(p.stem) and p.name != "__init__.py"
    ]


def private_imports(modules: list[Path], src: Path = SRC) -> list[str]:
    """Every ``from m import _name`` (module level or inside a function): a private name crossing modules.
    Importing one of ntkit's top-level private modules itself (``from .. import _memory``) is allowed."""
    top_level_private = {p.stem for p in (src / "ntkit").glob("_*.py") if p.name != "__init__.py"}
    found = []
    for p in modules:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            for alias in node.names:
                if _is_private(alias.name) and not (node.module in (None, "ntkit") and alias.name in top_level_private):
                    found.append(f"{p.relative_to(src)} imports {alias.name} from {node.module or '.'}")
    return found


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def wrong_all_entries(modules: list[Path], src: Path = SRC) -> list[str]:
    """``__all__`` entries that are private, or (outside a package's ``__init__``, which re-exports its API)
    not defined in that module itself."""
    wrong = []
    for p in modules:
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                listed = ast.literal_eval(node.value)
                wrong += [f"{p.relative_to(src)}: {n} is private" for n in listed if _is_private(n)]
                if p.name != "__init__.py":
                    own = _defined_names(tree)
                    wrong += [f"{p.relative_to(src)}: {n} is not defined there" for n in listed if n not in own]
    return wrong


def test_modules_inside_subpackages_carry_no_underscore():
    # ntkit's top level underscores its shared helpers (ntkit._memory); inside a subpackage its __init__ says what
    # is public, so the modules themselves carry no underscore
    assert not underscored_modules(MODULES)


def test_no_private_name_is_imported_from_another_module():
    assert not private_imports(MODULES)


def test_all_lists_the_module_own_public_names():
    assert not wrong_all_entries(MODULES)


def test_the_privacy_checks_can_fail(tmp_path):
    pkg = tmp_path / "ntkit" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "ntkit" / "_helper.py").write_text("")
    (pkg / "_hidden.py").write_text("")
    (pkg / "mod.py").write_text(
        "from .. import _helper\nfrom ._hidden import _secret\n__all__ = ['f', '_g', 'elsewhere']\n"
        "def f(): pass\ndef _g(): pass\n"
    )
    modules = sorted((tmp_path / "ntkit").rglob("*.py"))
    assert underscored_modules(modules, tmp_path) == [str(Path("ntkit/sub/_hidden.py"))]
    assert private_imports(modules, tmp_path) == ["ntkit/sub/mod.py imports _secret from _hidden"]
    assert sorted(wrong_all_entries(modules, tmp_path)) == [
        "ntkit/sub/mod.py: _g is private",
        "ntkit/sub/mod.py: elsewhere is not defined there",
    ]

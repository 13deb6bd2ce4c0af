"""The import rule of docs/architecture.md: each layer imports only the layers below it.

Every ``import`` and ``from ... import`` in the package counts, at module level or inside a function
(a lazy import is still a dependency), relative ones resolved against the importing module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Bottom to top; a layer may import itself and any layer before it, never one after it.
LAYERS = (
    "effspec.support",
    "effspec.core",
    "effspec.emit",
    "effspec.weights",
    "effspec.backends",
    "effspec.equivalence",
    "effspec.tools",
    "effspec.cli",
)

#: Folders of the source tree and the package names they are installed as (pyproject.toml).
SOURCES = {"effspec": ROOT / "effspec", "effspec.backends": ROOT / "backends"}

#: The compile path (load, validate, scale, lower, verify, analyse, emit) never imports these.
HEAVY = ("torch", "tensorflow", "keras", "jax", "numpy")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            if "templates" in path.parts:
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imports(name: str, path: Path) -> list[tuple[int, str]]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "effspec":  # `from effspec import __version__`: the package root
                found += [(node.lineno, f"effspec.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
    return found


def layer(name: str) -> int | None:
    for index, prefix in enumerate(LAYERS):
        if name == prefix or name.startswith(prefix + "."):
            return index
    return None


def test_every_module_belongs_to_a_layer():
    loose = [name for name in modules() if layer(name) is None and name not in ("effspec", "effspec.__main__")]
    assert loose == [], f"modules outside the layers of docs/architecture.md: {loose}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_a_module_imports_only_layers_below_it(name):
    path = modules()[name]
    own = layer(name)
    if own is None:
        return
    upward = [
        f"{path.relative_to(ROOT)}:{line}: {target} ({LAYERS[layer(target)]})"
        for line, target in imports(name, path)
        if target.startswith("effspec.") and layer(target) is not None and layer(target) > own
    ]
    assert upward == [], "imports of a higher layer:\n" + "\n".join(upward)


@pytest.mark.parametrize("name", [n for n in sorted(modules()) if layer(n) in (0, 1)])
def test_support_and_core_never_import_a_framework(name):
    """Support and core run on every compile: no torch/TF/Keras/JAX/numpy even lazily (the one
    exception is support/vision.py and support/images.py, which the trainers and export use)."""
    if name in ("effspec.support.vision", "effspec.support.images", "effspec.support.cpus"):
        pytest.skip("runtime support for the trainers and export, never imported by the compile path")
    path = modules()[name]
    heavy = [f"{line}: {target}" for line, target in imports(name, path) if target.split(".")[0] in HEAVY]
    assert heavy == [], f"{path.relative_to(ROOT)} imports a framework: {heavy}"


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a core module importing a tool is caught."""
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from effspec.tools.scale import run\n")
    found = imports("effspec.core.fake", fake)
    assert (2, "effspec.tools.scale") in found and layer("effspec.tools.scale") > layer("effspec.core.fake")

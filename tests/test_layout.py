"""The shape of the code: a shared core, steps that stand side by side, one obvious place for each thing.

Read from the source (every import, also those inside functions), so a new cross-step import fails here."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gandissect"

# what each layer may import from gandissect (a module's own layer included, except between steps)
CORE = {"gandissect", "gandissect._compat", "gandissect.errors", "gandissect.io", "gandissect.checkpoint",
        "gandissect.config", "gandissect.defaults", "gandissect.core"}
LIBRARIES = ("gandissect.models", "gandissect.data", "gandissect.metrics", "gandissect.report")
COMPOSERS = ("gandissect.pipelines", "gandissect.demo", "gandissect.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def gandissect_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gandissect"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from gandissect.steps import x`
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("gandissect"))
    return found


def real_modules(names: set[str]) -> set[str]:
    """Keep the names that are modules or packages of gandissect (not functions imported from them)."""
    def exists(name: str) -> bool:
        rel = Path(*name.split(".")[1:]) if "." in name else Path()
        return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()
    return {name for name in names if exists(name)}


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


MODULES = {module_name(p): real_modules(gandissect_imports(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_package_was_read():
    assert "gandissect.steps.repair" in MODULES and "gandissect.core.hooks" in MODULES
    assert "gandissect.steps.dissect" in MODULES["gandissect.pipelines"]  # the graph sees function-level imports


def step_of(module: str) -> str:
    """The step a module belongs to: ``gandissect.steps.<step>`` (a module, or a package of modules)."""
    return ".".join(module.split(".")[:3])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if within(m, ("gandissect.steps",))))
def test_a_step_imports_no_other_step(module):
    others = {name for name in MODULES[module] if within(name, ("gandissect.steps",) + COMPOSERS)
              and name != "gandissect.steps" and step_of(name) != step_of(module)}
    assert not others, f"{module} imports {sorted(others)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if within(m, LIBRARIES)))
def test_models_data_metrics_and_reports_import_only_the_core_and_each_other(module):
    bad = {name for name in MODULES[module] if not (name in CORE or within(name, ("gandissect.core",) + LIBRARIES))}
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m in CORE or within(m, ("gandissect.core",))))
def test_the_core_imports_only_the_core(module):
    bad = {name for name in MODULES[module] if not (name in CORE or within(name, ("gandissect.core",)))}
    assert not bad, f"{module} imports {sorted(bad)}"


# one coherent thing each: the config schemas of every command, read by one loader; the parser of every command
LONG_BUT_ONE_THING = {"config.py", "cli.py"}


def test_no_source_file_is_a_tower():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py") if p.name not in LONG_BUT_ONE_THING}
    assert max(sizes.values()) <= 420, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_default_paths_live_in_one_place():
    literal = [f"{p.relative_to(PACKAGE)}" for p in PACKAGE.rglob("*.py") if p.name != "defaults.py"
               and ("\"checkpoints/" in p.read_text() or "\"experiments/" in p.read_text())]
    assert not literal, f"default paths written outside gandissect/defaults.py: {literal}"


ARCHITECTURES = ("gandissect.models.progan", "gandissect.models.stylegan2", "gandissect.models.legacy")
GENERATOR_USERS = ("gandissect.steps.dissect", "gandissect.steps.intervene", "gandissect.steps.repair",
                   "gandissect.steps.paint", "gandissect.steps.artifacts", "gandissect.steps.evaluate",
                   "gandissect.steps.fid", "gandissect.pipelines")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if within(m, GENERATOR_USERS)))
def test_the_steps_know_no_architecture(module):
    """Dissect, intervene, repair and paint read generators through gandissect.models.generators only (the generator
    contract); only training builds a particular architecture."""
    bad = {name for name in MODULES[module] if within(name, ARCHITECTURES)}
    assert not bad, f"{module} imports {sorted(bad)}"

"""The package's layers: a module imports only from its own layer or the ones below it, and no
two modules import each other, directly or round a circle.

Read from the source with ast, every import counted (those inside functions too: a lazy import
is still a dependency). The top-level `gptdraw/__init__.py` is the public API's façade over
every layer and is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gptdraw"

LAYERS: list[tuple[str, ...]] = [
    # foundations: precision and devices, files (written whole, read as untrusted, locked), ids,
    # the sequence, the caption tokenizer
    ("gptdraw.runtime", "gptdraw.files", "gptdraw.untrusted_files", "gptdraw.run_lock", "gptdraw.repo_id",
     "gptdraw.sequence", "gptdraw.captions", "gptdraw.schedule"),
    ("gptdraw.data",),  # image–caption pairs → shards (decoding, sources, the shapes generator)
    ("gptdraw.images",),
    ("gptdraw.vq",),  # the image tokenizer
    ("gptdraw.gpt",),  # the GPT: config, model, sampler, LoRA, optimiser, checkpoints
    ("gptdraw.model_dir",),  # the model-directory format
    ("gptdraw.hub", "gptdraw.gpt.train", "gptdraw.gpt.finetune"),  # what writes and shares model directories
    ("gptdraw.pipeline",),
    ("gptdraw.editing", "gptdraw.eval"),
    ("gptdraw.apps",),
    ("gptdraw.cli",),
]
"""Lowest first. A module belongs to the longest name here that it starts with."""


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str, layers=LAYERS) -> int:
    matches = [(len(name), index) for index, names in enumerate(layers) for name in names
               if module == name or module.startswith(name + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The gptdraw modules that the file imports ("from gptdraw import schedule" is gptdraw.schedule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("gptdraw")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("gptdraw"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return found - {"gptdraw"}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(path, package.parent): path for path in package.rglob("*.py")}
    paths.pop("gptdraw", None)  # the façade
    return {module: imports_of(path, set(paths)) for module, path in paths.items()}


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    return sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                  if layer_of(target, layers) > layer_of(module, layers))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, found by depth-first search (each reported from where it was entered)."""
    found, state = [], {}

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_no_module_imports_from_a_layer_above_it():
    assert upward_imports(import_graph()) == []


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_a_planted_upward_import_and_circle_are_caught(tmp_path):
    package = tmp_path / "gptdraw"
    (package / "gpt").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sequence.py").write_text("def f():\n    from gptdraw.pipeline import GPTDrawPipeline\n")
    (package / "pipeline.py").write_text("from gptdraw import sequence\n")
    graph = import_graph(package)
    assert upward_imports(graph) == ["gptdraw.sequence imports gptdraw.pipeline"]
    assert circles(graph) == [["gptdraw.pipeline", "gptdraw.sequence", "gptdraw.pipeline"]]


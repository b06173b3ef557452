"""The public API: what `gptdraw` exports, loaded lazily; and no private name crosses a module."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import gptdraw

PACKAGE = Path(gptdraw.__file__).parent


def test_every_exported_name_resolves_to_its_object():
    from gptdraw.pipeline import GPTDrawPipeline

    assert gptdraw.GPTDrawPipeline is GPTDrawPipeline
    for name in gptdraw.__all__:
        assert getattr(gptdraw, name) is not None, name
    assert set(gptdraw.__all__) <= set(dir(gptdraw))


def test_importing_gptdraw_loads_no_torch_until_a_name_is_used():
    probe = ("import json, sys, gptdraw; before = 'torch' in sys.modules; gptdraw.TrainConfig; "
             "middle = 'torch' in sys.modules; gptdraw.GPTDrawPipeline; "
             "print(json.dumps([before, middle, 'torch' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)  # a hang guard
    assert done.returncode == 0, done.stderr
    # The configs are torch-free; the pipeline is not.
    assert json.loads(done.stdout.splitlines()[-1]) == [False, False, True]


def test_an_unknown_name_is_an_attribute_error():
    try:
        gptdraw.NoSuchThing
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("gptdraw.NoSuchThing resolved")


def private_imports(package: Path = PACKAGE) -> list[str]:
    """`from gptdraw.x import _name` anywhere in the package: a private name used outside its module."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gptdraw"):
                found += [f"{path.relative_to(package.parent)} imports {node.module}.{alias.name}"
                          for alias in node.names if alias.name.startswith("_")]
    return found


def test_no_private_name_is_imported_across_modules():
    assert private_imports() == []


def test_a_planted_private_import_is_found(tmp_path):
    (tmp_path / "gptdraw").mkdir()
    (tmp_path / "gptdraw" / "a.py").write_text("from gptdraw.b import _helper\n")
    assert private_imports(tmp_path / "gptdraw") == ["gptdraw/a.py imports gptdraw.b._helper"]

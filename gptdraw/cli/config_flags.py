"""Command-line flags made from a config dataclass, so that a field cannot exist without a flag.

Each field `name` becomes `--name-with-dashes`, typed from its annotation, with the field's
docstring (the string literal under it) or its trailing comment as help. Flags default to None,
so that only what is typed overrides the preset or the `--config` file:

    preset  <  --config FILE (YAML or JSON, e.g. the config.json a run wrote)  <  flags

Reading the docstrings parses the module's source (no torch import), so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from gptdraw.runtime import PRECISIONS, canonical_precision
from gptdraw.untrusted_files import JSON_LIMIT, read_text


def field_help(cls: type) -> dict[str, str]:
    """{field: its docstring or trailing comment} for a dataclass, read from its source."""
    source = inspect.getsource(inspect.getmodule(cls))
    lines = source.splitlines()
    helps: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.ClassDef) and node.name == cls.__name__):
            continue
        body = node.body
        for index, statement in enumerate(body):
            if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
                continue
            name = statement.target.id
            following = body[index + 1] if index + 1 < len(body) else None
            if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                helps[name] = " ".join(following.value.value.split())
            elif "#" in lines[statement.end_lineno - 1]:
                helps[name] = lines[statement.end_lineno - 1].split("#", 1)[1].strip()
    return helps


def _flag_options(annotation: Any) -> dict:
    """argparse options for a field's type."""
    origin = get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        choices = get_args(annotation)
        if choices == PRECISIONS:  # the one precision vocabulary, with its aliases (runtime.py)
            return {"choices": choices, "type": canonical_precision}
        return {"choices": choices, "type": type(choices[0])}
    if origin is tuple:
        items = get_args(annotation)
        if len(items) == 2 and items[1] is Ellipsis:
            return {"nargs": "*", "type": items[0], "metavar": items[0].__name__.upper()}
        return {"nargs": len(items), "type": items[0], "metavar": items[0].__name__.upper()}
    if origin in (typing.Union, types.UnionType):  # X | None
        inner = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _flag_options(inner[0])
    if annotation in (int, float, str):
        return {"type": annotation}
    raise TypeError(f"no flag for a field of type {annotation!r}")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                     choices: dict[str, list] | None = None, title: str | None = None) -> None:
    """One flag per field of the dataclass `cls`, less `skip`; `choices` names the allowed
    values of fields whose type does not (a preset name, say)."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    old_names: dict[str, list[str]] = {}  # a renamed field keeps its old flag as an alias
    for old, new in getattr(cls, "RENAMED", {}).items():
        old_names.setdefault(new, []).append(old)
    group = parser.add_argument_group(title or f"{cls.__name__} fields (default: the preset's, then --config's)")
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        options = _flag_options(hints[field.name])
        if field.name in (choices or {}):
            options["choices"] = choices[field.name]
        names = [f"--{name.replace('_', '-')}" for name in (field.name, *old_names.get(field.name, ()))]
        group.add_argument(*names, dest=field.name, default=None,
                           help=helps.get(field.name, "").replace("%", "%%"), **options)  # argparse formats help with %


def given_fields(args: argparse.Namespace, cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of `cls` whose flags were given, converted to the field types (tuples)."""
    hints = typing.get_type_hints(cls)
    given = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name, None)
        if field.name in skip or value is None:
            continue
        given[field.name] = tuple(value) if get_origin(hints[field.name]) is tuple else value
    return given


def read_config_file(path: str | Path) -> dict:
    """A config file (YAML or JSON) as a dict; a clear error for anything else. It is read only as a
    regular file under gptdraw.untrusted_files.JSON_LIMIT (4 MiB), so /dev/zero or a FIFO is refused at once."""
    path = Path(path)
    try:
        text = read_text(path, JSON_LIMIT, what="config file")
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # yaml and json raise their own kinds (and RecursionError when nested too deep)
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise ValueError(f"config file {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {reason}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of field names to values")
    return data


def apply_config_file(base, data: dict, path: str | Path = "the config file"):
    """`base` (a dataclass instance) with the fields that `data` names replaced; unknown names
    are refused, naming them."""
    renamed = getattr(type(base), "RENAMED", {})
    data = {renamed.get(name, name): value for name, value in data.items()}
    known = {field.name for field in dataclasses.fields(base)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)} for {type(base).__name__}")
    hints = typing.get_type_hints(type(base))
    values = {name: tuple(value) if get_origin(hints[name]) is tuple and isinstance(value, list) else value
              for name, value in data.items()}
    try:  # the config class checks every value; say which file the refused one came from
        return dataclasses.replace(base, **values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None

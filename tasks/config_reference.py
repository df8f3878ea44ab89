"""The configuration reference, generated from the typed config (`tasks.config.PipelineConfig`).

`python -m tasks.config_reference` writes docs/configuration.md (one section per top-level config
section, a table per model: dotted key, type, default, description) and docs/pipeline.schema.json
(the JSON Schema of a pipeline YAML file, for editors). `--check` writes nothing and exits 1 when
either file differs from what would be generated.

Descriptions come from the pydantic `Field(description=...)` of a field and from the comments next to
its declaration in tasks/config.py (the comment lines right above it, and a comment at the end of its
line); a model's docstring introduces its table. Only tasks.config, pydantic and the standard library
are imported, so this runs without Airflow, MLflow or torch.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import inspect
import io
import json
import re
import sys
import tokenize
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Discriminator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tasks import config as config_module
from tasks.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
MARKDOWN_PATH = Path("docs/configuration.md")
SCHEMA_PATH = Path("docs/pipeline.schema.json")
COMMAND = "python -m tasks.config_reference"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


# --- what the source file says next to each field -------------------------------------------------

@dataclass(frozen=True)
class _SourceNotes:
    comments: dict[tuple[str, str], str]  # (class name, field name) -> comment text
    docstrings: dict[tuple[str, str], str]  # attribute docstrings (a string right after the field)


def _source_notes(module: types.ModuleType) -> _SourceNotes:
    source = inspect.getsource(module)
    comment_only: dict[int, str] = {}
    trailing: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        line_no = token.start[0]
        text = token.string.lstrip("#").strip()
        if token.line[: token.start[1]].strip():
            trailing[line_no] = text
        else:
            comment_only[line_no] = text
    comments: dict[tuple[str, str], str] = {}
    docstrings: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for index, statement in enumerate(node.body):
            if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
                continue
            name = statement.target.id
            above: list[str] = []
            line_no = statement.lineno - 1
            while line_no in comment_only:
                above.insert(0, comment_only[line_no])
                line_no -= 1
            end = statement.end_lineno or statement.lineno
            after = [trailing[n] for n in range(statement.lineno, end + 1) if n in trailing]
            text = " ".join(part for part in above + after if part)
            if text:
                comments[(node.name, name)] = text
            following = node.body[index + 1] if index + 1 < len(node.body) else None
            if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docstrings[(node.name, name)] = inspect.cleandoc(following.value.value)
    return _SourceNotes(comments, docstrings)


def _declaring_class(model: type[BaseModel], field: str) -> type:
    for klass in model.__mro__:
        if field in vars(klass).get("__annotations__", {}):
            return klass
    return model


# --- rendering types, defaults and constraints ----------------------------------------------------

def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold, in declaration order (through Optional, list, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for argument in typing.get_args(annotation):
        for model in _models_in(argument):
            if model not in found:
                found.append(model)
    return found


def _discriminated(annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Annotated and any(
            isinstance(meta, Discriminator) for meta in annotation.__metadata__):
        return True
    return any(_discriminated(argument) for argument in typing.get_args(annotation))


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        if any(isinstance(meta, Discriminator) for meta in annotation.__metadata__):
            return "source"
        return _type_name(arguments[0])
    if origin is typing.Literal:
        return " | ".join(json.dumps(value) for value in arguments)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(argument) for argument in arguments)
    if origin is list:
        return f"list[{_type_name(arguments[0])}]"
    if origin is dict:
        return f"dict[{_type_name(arguments[0])}, {_type_name(arguments[1])}]"
    if annotation is dt.date:
        return "date"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _constraints(info: FieldInfo) -> list[str]:
    found: list[str] = []
    for meta in info.metadata:
        for attribute, symbol in _BOUNDS:
            value = getattr(meta, attribute, None)
            if value is not None:
                found.append(f"{symbol} {value}")
        min_length = getattr(meta, "min_length", None)
        if min_length is not None:
            is_list = typing.get_origin(info.annotation) is list
            found.append(f"at least {min_length} item{'s' if min_length != 1 else ''}" if is_list
                         else f"at least {min_length} characters")
        max_length = getattr(meta, "max_length", None)
        if max_length is not None:
            found.append(f"at most {max_length}")
        pattern = getattr(meta, "pattern", None)
        if pattern is not None:
            found.append(f"matches `{pattern}`")
    return found


def _default(info: FieldInfo) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(the defaults below)"
    return f"`{json.dumps(_jsonable(value))}`"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return value


# --- Markdown ---------------------------------------------------------------------------------------

def _escape(text: str) -> str:
    """A table cell: pipes escaped everywhere, `<`/`>` outside code spans (so `<EMAIL>` stays visible)."""
    pieces = text.replace("|", "\\|").split("`")
    return "`".join(piece if index % 2 else piece.replace("<", "&lt;").replace(">", "&gt;")
                    for index, piece in enumerate(pieces))


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    first_word = re.match(r"[\w.=]+", text)
    if first_word and first_word.group().isalpha() and first_word.group().islower():
        text = text[0].upper() + text[1:]  # "per process", never "torch.compile" or "next_link"
    return text if text[-1] in ".!?:)" else text + "."


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


@dataclass(frozen=True)
class _Table:
    title: str
    prefix: str  # dotted key of the model's fields, e.g. "crawl.sources[]"
    model: type[BaseModel]
    level: int
    note: str = ""


class _Renderer:
    def __init__(self) -> None:
        self.notes = _source_notes(config_module)

    def description(self, model: type[BaseModel], name: str, info: FieldInfo) -> str:
        owner = _declaring_class(model, name).__name__
        parts = [self.notes.comments.get((owner, name), ""), self.notes.docstrings.get((owner, name), ""),
                 info.description or ""]
        return " ".join(_sentence(part) for part in parts if part)

    def table(self, table: _Table) -> tuple[list[str], list[_Table]]:
        """The Markdown of one model's table, and the nested models' tables to render after it."""
        lines = [f"{'#' * table.level} {table.title}", ""]
        docstring = vars(table.model).get("__doc__")  # the model's own, never an inherited one
        if docstring:
            lines += [line for paragraph in inspect.cleandoc(docstring).split("\n\n")
                      for line in (" ".join(paragraph.split()), "")]
        if table.note:
            lines += [table.note, ""]
        if table.model.model_config.get("extra") == "allow":
            lines += ["Keys not listed here are accepted and passed on as they are.", ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        nested: list[_Table] = []
        fields = table.model.model_fields
        # `name` and `kind` first (sources inherit them), then declaration order.
        order = [name for name in ("name", "kind") if name in fields] + [
            name for name in fields if name not in ("name", "kind")]
        for name in order:
            info = fields[name]
            key_name = info.alias or name
            key = f"{table.prefix}.{key_name}" if table.prefix else key_name
            type_text = _type_name(info.annotation)
            constraints = _constraints(info)
            type_cell = f"`{type_text}`" + (f" ({', '.join(constraints)})" if constraints else "")
            description = self.description(table.model, name, info)
            models = _models_in(info.annotation)
            if _discriminated(info.annotation):
                kinds = ", ".join(f"[`{_kind(model)}`](#{_anchor(_kind_title(key, model))})" for model in models)
                default_kind = [_kind(model) for model in models if not model.model_fields["kind"].is_required()]
                picked = f" (no `kind`: `{default_kind[0]}`)" if default_kind else ""
                description = _sentence(f"one source per entry, picked by `kind`{picked}: {kinds}") + (
                    f" {description}" if description else "")
                item_prefix = f"{key}[]" if typing.get_origin(info.annotation) is list else key
                nested += [_Table(_kind_title(key, model), item_prefix, model, table.level + 1) for model in models]
            elif models:
                link = f"[`{key}`](#{_anchor(_nested_title(key))})"
                description = (f"{description} " if description else "") + f"See {link}."
                nested += [_Table(_nested_title(key), key, model, table.level + 1) for model in models]
            lines.append(f"| `{key}` | {_escape(type_cell)} | {_escape(_default(info))} | {_escape(description)} |")
        lines.append("")
        return lines, nested

    def tables(self, first: _Table) -> list[str]:
        lines: list[str] = []
        pending = [first]
        while pending:
            table = pending.pop(0)
            table_lines, nested = self.table(table)
            lines += table_lines
            pending = nested + pending
        return lines


def _kind(model: type[BaseModel]) -> str:
    annotation = model.model_fields["kind"].annotation
    return str(typing.get_args(annotation)[0])


def _kind_title(key: str, model: type[BaseModel]) -> str:
    return f"`{key}[]` kind `{_kind(model)}`"


def _nested_title(key: str) -> str:
    return f"`{key}`"


def _sections() -> tuple[list[tuple[str, FieldInfo]], list[tuple[str, FieldInfo]]]:
    """Top-level scalar fields, and the fields that are sections (models), both in declaration order."""
    scalars: list[tuple[str, FieldInfo]] = []
    sections: list[tuple[str, FieldInfo]] = []
    for name, info in PipelineConfig.model_fields.items():
        (sections if _models_in(info.annotation) else scalars).append((info.alias or name, info))
    return scalars, sections


def render_markdown() -> str:
    """docs/configuration.md: every key of a pipeline config, section by section."""
    renderer = _Renderer()
    scalars, sections = _sections()
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from tasks/config.py by `{COMMAND}`; do not edit by hand. -->",
        "",
        "A pipeline is one YAML file, validated by pydantic (`tasks/config.py`, `load_config`). `${VAR}` in a",
        "string expands from the environment; `--set section.key=value` overrides are parsed as YAML scalars and",
        "validated again. Unknown keys are errors. Every step receives the whole config; its hash goes into",
        "every manifest and MLflow run. Defaults are shown as JSON; \"required\" keys have none.",
        "",
        "Editors can check a config against [`pipeline.schema.json`](pipeline.schema.json) (JSON Schema",
        "2020-12), e.g. with a first line `# yaml-language-server: $schema=../docs/pipeline.schema.json`",
        "(the path relative to the YAML file).",
        "",
        "Sections: " + ", ".join(f"[`{key}`](#{_anchor(f'`{key}`')})" for key, _ in sections) + ".",
        "",
        "## Top level",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for key, info in scalars:
        constraints = _constraints(info)
        type_cell = f"`{_type_name(info.annotation)}`" + (f" ({', '.join(constraints)})" if constraints else "")
        description = renderer.description(PipelineConfig, _field_name(key), info)
        lines.append(f"| `{key}` | {_escape(type_cell)} | {_escape(_default(info))} | {_escape(description)} |")
    lines.append("")
    for key, info in sections:
        model = _models_in(info.annotation)[0]
        note = f"The `{key}` section is required." if info.is_required() else ""
        lines += renderer.tables(_Table(f"`{key}`", key, model, 2, note))
    return "\n".join(lines).rstrip("\n") + "\n"


def _field_name(key: str) -> str:
    for name, info in PipelineConfig.model_fields.items():
        if (info.alias or name) == key:
            return name
    return key


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a pipeline config file (pydantic's, validation mode, keys by alias)."""
    return PipelineConfig.model_json_schema()


def render_schema() -> str:
    """docs/pipeline.schema.json: the schema with its dialect named, keys sorted, one trailing newline."""
    schema = {"$schema": SCHEMA_DIALECT, **json_schema()}
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generated() -> dict[Path, str]:
    """Each generated file (relative to the repository root) and the text it must have."""
    return {MARKDOWN_PATH: render_markdown(), SCHEMA_PATH: render_schema()}


def stale(root: Path = REPO) -> list[Path]:
    """The generated files under `root` that are missing or differ from what would be generated."""
    found = []
    for path, text in generated().items():
        target = root / path
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            found.append(path)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is stale")
    parser.add_argument("--root", type=Path, default=REPO, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale(args.root)
        for path in outdated:
            problem = ("is stale: it differs from what tasks/config.py generates" if (args.root / path).exists()
                       else "is missing")
            print(f"{path} {problem}; regenerate it with `{COMMAND}`", file=sys.stderr)
        return 1 if outdated else 0
    for path, text in generated().items():
        target = args.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

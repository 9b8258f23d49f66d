"""MkDocs hooks (mkdocs.yml `hooks:`): the manual's reference pages written from the code at
build time, so each fact is written once.

- `<!-- oneiro:settings -->` becomes the table of every Settings field (shared/settings.py): its
  environment variable, its default and its `Field(description=...)`.
- `<!-- oneiro:params -->` becomes the table of every render parameter (shared/params.py), from
  the same document's RenderParams schema.
- `<!-- oneiro:http-api -->` becomes the HTTP API, rendered from the OpenAPI document the app
  serves at /v1/openapi.json (api/openapi.py): every operation, then every schema.

Importing the app needs no database, Redis or network: it is built on an in-memory SQLite
database and only its document is read.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _import_from_this_checkout() -> None:
    # The manual describes this tree's code, even where another checkout is the one installed in
    # the virtual environment. Done when a page is rendered: MkDocs restores sys.path after it
    # loads a hook module.
    if sys.path[:1] != [str(ROOT)]:
        sys.path.insert(0, str(ROOT))


SETTINGS_MARKER = "<!-- oneiro:settings -->"
HTTP_API_MARKER = "<!-- oneiro:http-api -->"
PARAMS_MARKER = "<!-- oneiro:params -->"
METHODS = ("get", "post", "put", "patch", "delete")


def env_name(field: str) -> str:
    """The environment variable a Settings field is read from."""
    from shared.settings import Settings

    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"ONEIRO_{field.upper()}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def shown_default(default: Any) -> str:
    """A default as the table shows it: `value`, or "unset" for an empty or derived one."""
    if default in ("", None):
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return f"`{default}`"


def in_words(field: str, default: Any) -> str:
    """A large default in the unit a person reads it in: 50 MiB, 64 MP, 640x640, 6 h, 30 days."""
    if isinstance(default, bool) or not isinstance(default, int | float) or default < 3600:
        return ""
    if field.endswith("_bytes") and default % 2**20 == 0:
        return f" ({int(default) // 2**20} MiB)"
    if field.endswith("_pixels"):
        side = int(default**0.5)
        if default % 2**20 == 0:
            return f" ({int(default) // 2**20} MP)"
        return f" ({side}x{side})" if side * side == default else ""
    if field.endswith(("_seconds", "_limit", "_age")):
        days, hours = default / 86400, default / 3600
        if days.is_integer():
            return f" ({int(days)} days)" if days > 1 else " (1 day)"
        return f" ({hours:g} h)" if hours * 10 == int(hours * 10) else ""
    return ""


def settings_table() -> str:
    """Every Settings field as a Markdown table row: variable, default, what it does."""
    from shared.settings import Settings

    rows = ["| variable | default | what |", "| --- | --- | --- |"]
    for field, info in Settings.model_fields.items():
        if not (info.description or "").strip():
            raise ValueError(f"shared/settings.py: {field} has no Field(description=...)")
        default = shown_default(info.default) + in_words(field, info.default)
        rows.append(f"| `{env_name(field)}` | {default} | {_cell(info.description or '')} |")
    return "\n".join(rows)


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The document the app serves at /v1/openapi.json."""
    from api import create_app
    from shared.settings import Settings

    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            data_dir=Path(data_dir),
            database_url="sqlite://",
            redis_url="redis://127.0.0.1:1/0",  # never connected to: only the document is read
            log_level="WARNING",
        )
        response = create_app(settings).test_client().get("/v1/openapi.json")
        document: dict[str, Any] = json.loads(response.data)
    return document


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[1]


def _anchor(name: str) -> str:
    return f"schema-{name.lower()}"


def type_of(schema: dict[str, Any]) -> str:
    """A schema in a few words of Markdown, a named schema as a link to its section."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{_anchor(name)})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(type_of(option) for option in schema[key])
    if "enum" in schema:
        return ", ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_of(schema['additionalProperties'])}"
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    return str(kind)


def _limits(schema: dict[str, Any]) -> str:
    words = {
        "minimum": "≥",
        "exclusiveMinimum": ">",
        "maximum": "≤",
        "exclusiveMaximum": "<",
        "minLength": "length ≥",
        "maxLength": "length ≤",
    }
    return ", ".join(f"{word} {schema[key]}" for key, word in words.items() if key in schema)


def properties_table(schema: dict[str, Any], link: str = "") -> list[str]:
    """A schema's properties as a Markdown table: field, type, default, what (with limits).
    `link` goes before the `#` of links to other schemas (when the table is on another page)."""
    required = set(schema.get("required", []))
    lines = ["| field | type | default | what |", "| --- | --- | --- | --- |"]
    for field, prop in schema["properties"].items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        if field in required:
            default = "required"
        what = " ".join(filter(None, [prop.get("description", ""), _limits(prop)]))
        kind = type_of(prop).replace("](#", f"]({link}#")
        lines.append(f"| `{field}` | {_cell(kind)} | {_cell(default)} | {_cell(what)} |")
    return lines


def _schema_section(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name} {{ #{_anchor(name)} }}", ""]
    if schema.get("description"):
        lines += [" ".join(schema["description"].split()), ""]
    if not schema.get("properties"):
        return [*lines, f"Type: {type_of(schema)}.", ""]
    return [*lines, *properties_table(schema), ""]


def _operation_section(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", ""]
    for text in (operation.get("summary"), operation.get("description")):
        if text:
            lines += [" ".join(text.split()), ""]
    lines += ["Needs a key." if operation.get("security") else "No key needed.", ""]
    parameters = operation.get("parameters", [])
    if parameters:
        lines += ["| parameter | in | type | what |", "| --- | --- | --- | --- |"]
        for parameter in parameters:
            schema = parameter.get("schema", {})
            what = " ".join(filter(None, [parameter.get("description", ""), _limits(schema)]))
            if parameter.get("required"):
                what = f"Required. {what}"
            lines.append(
                f"| `{parameter['name']}` | {parameter['in']} | {_cell(type_of(schema))} "
                f"| {_cell(what)} |"
            )
        lines.append("")
    body = operation.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        lines += [f"Body: `{media}`, {type_of(content.get('schema', {}))}.", ""]
    lines += ["| status | what | body |", "| --- | --- | --- |"]
    for status, response in sorted(operation.get("responses", {}).items()):
        contents = response.get("content", {})
        shown = "; ".join(
            f"`{media}` {type_of(content.get('schema', {}))}".strip()
            for media, content in contents.items()
        )
        headers = ", ".join(f"`{header}`" for header in response.get("headers", {}))
        what = _cell(response.get("description", ""))
        if headers:
            what = f"{what} (headers: {headers})"
        lines.append(f"| {status} | {what} | {_cell(shown)} |")
    return [*lines, ""]


def http_api_markdown(document: dict[str, Any]) -> str:
    """The OpenAPI document as Markdown: its operations, then its schemas."""
    info = document["info"]
    lines = [f"OpenAPI {document['openapi']}, “{info['title']}” version {info['version']}.", ""]
    if info.get("description"):
        lines += [" ".join(info["description"].split()), ""]
    lines += ["## Operations", ""]
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                lines += _operation_section(path, method, item[method])
    lines += ["## Schemas", ""]
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        lines += _schema_section(name, schema)
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: fill the generated parts of the reference pages."""
    _import_from_this_checkout()
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_table())
    if PARAMS_MARKER in markdown:
        params = openapi_document()["components"]["schemas"]["RenderParams"]
        table = properties_table(params, link="../reference/http-api.md")
        markdown = markdown.replace(PARAMS_MARKER, "\n".join(table))
    if HTTP_API_MARKER in markdown:
        markdown = markdown.replace(HTTP_API_MARKER, http_api_markdown(openapi_document()))
    return markdown

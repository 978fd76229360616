"""The one place that builds a google-genai client and asks Gemini for JSON.

The plan writer and the backlog writer both ask for structured output (`response_mime_type`
application/json with a JSON schema) and both must treat every failure the same way, so the client
settings (endpoint, API version, timeout, retries) and the reading of the answer live here. Callers
validate the answer's text against their own pydantic model: a schema constrains the model, it does
not guarantee what comes back.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from google import genai
from google.genai import types as genai_types
from pydantic import BaseModel

# The JSON Schema keywords `responseJsonSchema` documents as supported (google-genai's
# GenerateContentConfig.response_json_schema); anything else pydantic emits is dropped rather than
# risking a 400 from a stricter endpoint. Our own pydantic validation still enforces all of them.
SUPPORTED_SCHEMA_KEYWORDS = frozenset(
    {
        "$id",
        "$defs",
        "$ref",
        "$anchor",
        "type",
        "format",
        "title",
        "description",
        "enum",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "anyOf",
        "oneOf",
        "properties",
        "additionalProperties",
        "required",
        "propertyOrdering",
    }
)
# Keywords whose value is a map of property names to schemas, or a list of schemas.
_SCHEMA_MAPS = ("properties", "$defs")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties")


@dataclass(frozen=True, slots=True)
class GeminiAnswer:
    """The answer's text and what it cost (None when the endpoint did not say)."""

    text: str
    prompt_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None


def gemini_client(
    api_key: str,
    *,
    base_url: str | None,
    timeout_s: float,
    attempts: int,
    api_version: str = "v1beta",  # structured output (responseJsonSchema) is documented on v1beta
) -> genai.Client:
    """A client for the Gemini API or a compatible endpoint.

    Hold the returned client on an object for as long as it is used: a client used inline is
    garbage-collected and then refuses to send.
    """
    http_options = genai_types.HttpOptions(
        base_url=base_url,
        api_version=api_version,
        timeout=max(1, int(timeout_s * 1000)),  # milliseconds
        # `attempts` counts the first try; the SDK retries 408, 429 and 5xx answers and transport errors.
        retry_options=genai_types.HttpRetryOptions(attempts=max(1, attempts)),
    )
    return genai.Client(api_key=api_key, http_options=http_options)


def ask_for_json(
    client: genai.Client,
    *,
    model: str,
    system_instruction: str,
    prompt: str,
    json_schema: dict[str, Any],
    temperature: float,
) -> GeminiAnswer:
    """Ask for an answer shaped by `json_schema`. Raises on HTTP errors, timeouts and an empty answer."""
    response = client.models.generate_content(
        model=model,
        contents=prompt,
        config=genai_types.GenerateContentConfig(
            system_instruction=system_instruction,
            response_mime_type="application/json",
            response_json_schema=json_schema,
            temperature=temperature,
        ),
    )
    text = response.text
    if not text:
        raise ValueError("empty answer")
    usage = response.usage_metadata
    return GeminiAnswer(
        text=text,
        prompt_tokens=usage.prompt_token_count if usage else None,
        output_tokens=usage.candidates_token_count if usage else None,
        total_tokens=usage.total_token_count if usage else None,
    )


def response_schema_for(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema, self-contained (every `$ref` inlined) and limited to the supported keywords.

    Inlining keeps the schema readable in a recorded request and avoids the rule that a `$ref` may
    have no siblings. Integer `exclusiveMinimum`/`exclusiveMaximum` (pydantic's `gt`/`lt`) become
    `minimum`/`maximum`, which mean the same for integers; other unsupported constraints are dropped.
    Recursive models are refused: their schema cannot be inlined.
    """
    schema = model.model_json_schema()
    definitions: dict[str, Any] = schema.pop("$defs", {})
    return _supported_only(_inline_refs(schema, definitions, seen=()))


def _inline_refs(node: Any, definitions: dict[str, Any], *, seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline_refs(item, definitions, seen=seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.removeprefix("#/$defs/")
        if name == ref or name not in definitions:
            raise ValueError(f"cannot inline {ref!r}: only local #/$defs references are supported")
        if name in seen:
            raise ValueError(f"cannot inline recursive schema {name!r}")
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        target = copy.deepcopy(definitions[name]) | siblings  # e.g. a field's own description wins
        return _inline_refs(target, definitions, seen=(*seen, name))
    return {key: _inline_refs(value, definitions, seen=seen) for key, value in node.items()}


def _supported_only(schema: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS:
            kept[key] = {name: _supported_only(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS:
            kept[key] = [_supported_only(sub) for sub in value]
        elif key in _SCHEMA_VALUES and isinstance(value, dict):
            kept[key] = _supported_only(value)
        elif key in SUPPORTED_SCHEMA_KEYWORDS:
            kept[key] = value
    if schema.get("type") == "integer":
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            kept["minimum"] = schema["exclusiveMinimum"] + 1
        if "exclusiveMaximum" in schema and "maximum" not in schema:
            kept["maximum"] = schema["exclusiveMaximum"] - 1
    return kept


__all__ = ["GeminiAnswer", "SUPPORTED_SCHEMA_KEYWORDS", "ask_for_json", "gemini_client", "response_schema_for"]

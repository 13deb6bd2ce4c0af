"""The JSON Schema of the spec language, for editors (yaml-language-server) and CI staleness checks."""

from __future__ import annotations

import json

from effspec.core.schema import Spec


def schema_text() -> str:
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "effspec model spec"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"

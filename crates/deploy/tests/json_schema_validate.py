#!/usr/bin/env python3
"""Validates JSON files against a JSON Schema with unknown keys refused.

usage: json_schema_validate.py SCHEMA FILE...

SchemaStore's schemas leave most objects open (no `additionalProperties`), so a misspelt key
would pass. As for the CRDs (crd_validate.py), every object schema that lists `properties` and
says nothing of other keys is closed here (`additionalProperties: false`); an object made of
`allOf` branches is closed over the keys of all its branches together (the branches themselves
stay open). `anyOf`/`oneOf` alternatives stay open (an alternative may be completed by a
sibling `allOf` branch): where a file's objects are such alternatives (function.json's bindings),
the test checks their keys itself. Prints one line per file;
exits 1 on any problem.
"""

import json
import sys

import jsonschema


def ref_name(node):
    ref = node.get("$ref", "") if isinstance(node, dict) else ""
    return ref.split("/")[-1] if ref.startswith("#/definitions/") else None


def branch_refs(node, found):
    """The definitions used as branches of an allOf: their own keys are only part of an object."""
    if isinstance(node, list):
        for item in node:
            branch_refs(item, found)
    elif isinstance(node, dict):
        for combinator in ("allOf", "anyOf", "oneOf"):
            for branch in node.get(combinator, []):
                if ref_name(branch):
                    found.add(ref_name(branch))
        for value in node.values():
            branch_refs(value, found)
    return found


def own_keys(node, definitions):
    """Every property an allOf's branches (followed through $ref) list."""
    if not isinstance(node, dict):
        return set()
    if ref_name(node):
        node = definitions.get(ref_name(node), {})
    keys = set(node.get("properties", {}))
    for branch in node.get("allOf", []):
        keys |= own_keys(branch, definitions)
    return keys


def strict(node, definitions, open_root=False):
    if isinstance(node, list):
        return [strict(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict(branch, definitions, open_root=True) for branch in value]
        elif key == "definitions":
            opened = branch_refs(node, set())
            out[key] = {name: strict(sub, definitions, open_root=name in opened) for name, sub in value.items()}
        else:
            out[key] = strict(value, definitions)
    closed = "additionalProperties" in node or "patternProperties" in node or open_root
    if "allOf" in node and not closed:
        # The object is the branches together: closed over the union of their keys.
        properties = dict(out.get("properties", {}))
        for key in own_keys(node, definitions):
            properties.setdefault(key, {})
        out["properties"] = properties
        out["additionalProperties"] = False
    elif "properties" in node and not closed and not any(k in node for k in ("anyOf", "oneOf")):
        out["additionalProperties"] = False
    return out


def main():
    raw = json.load(open(sys.argv[1]))
    schema = strict(raw, raw.get("definitions", {}))
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    failed = False
    for path in sys.argv[2:]:
        document = json.load(open(path))
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        if errors:
            failed = True
            for e in errors:
                # oneOf failures hide the cause in the context.
                causes = [c.message for c in e.context] if e.context else []
                print(f"FAIL {path}: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]} {causes[:4]}")
        else:
            print(f"ok {path}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

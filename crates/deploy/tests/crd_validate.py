#!/usr/bin/env python3
"""Validates custom resources against their CRDs the way an API server would, without one.

usage: crd_validate.py CRD_DIR FILE...

For each object in FILE (its apiVersion and kind name the CRD version in CRD_DIR):
1. the CRD's defaults are applied (the API server defaults before it validates, and the CEL
   rules rely on it, e.g. a backendRef's `group` defaults to "");
2. the object is checked against the version's `openAPIV3Schema` as JSON Schema (jsonschema),
   with unknown fields refused: `additionalProperties: false` wherever `properties` are listed
   and `x-kubernetes-preserve-unknown-fields` is not set, as a structural schema prunes them
   (and `kubectl apply --validate=strict` refuses them);
3. every `x-kubernetes-validations` CEL rule on a path the object uses is evaluated with
   cel-python (`self` bound to the value there); transition rules (`oldSelf`) only apply to
   updates and are counted as skipped.

Prints one line per object and `N rules evaluated, M transition rules skipped`; exits 1 on any
problem (a rule that cannot be evaluated is a problem too, never a pass).
"""

import copy
import re
import sys
from pathlib import Path

import celpy
import jsonschema
import yaml


def load_crds(directory):
    schemas = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = (version["schema"]["openAPIV3Schema"], path.name)
    return schemas


def strict(schema):
    """The OpenAPI v3 (Kubernetes structural) schema as a JSON Schema that refuses unknown fields."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = strict(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict(sub) for sub in value]
        elif key.startswith("x-kubernetes-") or key in ("nullable", "description", "default", "example"):
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}], **out}
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def apply_defaults(schema, value):
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        for name, item in value.items():
            sub = schema.get("properties", {}).get(name)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                apply_defaults(sub, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


class Rules:
    def __init__(self):
        self.env = celpy.Environment()
        self.evaluated = 0
        self.skipped = 0
        self.cache = {}

    def program(self, rule):
        if rule not in self.cache:
            self.cache[rule] = self.env.program(self.env.compile(rule))
        return self.cache[rule]

    def check(self, schema, value, path, problems):
        for rule in schema.get("x-kubernetes-validations", []):
            text = rule["rule"]
            if re.search(r"\boldSelf\b", text):
                self.skipped += 1
                continue
            self.evaluated += 1
            try:
                result = self.program(text).evaluate({"self": celpy.json_to_cel(value)})
            except Exception as e:  # noqa: BLE001 - a rule that cannot run is a failure, never a pass
                problems.append(f"{path}: cannot evaluate the rule {text!r}: {type(e).__name__}: {e}")
                continue
            if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
                problems.append(f"{path}: {rule.get('message') or rule.get('messageExpression') or 'rule failed'} (rule {text!r}, result {result!r})")
        if isinstance(value, dict):
            for name, item in value.items():
                sub = schema.get("properties", {}).get(name)
                if sub is None and isinstance(schema.get("additionalProperties"), dict):
                    sub = schema["additionalProperties"]
                if sub is not None:
                    self.check(sub, item, f"{path}.{name}", problems)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                self.check(schema["items"], item, f"{path}[{i}]", problems)


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    schemas = load_crds(argv[1])
    rules = Rules()
    failed = False
    for file in argv[2:]:
        for doc in yaml.safe_load_all(Path(file).read_text()):
            if doc is None:
                continue
            key = (doc.get("apiVersion"), doc.get("kind"))
            name = f"{file}: {key[1]} {doc.get('metadata', {}).get('name')}"
            if key not in schemas:
                print(f"FAIL {name}: no CRD in {argv[1]} serves {key[0]} {key[1]}")
                failed = True
                continue
            schema, crd = schemas[key]
            apply_defaults(schema, doc)
            # Every object has these, whether or not the CRD's schema lists them.
            root = strict(schema)
            root["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}, **root.get("properties", {})}
            problems = [
                f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
                for e in jsonschema.Draft4Validator(root).iter_errors(doc)
            ]
            rules.check(schema, doc, "", problems)
            if problems:
                failed = True
                print(f"FAIL {name} against {crd}:")
                for problem in problems:
                    print(f"  - {problem}")
            else:
                print(f"ok {name} against {crd}")
    print(f"{rules.evaluated} rules evaluated, {rules.skipped} transition rules skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

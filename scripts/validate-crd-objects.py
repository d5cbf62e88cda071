#!/usr/bin/env python3
"""Validates Kubernetes objects against the schema of their CustomResourceDefinition, offline.

Usage: validate-crd-objects.py --crd CRD.yaml [--crd CRD.yaml ...] OBJECTS.yaml|- [...]

Every document of the object files (multi-document YAML or JSON; `-` is stdin) must be of a
kind, group and served version that one of the CRDs defines, and must pass that version's
`schema.openAPIV3Schema`, read as the API server reads it with strict field validation
(`kubectl apply --validate=strict`):

  - a field the schema does not declare is an error (the API server would prune it, or
    reject it under strict validation), except below `x-kubernetes-preserve-unknown-fields`;
  - `x-kubernetes-int-or-string: true` accepts an integer or a string;
  - `null` is accepted only where `nullable: true`;
  - `x-kubernetes-list-type: set` and `map` (with `x-kubernetes-list-map-keys`) reject
    duplicates;
  - `format: int32` / `int64` reject integers out of range;
  - patterns are Go (RE2) regular expressions: `$` at the end matches only at the very end;
  - `metadata` is checked against the fields of ObjectMeta (name required, labels and
    annotations string to string), as the API server does for every object;
  - `apiVersion` and `kind` must be those of the CRD.

CEL rules (`x-kubernetes-validations`) are not evaluated; a note says so when a schema has them.

Exit status: 0 when every object is valid, 1 when one is not (one line per error:
`FILE#DOC Kind namespace/name: PATH: message`), 2 on a usage error or a missing tool.
Runs with the project's virtualenv (`make setup`), which has jsonschema and PyYAML.
"""

import argparse
import copy
import re
import sys

try:
    import jsonschema
    import yaml
except ImportError as e:  # pragma: no cover - depends on the environment
    print(
        f"validate-crd-objects: {e.name} is not installed for {sys.executable}; "
        "run `make setup` (the project virtualenv has it through kubernetes-validate)",
        file=sys.stderr,
    )
    sys.exit(2)

INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
STRING_LIST = {"type": "array", "items": {"type": "string"}}
TIMESTAMP = {"type": "string"}

# ObjectMeta as the API server accepts it on create/apply (io.k8s.apimachinery...ObjectMeta).
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
        "finalizers": STRING_LIST,
        "ownerReferences": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["apiVersion", "kind", "name", "uid"],
                "additionalProperties": False,
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string"},
                    "uid": {"type": "string"},
                    "controller": {"type": "boolean"},
                    "blockOwnerDeletion": {"type": "boolean"},
                },
            },
        },
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]},
        "deletionTimestamp": TIMESTAMP,
        "deletionGracePeriodSeconds": {"type": "integer"},
        "selfLink": {"type": "string"},
        "managedFields": {"type": "array", "items": {"type": "object"}},
    },
}


def object_meta(declared, where, notes):
    """ObjectMeta, with what the CRD adds to `metadata.name`/`generateName` (all it may add)."""
    meta = copy.deepcopy(OBJECT_META)
    for name, sub in declared.get("properties", {}).items():
        if name not in meta["properties"]:
            raise SchemaError(f"{where}: metadata.{name} cannot be declared by a CRD")
        meta["properties"][name] = {
            "allOf": [meta["properties"][name], structural(sub, f"{where}.metadata.{name}", notes)]
        }
    return meta


class SchemaError(Exception):
    """The CRD itself cannot be read as a structural schema."""


def go_pattern(pattern, where):
    """A Go (RE2) regular expression as the equivalent Python one."""
    translated = pattern
    # Go accepts flags after `^` (`^(?i)...`); Python only at the very start.
    flags = re.match(r"\^\(\?([imsU]+)\)", translated)
    if flags:
        translated = f"(?{flags.group(1)})^" + translated[flags.end() :]
    # Go's `$` (without the m flag) matches only at the end; Python's also before a final "\n".
    if translated.endswith("$") and not translated.endswith("\\$"):
        translated = translated[:-1] + r"\Z"
    try:
        re.compile(translated)
    except re.error as e:
        raise SchemaError(f"{where}: pattern {pattern!r} is not readable here: {e}") from e
    return translated


def structural(node, where, notes):
    """An OpenAPI v3 schema of a CRD as a strict JSON Schema (draft 7)."""
    if not isinstance(node, dict):
        raise SchemaError(f"{where}: a schema must be a mapping, not {node!r}")
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {
                name: structural(sub, f"{where}.{name}", notes) for name, sub in value.items()
            }
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = structural(value, f"{where}[{key}]", notes)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [structural(sub, f"{where}[{key}]", notes) for sub in value]
        elif key == "pattern":
            out[key] = go_pattern(value, where)
        elif key in ("description", "example", "externalDocs", "default"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-validations"):
        notes.add(f"{where}: x-kubernetes-validations (CEL) not evaluated")
    if node.get("x-kubernetes-int-or-string") and "type" not in out:
        out["type"] = ["integer", "string"]
    if node.get("nullable"):
        kind = out.get("type")
        if kind is not None:
            out["type"] = (kind if isinstance(kind, list) else [kind]) + ["null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = out["enum"] + [None]
    is_object = out.get("type") == "object" or "properties" in out
    open_object = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
        "x-kubernetes-embedded-resource"
    )
    if is_object and "additionalProperties" not in out and not open_object:
        # Structural pruning drops (strict field validation rejects) undeclared fields.
        out["additionalProperties"] = False
    return out


def list_type(validator, kind, instance, schema):
    """`x-kubernetes-list-type`: no duplicate items in a set, no duplicate keys in a map."""
    if not validator.is_type(instance, "array"):
        return
    if kind == "set":
        seen = []
        for item in instance:
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate item {item!r} in a list of type set")
            seen.append(item)
    elif kind == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = tuple(repr(item.get(k)) for k in keys)
            if key in seen:
                shown = ", ".join(f"{k}={item.get(k)!r}" for k in keys)
                yield jsonschema.ValidationError(f"duplicate entry with {shown} in a list of type map")
            seen.add(key)


def int_format(validator, fmt, instance, schema):
    """`format: int32` / `int64` on integers."""
    if fmt in INT_RANGES and validator.is_type(instance, "integer"):
        low, high = INT_RANGES[fmt]
        if not low <= instance <= high:
            yield jsonschema.ValidationError(f"{instance} is out of range for {fmt}")


StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator,
    {
        "x-kubernetes-list-type": list_type,
        "format": int_format,
    },
)


def load_yaml(path):
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def read_crds(paths):
    """`(group/version, kind) -> (validator, notes)` for every served version of the CRDs."""
    known = {}
    for path in paths:
        for crd in load_yaml(path):
            if crd.get("kind") != "CustomResourceDefinition":
                raise SchemaError(f"{path}: {crd.get('kind')} is not a CustomResourceDefinition")
            spec = crd["spec"]
            kind = spec["names"]["kind"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                api_version = f"{spec['group']}/{version['name']}"
                where = f"{path} {kind} {version['name']}"
                notes = set()
                schema = structural(version["schema"]["openAPIV3Schema"], where, notes)
                props = schema.setdefault("properties", {})
                props["apiVersion"] = {"const": api_version}
                props["kind"] = {"const": kind}
                props["metadata"] = object_meta(
                    version["schema"]["openAPIV3Schema"].get("properties", {}).get("metadata", {}),
                    where,
                    notes,
                )
                schema["required"] = sorted(
                    set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"}
                )
                StrictValidator.check_schema(schema)
                known[(api_version, kind)] = (StrictValidator(schema), notes)
    return known


def path_of(error):
    parts = ""
    for step in error.absolute_path:
        parts += f"[{step}]" if isinstance(step, int) else f".{step}"
    return parts.lstrip(".") or "(object)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crd", action="append", required=True, help="a CRD file (repeatable)")
    parser.add_argument("objects", nargs="+", help="object files (YAML or JSON), - for stdin")
    args = parser.parse_args()
    try:
        known = read_crds(args.crd)
    except (OSError, KeyError, SchemaError, jsonschema.SchemaError, yaml.YAMLError) as e:
        print(f"validate-crd-objects: cannot read the CRDs: {e!r}", file=sys.stderr)
        return 2
    for notes in {n for _, ns in known.values() for n in ns}:
        print(f"validate-crd-objects: note: {notes}", file=sys.stderr)

    errors = checked = 0
    for path in args.objects:
        try:
            docs = load_yaml(path)
        except (OSError, yaml.YAMLError) as e:
            print(f"validate-crd-objects: cannot read {path}: {e}", file=sys.stderr)
            return 2
        for index, obj in enumerate(docs):
            meta = obj.get("metadata") if isinstance(obj, dict) else None
            meta = meta if isinstance(meta, dict) else {}
            label = (
                f"{'<stdin>' if path == '-' else path}#{index} {obj.get('kind') if isinstance(obj, dict) else '?'} "
                f"{meta.get('namespace', '')}/{meta.get('name', '')}"
            )
            if not isinstance(obj, dict):
                print(f"{label}: not a mapping", file=sys.stderr)
                errors += 1
                continue
            entry = known.get((obj.get("apiVersion"), obj.get("kind")))
            if entry is None:
                served = ", ".join(f"{v} {k}" for v, k in sorted(known))
                print(
                    f"{label}: no CRD given for {obj.get('apiVersion')} {obj.get('kind')} "
                    f"(given: {served})",
                    file=sys.stderr,
                )
                errors += 1
                continue
            checked += 1
            found = sorted(entry[0].iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
            for error in found:
                print(f"{label}: {path_of(error)}: {error.message}", file=sys.stderr)
            errors += len(found)
    if errors:
        print(f"validate-crd-objects: {errors} error(s)", file=sys.stderr)
        return 1
    if checked == 0:
        print("validate-crd-objects: no objects given", file=sys.stderr)
        return 2
    print(f"validate-crd-objects: {checked} object(s) valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""docs/openapi.yaml itself: valid OpenAPI 3.1, served as is, every reference resolving, the seed kept."""

import re

import jsonschema
import pytest
from contract import DOC, DOC_PATH, HTTP_METHODS, SEED_STATUSES, at, deref, operations

from api.app import OPENAPI_PATH

# -- the document itself ----------------------------------------------------------------------------


def test_served_document_is_the_file(client):
    answer = client.simulate_get("/openapi.yaml")
    assert answer.status_code == 200
    assert answer.content == DOC_PATH.read_bytes()
    assert OPENAPI_PATH.resolve() == DOC_PATH


def test_document_is_openapi_3_1_with_valid_schemas():
    assert DOC["openapi"] == "3.1.0"
    assert DOC["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"
    for name, schema in DOC["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            pytest.fail(f"components/schemas/{name}: {exc.message}")


def _refs(node, where="#"):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield where, node["$ref"]
        for key, value in node.items():
            yield from _refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, f"{where}/{i}")


def test_every_ref_resolves():
    refs = list(_refs(DOC))
    assert refs
    for where, ref in refs:
        assert ref.startswith("#/"), f"{where}: external $ref {ref}"
        try:
            at(ref)
        except (KeyError, IndexError, TypeError):
            pytest.fail(f"{where}: $ref {ref} points nowhere")


def test_operations_are_named_described_and_secured_by_known_schemes():
    schemes = set(DOC["components"]["securitySchemes"])
    ids = []
    for path, item in DOC["paths"].items():
        params = [deref(p, path)[0] for p in item.get("parameters", [])]
        assert [p["name"] for p in params if p["in"] == "path"] == re.findall(r"\{([^}]*)\}", path), path
        assert "X-Request-Id" in [p["name"] for p in params if p["in"] == "header"], path
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            ids.append(operation["operationId"])
            assert operation["summary"] and operation["responses"], (method, path)
            for requirement in operation.get("security", []):
                assert set(requirement) <= schemes, (method, path)
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_each_operation_names_the_credentials_it_takes():
    secured = {
        (method, path): [sorted(requirement) for requirement in operation["security"]]
        for path, method, operation in operations()
        if "security" in operation
    }
    start = [[], ["userToken"], ["callerCredential"]]  # none in anonymous mode; else one of the two
    session = [["sessionToken"]]
    owner = [["adminSecret"], ["userToken"], ["callerCredential"]]
    assert secured == {
        ("post", "/concurrency"): start,
        ("post", "/v1/sessions"): start,
        ("put", "/v1/sessions/{sessionId}"): session,
        ("delete", "/v1/sessions/{sessionId}"): session,
        ("get", "/v1/users/{userId}/sessions"): owner,
        ("delete", "/v1/users/{userId}/sessions"): owner,
        ("delete", "/v1/users/{userId}/sessions/{sessionId}"): owner,
    }
    schemes = {name: s["scheme"] for name, s in DOC["components"]["securitySchemes"].items()}
    assert schemes == {
        "sessionToken": "bearer",
        "userToken": "bearer",
        "adminSecret": "bearer",
        "callerCredential": "basic",
    }


def test_seed_fields_and_statuses_are_kept():
    schemas = DOC["components"]["schemas"]
    assert set(schemas["StartRequest"]["required"]) == {"userId", "deviceId", "streamId"}
    assert set(schemas["ConcurrencySessionRequest"]["required"]) == {"sessionKey", "token"}
    assert set(schemas["ConcurrencyResponse"]["properties"]) == {"sessionKey", "token", "status"}
    assert schemas["ConcurrencyResponse"]["properties"]["status"]["enum"] == ["initiated", "updated"]
    for method, statuses in SEED_STATUSES.items():
        documented = {int(s) for s in DOC["paths"]["/concurrency"][method]["responses"]}
        assert statuses <= documented, method

"""The live OpenAPI document describes every route, response and error.

The rules below are derived from each operation's shape (its path, method,
parameters, body and security), so a route added later must document its
errors too, or these tests fail for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis
from litestar.routes import HTTPRoute

from relay.api import create_app
from relay.openapi import JOB_ID_PATTERN
from relay.registrations import InputError, check_job_id
from relay.settings import Settings
from relay.views import RegistrationCreate
from tests.conftest import ApiFactory, fake_resolver

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head")
# Operations that never touch Redis, so they cannot return 503.
REDIS_FREE = {("get", "/healthz")}
# Responses whose errors are not problems: /readyz reports why it is not
# ready in its own JSON body.
NON_PROBLEM_ERRORS = {("get", "/readyz", "503")}
# Errors that cannot be derived from an operation's shape, listed by hand.
EXTRA_PROBLEMS = {
    ("post", "/v1/registrations"): {"403", "409", "415", "422", "429"},
    ("post", "/v1/registrations/{registration_id}/redeliver"): {"409"},
    ("post", "/v1/tenant/signing-secret"): {"409"},
    ("put", "/v1/tenant/modelgates-key"): {"409"},
    ("delete", "/v1/tenant/modelgates-key"): {"409"},
}

Operation = tuple[str, str, dict[str, Any]]


@pytest.fixture
def document(migrated: redis.Redis, start_api: ApiFactory) -> dict[str, Any]:
    response = start_api().get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def operations(document: dict[str, Any]) -> Iterator[Operation]:
    """Yield each operation of the document as (method, path, operation)."""
    for path, item in document["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield method, path, item[method]


def parameters(item: dict[str, Any], operation: dict[str, Any]) -> list[Any]:
    return [*item.get("parameters", []), *operation.get("parameters", [])]


def required_problems(
    document: dict[str, Any], method: str, path: str, operation: dict[str, Any]
) -> set[str]:
    """Return the error statuses an operation of this shape must document."""
    statuses = {"500"}
    params = parameters(document["paths"][path], operation)
    if (method, path) not in REDIS_FREE:
        statuses.add("503")
    if operation.get("security") or path.startswith("/v1/"):
        statuses.add("401")
    if params or "requestBody" in operation:
        statuses.add("400")
    if any(param["in"] == "path" for param in params):
        statuses.add("404")
    if "requestBody" in operation:
        statuses.add("413")
    return statuses | EXTRA_PROBLEMS.get((method, path), set())


def test_openapi_lists_every_route(
    document: dict[str, Any], env: dict[str, str]
) -> None:
    app = create_app(Settings.from_env(env), fake_resolver)
    routes = set()
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path.startswith("/schema"):
            continue
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        routes |= {(method.lower(), path) for method in route.methods - {"OPTIONS"}}

    documented = {(method, path) for method, path, _ in operations(document)}

    assert routes
    assert routes == documented


def test_openapi_documents_success_responses(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        success = [code for code in operation["responses"] if code.startswith("2")]
        assert success, f"{method} {path} documents no 2xx response"
        for code in success:
            response = operation["responses"][code]
            if code != "204":
                assert response.get("content"), f"{method} {path} {code} no body"


def test_openapi_documents_required_problems(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        documented = set(operation["responses"])
        required = required_problems(document, method, path, operation)

        missing = required - documented

        assert not missing, f"{method} {path} lacks {sorted(missing)}"


def test_openapi_errors_are_problems(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        for code, response in operation["responses"].items():
            if code < "400" or (method, path, code) in NON_PROBLEM_ERRORS:
                continue
            where = f"{method} {path} {code}"
            assert list(response["content"]) == [PROBLEM_JSON], where
            schema = response["content"][PROBLEM_JSON]["schema"]
            assert schema == {"$ref": PROBLEM_REF}, where
            assert response["description"], where


def test_openapi_problem_schema_shape(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    problem = schemas["Problem"]
    item = schemas["ValidationItem"]

    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert problem["properties"]["status"]["type"] == "integer"
    assert problem["properties"]["field"]["type"] == "string"
    assert problem["properties"]["errors"]["items"] == {
        "$ref": "#/components/schemas/ValidationItem"
    }
    assert item["required"] == ["message"]
    assert set(item["properties"]) == {"message", "key", "source"}


def test_openapi_bearer_scheme_guards_v1(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["bearer"]

    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"
    for method, path, operation in operations(document):
        expected = [{"bearer": []}] if path.startswith("/v1/") else None
        assert operation.get("security") == expected, f"{method} {path}"


def test_openapi_refs_resolve(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(document))

    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, ref


def test_openapi_operation_ids_unique(document: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(document)]

    assert len(ids) == len(set(ids))
    assert "createRegistration" in ids


def test_create_body_documents_every_field(document: dict[str, Any]) -> None:
    body = document["components"]["schemas"]["RegistrationCreate"]
    fields = {field.encode_name for field in msgspec.structs.fields(RegistrationCreate)}

    assert set(body["properties"]) == fields
    assert body["additionalProperties"] is False


def test_job_id_pattern_matches_rules() -> None:
    for code in range(0x100):
        job_id = f"job{chr(code)}1"
        try:
            check_job_id(job_id)
        except InputError:
            accepted = False
        else:
            accepted = True

        matched = re.fullmatch(JOB_ID_PATTERN, job_id) is not None

        assert matched == accepted, f"{job_id!r}"


def test_create_documents_idempotency_key(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/registrations"]["post"]

    [header] = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"] == "Idempotency-Key"
    assert header["required"] is False
    assert header["schema"]["maxLength"] == 255

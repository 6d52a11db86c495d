"""OpenAPI material the routes share: the problem schema, error responses, config.

Litestar builds the document served at ``/schema/openapi.json`` from the route
handlers. Each handler lists the problem responses it can return with
``responses=problems(...)``, and this module turns those status codes into
``application/problem+json`` responses that share one ``Problem`` schema.
"""

# No ``from __future__ import annotations`` here. Python 3.11 finds the
# NotRequired keys of a TypedDict when the class is created, and it cannot
# see them in string annotations, so every key would be documented as required.
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired, TypedDict

import msgspec
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIType,
    Operation,
    Parameter,
    Schema,
    SecurityScheme,
)
from litestar.params import Body
from litestar.plugins import OpenAPISchemaPlugin
from litestar.types import Method
from litestar.typing import FieldDefinition

from relay.registrations import (
    EVENT_TYPES,
    MAX_CALLBACK_URL_CHARS,
    MAX_JOB_ID_CHARS,
    MAX_METADATA_DEPTH,
)
from relay.views import RegistrationCreate

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator

PROBLEM_JSON = "application/problem+json"
BEARER_SCHEME = "bearer"

PROBLEM_DESCRIPTIONS = {
    400: "The request is malformed. The body is empty, is not valid JSON, misses "
    "a required field, has an unknown field or a value of the wrong type, or "
    "nests too deeply, or a query parameter or the Idempotency-Key header is "
    "invalid. For a missing or unknown field or a wrong type, `errors` lists "
    "each one.",
    401: "The API key is missing, unknown or revoked. The response carries "
    '`WWW-Authenticate: Bearer realm="relay"`.',
    403: "The tenant already has as many active registrations as "
    "`RELAY_TENANT_MAX_ACTIVE` allows.",
    404: "The registration was not found: its ID is unknown, or it expired or "
    "was deleted. A create returns 404 only when another request deleted the "
    "matching registration while this one ran.",
    409: "The request conflicts with stored state: a repeated registration with "
    "other `events` or `metadata`, a redelivery of a registration that has no "
    "webhook, an Idempotency-Key whose first request is still running, or a "
    "tenant change that the tenant does not allow.",
    413: "The request body is larger than `RELAY_MAX_BODY_BYTES`.",
    415: "The request's content type is not `application/json`.",
    422: "A field value breaks a rule of the API, and `field` names that field, "
    "or the Idempotency-Key was used before with another request body.",
    429: "The API key sent more registrations than `RELAY_KEY_RATE_PER_S` "
    "allows. Retry after the seconds in the `Retry-After` header.",
    500: "The relay failed unexpectedly and logged the error.",
    503: "Redis is unreachable, and the response carries `Retry-After: 5`, or a "
    "new registration finds the Redis keyspace not migrated to this code's "
    "schema version.",
}


# Printable ASCII (0x21 to 0x7E) without / \\ ? # %. The API also rejects
# ".." and ".", which a pattern without lookahead cannot express.
JOB_ID_PATTERN = r'^[!"$&-.0->@-\[\]-~]+$'

# The fields of the create body with the rules the API checks, so clients and
# schemathesis see them. The API checks these rules itself and rejects a
# breach with 422, while the decoder rejects a wrong type with 400.
REGISTRATION_CREATE_PROPERTIES = {
    "job_id": Schema(
        type=OpenAPIType.STRING,
        min_length=1,
        max_length=MAX_JOB_ID_CHARS,
        pattern=JOB_ID_PATTERN,
        description="ModelGates job ID: printable ASCII without spaces or any "
        "of / \\ ? # %, without '..', and not '.'.",
    ),
    "callback_url": Schema(
        type=OpenAPIType.STRING,
        min_length=1,
        max_length=MAX_CALLBACK_URL_CHARS,
        description="Absolute http:// or https:// URL that receives the "
        "webhook, without credentials, fragment, whitespace or control "
        "characters, and with an ASCII host that is a public address unless "
        "the operator allows its network. The path and query may contain "
        "other Unicode characters, so this is not strictly an RFC 3986 URI.",
    ),
    "events": Schema(
        one_of=[
            Schema(
                type=OpenAPIType.ARRAY,
                items=Schema(type=OpenAPIType.STRING, enum=list(EVENT_TYPES)),
                min_items=1,
            ),
            Schema(type=OpenAPIType.NULL),
        ],
        description="Event types to send. Null or left out means all of them, "
        "and repeated types are dropped.",
    ),
    "metadata": Schema(
        one_of=[
            Schema(type=OpenAPIType.OBJECT, additional_properties=Schema()),
            Schema(type=OpenAPIType.NULL),
        ],
        description="JSON object returned in the registration and the webhook: "
        "at most RELAY_MAX_METADATA_BYTES (4096 by default) as compact JSON, "
        f"nested at most {MAX_METADATA_DEPTH} levels deep, without NaN or "
        "infinite numbers.",
    ),
}

# The body parameter of ``POST /v1/registrations``, with its field rules.
RegistrationCreateBody = Annotated[
    RegistrationCreate,
    Body(schema_extra={"properties": REGISTRATION_CREATE_PROPERTIES}),
]


class StrictStructSchemaPlugin(OpenAPISchemaPlugin):
    """Document a struct that rejects unknown fields with additionalProperties false.

    msgspec rejects unknown fields of a struct declared with
    ``forbid_unknown_fields=True``, and the API returns 400. Litestar's own
    struct schema leaves that out, so this plugin lets Litestar's next plugin
    build the schema and then adds it.
    """

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return (
            not field_definition.is_union
            and field_definition.is_subclass_of(msgspec.Struct)
            and field_definition.type_.__struct_config__.forbid_unknown_fields
        )

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: "SchemaCreator"
    ) -> Schema:
        builder = next(
            plugin
            for plugin in schema_creator.plugins
            if plugin is not self
            and schema_creator.plugin_supports_field(plugin, field_definition)
        )
        schema = builder.to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        return schema


class ValidationItem(TypedDict):
    """One invalid field of a request, as listed in a problem's ``errors``."""

    message: str
    key: NotRequired[str]
    source: NotRequired[str]


class Problem(TypedDict):
    """An error response in the RFC 9457 problem details format."""

    type: str
    title: str
    status: int
    detail: str
    field: NotRequired[str]
    errors: NotRequired[list[ValidationItem]]


class Health(TypedDict):
    """Body of ``GET /healthz``."""

    status: Literal["ok"]


class Readiness(TypedDict):
    """Body of ``GET /readyz``: ready, or why not.

    A ready API returns ``status`` "ok" and the keyspace ``schema`` version.
    An unavailable one returns ``redis`` "unreachable", or the ``schema``
    version found (null when none) and the ``expected`` one.
    """

    status: Literal["ok", "unavailable"]
    schema: NotRequired[int | None]
    expected: NotRequired[int]
    redis: NotRequired[Literal["unreachable"]]


def problem_response(status: int, description: str) -> ResponseSpec:
    """Describe one problem response with the shared ``Problem`` schema."""
    return ResponseSpec(
        data_container=Problem,
        description=description,
        media_type=PROBLEM_JSON,
        generate_examples=False,
    )


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """Describe the problem responses of a route, always including 500.

    Every route can fail unexpectedly, and the exception handler then returns
    a 500 problem, so 500 is added without being named.
    """
    return {
        status: problem_response(status, PROBLEM_DESCRIPTIONS[status])
        for status in sorted({*statuses, 500})
    }


def operation_id(
    route_handler: HTTPRouteHandler, http_method: Method, path_components: list[Any]
) -> str:
    """Name an operation after its handler function, in camelCase.

    tests/contract/test_openapi.py checks that the IDs are unique.
    """
    first, *rest = route_handler.handler_name.split("_")
    return first + "".join(word.title() for word in rest)


def openapi_config() -> OpenAPIConfig:
    """Build the OpenAPI configuration of the app, with the bearer scheme."""
    bearer = SecurityScheme(
        type="http",
        scheme="bearer",
        description="A tenant's API key from `relay keys create`, or "
        "RELAY_API_TOKEN for the tenant `default`, sent as "
        "`Authorization: Bearer <key>`.",
    )
    return OpenAPIConfig(
        title="modelgates-relay",
        version="1",
        description="Registers ModelGates video jobs and sends each job's outcome "
        "to a callback URL as a signed Standard Webhooks request. Errors are "
        "`application/problem+json` (RFC 9457).",
        components=Components(security_schemes={BEARER_SCHEME: bearer}),
        use_handler_docstrings=True,
        operation_id_creator=operation_id,
    )


def json_response(data_container: Any, description: str) -> ResponseSpec:
    """Describe a JSON response other than the one a handler's return type gives."""
    return ResponseSpec(
        data_container=data_container,
        description=description,
        generate_examples=False,
    )


IDEMPOTENCY_KEY = Parameter(
    name="Idempotency-Key",
    param_in="header",
    required=False,
    description="A key of 1 to 255 ASCII characters, such as a UUID. A retried "
    "request with the same key and body gets the first response again, with "
    "`idempotent-replayed: true`; the same key with another body gets 422.",
    schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=255),
)


@dataclass
class IdempotentOperation(Operation):
    """An operation that also documents the ``Idempotency-Key`` request header.

    The handler reads the header from the raw ASGI scope, which is faster than
    declaring it as a parameter, so Litestar cannot see it on its own.
    """

    def __post_init__(self) -> None:
        self.parameters = [*(self.parameters or []), IDEMPOTENCY_KEY]

"""The published OpenAPI document is valid and covers every route."""

import re

import jsonschema
import pytest
from openapi_spec_validator import validate


def test_document_is_valid_openapi(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    validate(response.get_json())


def test_document_covers_every_route(app, client):
    paths = client.get("/openapi.json").get_json()["paths"]
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "openapi.openapi_json"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        methods = rule.methods - {"HEAD", "OPTIONS"}
        assert path in paths, path
        assert {m.lower() for m in methods} <= set(paths[path]), (path, methods)


def test_responses_match_the_documented_schemas(client):
    doc = client.get("/openapi.json").get_json()
    schemas = doc["components"]["schemas"]

    def check(instance, name):
        jsonschema.validate(instance, {"$ref": f"#/components/schemas/{name}",
                                       "components": {"schemas": schemas}})

    created = client.post("/api/users", json={"email": "s@example.com", "name": "S"}).get_json()
    check(created, "User")
    check(client.get("/api/users").get_json(), "UserPage")
    check(client.get("/api/users/999").get_json(), "ErrorResponse")
    check(client.post("/api/users", json={"x": 1}).get_json(), "ErrorResponse")
    with pytest.raises(jsonschema.ValidationError, match="'code' is a required property"):
        check({"error": {"message": "m"}}, "ErrorResponse")  # every error has a code...
    with pytest.raises(jsonschema.ValidationError, match="'message' is a required property"):
        check({"error": {"code": "c"}}, "ErrorResponse")  # ...and a message
    request_schema = schemas["UserCreate"]
    assert request_schema["additionalProperties"] is False
    assert request_schema["properties"]["name"]["maxLength"] == 100


@pytest.mark.parametrize("body", [
    {"name": "N"}, {"email": "n@example.com"}, {"email": "m@example.com", "name": "M"},
    {}, {"name": None}, {"email": None}, {"email": None, "name": "N"}, {"id": 1},
])
def test_patch_schema_accepts_what_the_api_accepts(client, body):
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    user = client.post("/api/users", json={"email": "p@example.com", "name": "P"}).get_json()
    accepted = client.patch(f"/api/users/{user['id']}", json=body).status_code == 200
    try:
        jsonschema.validate(body, {"$ref": "#/components/schemas/UserPatch",
                                   "components": {"schemas": schemas}})
        documented = True
    except jsonschema.ValidationError:
        documented = False
    assert documented == accepted

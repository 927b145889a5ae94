"""Generated requests from /openapi.json (schemathesis), against the real app and database.

Each operation gets up to 50 generated requests, valid and invalid, derandomized (the same
requests on every run, so a failure reproduces). Each answer must not be a 5xx and must have
a status code, content type, headers and body that the document declares; a refused request
must leave the users table as it was.

schemathesis's pytest plugin (`schema.parametrize()`, `from_fixture`) breaks on pytest 9
(it writes `request.node._nodeid`), so each operation's strategy is run with hypothesis here.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_headers_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from app.openapi import document
from conftest import ROOT
from test_hostile import table

# Hypothesis caches under ./.hypothesis by default, which `eb deploy` would upload: keep it in
# .pytest_cache, which .gitignore and .ebignore already leave out.
set_hypothesis_home_dir(ROOT / ".pytest_cache" / "hypothesis")

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
OPERATIONS = [(method.upper(), path) for path, item in document()["paths"].items()
              for method in item if method != "parameters"]


@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests_get_documented_answers(app, db_env, method, path):
    operation = schemathesis.openapi.from_wsgi("/openapi.json", app)[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=50, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        before = table(db_env)
        response = case.call()
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            assert table(db_env) == before, case.as_curl_command()

    check()

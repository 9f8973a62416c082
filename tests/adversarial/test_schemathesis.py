"""Schemathesis against the running admin API, from its own OpenAPI document (``GET /v1/openapi.json``).

Every operation gets valid and invalid inputs (bounded: ``EXAMPLES`` each way per operation, about 20 s in
all) and every answer must be no 5xx, a documented status, a documented content type, headers and a body
that match the document. Schemathesis drives ``requests`` synchronously, so it runs in a thread while the
admin API serves from the test's event loop.
"""

from __future__ import annotations

import asyncio
import time

import requests
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.harness import ADMIN_TOKEN, Gate

EXAMPLES = 35  # per operation and generation mode
TRANSPORT = frozenset(
    {"transfer-encoding", "content-length", "connection", "upgrade", "te", "trailer", "host"}
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


def _fuzz(document: dict[str, object], base_url: str) -> tuple[int, list[str]]:
    schema = schemathesis.openapi.from_dict(document)
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        return _fuzz_with(schema, base_url, session)


def _fuzz_with(
    schema: schemathesis.BaseSchema, base_url: str, session: requests.Session
) -> tuple[int, list[str]]:
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same cases every run: a failure here is not luck
                suppress_health_check=list(HealthCheck),
            )
            @given(operation.as_strategy(generation_mode=mode))
            def call(case: schemathesis.Case) -> None:
                nonlocal calls
                # Framing headers make a request aiohttp's parser refuses before the API sees it (its
                # own plain-text 400): transport, not API, and the raw-socket corpus's business.
                assume(not TRANSPORT & {name.lower() for name in case.headers or {}})
                calls += 1
                case.call_and_validate(base_url=base_url, session=session, checks=CHECKS)

            try:
                call()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # the first failure of each operation and mode, minimised
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    return calls, failures


async def test_the_admin_api_answers_as_its_openapi_document_says(proxy: Gate) -> None:
    status, document = await proxy.admin_call("GET", "/v1/openapi.json")
    assert status == 200
    started = time.monotonic()
    calls, failures = await asyncio.to_thread(_fuzz, document, proxy.runtime.admin_url)
    assert not failures, "\n\n".join(failures)
    assert calls >= 100, calls  # the run really exercised the API
    print(f"schemathesis: {calls} calls in {time.monotonic() - started:.1f}s")

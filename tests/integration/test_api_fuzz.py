"""The API fuzzed against its own OpenAPI document (schemathesis), on the real ledger,
a broker vhost of its own and moto: no 5xx, and every response matches its schema."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api import create_app
from api.openapi import OPERATIONS
from etl.adapters.topology import declare_topology
from etl.bootstrap import Services
from etl.config import Settings

from support import API_TOKEN, scratch_vhost

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def fuzzed_app(
    service_settings: Settings, services: Services, rabbitmq_vhost: str
) -> Iterator[Flask]:
    # Its own vhost: the runs the fuzzer starts are published where no worker listens.
    with scratch_vhost(f"{rabbitmq_vhost}-fuzz") as vhost:
        broker = service_settings.broker_url.rsplit("/", 1)[0] + f"/{vhost}"
        declare_topology(broker)
        settings_ = service_settings.model_copy(
            update={"broker_url": broker, "api_token": SecretStr(API_TOKEN)}
        )
        yield create_app(settings_)


@pytest.mark.parametrize(("method", "path"), [(op.method.upper(), op.path) for op in OPERATIONS])
def test_the_api_keeps_to_its_openapi_document(fuzzed_app: Flask, method: str, path: str) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzzed_app, headers=AUTH)
    operation = schema[path][method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=int(os.environ.get("ETL_TEST_FUZZ_EXAMPLES", "40")),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def keeps_to_it(case: schemathesis.Case) -> None:
        # Every check but "schema-valid data is accepted": a name the schema allows may
        # still be no registered pipeline, a string no page cursor; those are 400s.
        case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])

    keeps_to_it()

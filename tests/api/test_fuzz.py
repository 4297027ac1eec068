"""Fuzz every operation of the OpenAPI schema (schemathesis): no input may produce a server error.

Driven through schemathesis' hypothesis strategies rather than its pytest plugin, which does not
yet work with pytest 9.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.app import create_app
from indexer.settings import Settings

pytestmark = pytest.mark.slow


def test_no_server_errors(sample_index, searcher):
    config = Settings.load(env={}, index_dir=sample_index, max_upload_mb=1.0, allowed_hosts="testserver")
    app = create_app(config, searcher=searcher)
    app.state.settings, app.state.searcher = config, searcher  # the ASGI transport does not run the lifespan
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    calls = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):  # noqa: ANN001
            response = case.call()
            calls[operation.label] = calls.get(operation.label, 0) + 1
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"

        fuzz()
    assert set(calls) == {op.label for op in operations}, calls  # every operation was exercised

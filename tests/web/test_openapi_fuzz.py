"""Property-based requests over the whole OpenAPI spec: no answer is ever a 5xx.

Schemathesis turns each operation of the app's own `/openapi.json` into Hypothesis
strategies of valid and invalid requests; a bounded number of examples per operation (so it
fits in CI) runs against the real app and database, with RunPod's cloud mocked.
"""

from collections import Counter

import hypothesis
import schemathesis

from tests.fakes.api import Api

EXAMPLES_PER_OPERATION = 30


def test_no_request_gets_a_server_error(api: Api) -> None:
    api.upload_ids(api.group(), 2)  # something to find, besides what the fuzzer makes
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, "the spec lost operations"
    server_errors: list[str] = []
    answered: Counter[int] = Counter()

    for operation in operations:
        cases = hypothesis.strategies.one_of(
            operation.as_strategy(mode) for mode in schemathesis.GenerationMode
        )

        @hypothesis.given(case=cases)
        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def call(case: schemathesis.Case) -> None:
            response = case.call()
            answered[response.status_code] += 1
            if response.status_code >= 500:
                server_errors.append(
                    f"{case.method} {case.formatted_path} → {response.status_code}: "
                    f"{response.text[:200]}"
                )

        call()
    assert not server_errors, server_errors[:10]
    assert sum(answered.values()) >= 10 * len(operations), answered
    assert answered[200] + answered[201] + answered[204] > 0, answered  # not only refusals

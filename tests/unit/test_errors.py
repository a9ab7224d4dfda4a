"""Which failures are retried: decided only in etl.adapters.errors.is_transient."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from etl.adapters.errors import is_transient


def case_id(exc: BaseException) -> str:
    code = ((getattr(exc, "response", None) or {}).get("Error") or {}).get("Code")
    return f"{type(exc).__name__}:{code}" if code else type(exc).__name__


def s3_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


TRANSIENT = [
    OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly")),
    s3_error("SlowDown", 503),
    s3_error("InternalError", 500),
    s3_error("ServiceUnavailable", 503),
    s3_error("RequestTimeout", 400),
    s3_error("Throttling", 400),
    s3_error("BadDigest", 400),  # bytes corrupted on the way: sent again
    s3_error("WeirdNewGatewayError", 502),
    EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ConnectionResetError("connection reset by peer"),
    TimeoutError("timed out"),
]

PERMANENT = [
    ValueError("poison row 7"),
    KeyError("amount"),
    TypeError("unsupported operand"),
    IntegrityError("INSERT", {}, Exception("duplicate key")),
    ProgrammingError("SELECT nope", {}, Exception("column nope does not exist")),
    s3_error("AccessDenied", 403),
    s3_error("NoSuchBucket", 404),
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=case_id)
def test_lost_connections_timeouts_and_s3_5xx_or_throttling_are_transient(
    exc: BaseException,
) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", PERMANENT, ids=case_id)
def test_bad_data_bugs_and_refusals_are_permanent(exc: BaseException) -> None:
    assert not is_transient(exc)

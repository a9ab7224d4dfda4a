"""Which failures are worth retrying, decided here and only here; and which exceptions
mean "the store or the broker failed", for the entry points that turn them into one line
without importing the client libraries."""

from __future__ import annotations

from amqp.exceptions import AMQPError
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from kombu.exceptions import OperationalError as BrokerOperationalError
from psycopg2 import InterfaceError as DriverInterfaceError
from psycopg2 import OperationalError as DriverOperationalError
from sqlalchemy.exc import DBAPIError, OperationalError

from etl.adapters.s3 import PartNotStored

# S3 (boto3) refused a request or could not be reached.
STORAGE_ERRORS: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
# RabbitMQ could not be reached (kombu wraps the socket's error).
BROKER_UNREACHABLE: tuple[type[Exception], ...] = (OSError, BrokerOperationalError)
# RabbitMQ answered and refused: a queue that is not declared, a user without permission.
BROKER_REFUSED: tuple[type[Exception], ...] = (AMQPError,)

# BadDigest: S3 refused bytes that did not match the checksum sent with them (corrupted
# on the way); the part is written again from the spool.
_RETRYABLE_S3_CODES = frozenset(
    {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
     "RequestTimeout", "Throttling", "ThrottlingException", "RequestTimeTooSkewed",
     "BadDigest"}
)  # fmt: skip


def is_transient(exc: BaseException) -> bool:
    """True for failures that a later attempt may not meet: lost connections, timeouts,
    S3 5xx and throttling. Bad data and bugs are permanent: retrying cannot fix them."""
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # The fast path's COPY runs on the driver's own connection, unwrapped by SQLAlchemy:
    # a terminated backend or a closed connection, as the driver says it.
    if isinstance(exc, DriverOperationalError | DriverInterfaceError):
        return True
    if isinstance(exc, PartNotStored):  # read back wrong: write it again
        return True
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return code in _RETRYABLE_S3_CODES or status.startswith("5")
    return isinstance(exc, ConnectionError | TimeoutError)

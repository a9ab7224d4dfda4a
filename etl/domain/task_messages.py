"""The task message contract: what a message on our queues must look like before any of it
is used (looked up, logged, scheduled or run).

Anyone with publish rights on the broker can put anything in a message's headers and
body; Celery's consumer trusts them (a list where the task name belongs made it raise
and take the worker down). So the worker's consumer, each task and the dead-letter sync
all ask the same questions here, and a message that fails one is refused with a reason
that names the header or argument at fault. Pure: no Celery, no broker.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from etl.domain.clock import as_utc

# Task names are the contract between the processes that send tasks (API, CLI, Beat) and
# the workers that run them; senders use these names and never import the tasks module.
TASK_PLAN_RUN = "etl.plan_run"
TASK_TRANSFORM_CHUNK = "etl.transform_chunk"
TASK_COMMIT_RUN = "etl.commit_run"
TASK_START_SCHEDULED_RUN = "etl.start_scheduled_run"
TASK_RECONCILE = "etl.reconcile"

# Our messages are a few hundred bytes: anything near these sizes is not ours.
MAX_BODY_BYTES = 256 * 1024
MAX_HEADERS_BYTES = 64 * 1024
MAX_HEADER_TEXT = 1_000  # ids, names, origin
MAX_REPR_TEXT = 4_000  # argsrepr/kwargsrepr are logged when a message is received
# A chunk index above this is refused before it reaches the ledger (Settings.max_chunks
# is at most this).
MAX_CHUNK_INDEX = 1_000_000
MAX_RETRIES_HEADER = 1_000
# A pipeline name (etl.pipelines.base), and a run's interval: its logical date, or the
# ISO 8601 timestamp that starts it, with its offset.
_PIPELINE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_INTERVAL = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2}))?"
)


class InvalidTaskMessage(ValueError):
    """A message that breaks the contract; the text names what is wrong."""


# -- arguments ---------------------------------------------------------------------------


def _kind(value: Any) -> str:
    return type(value).__name__


def check_run_id(value: Any, name: str = "run_id") -> str:
    """A run id is a UUID in its canonical text form."""
    if not isinstance(value, str):
        raise InvalidTaskMessage(f"argument {name} must be a string, got {_kind(value)}")
    if len(value) != 36 or not _is_canonical_uuid(value):
        raise InvalidTaskMessage(f"argument {name} must be a UUID, got {_excerpt(value)}")
    return value


def _is_canonical_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _chunk_index(value: Any, name: str) -> int:
    if type(value) is not int:
        raise InvalidTaskMessage(f"argument {name} must be an integer, got {_kind(value)}")
    if not 0 <= value < MAX_CHUNK_INDEX:
        raise InvalidTaskMessage(
            f"argument {name} must be between 0 and {MAX_CHUNK_INDEX - 1}, got {value}"
        )
    return value


def _pipeline_name(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidTaskMessage(f"argument {name} must be a string, got {_kind(value)}")
    if not _PIPELINE_NAME.fullmatch(value):
        raise InvalidTaskMessage(
            f"argument {name} must be a pipeline name ({_PIPELINE_NAME.pattern}), "
            f"got {_excerpt(value)}"
        )
    return value


def _optional_interval(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _INTERVAL.fullmatch(value):
        raise InvalidTaskMessage(
            f"argument {name} must be a YYYY-MM-DD date, an ISO 8601 timestamp with its "
            "offset, or null"
        )
    return value


@dataclass(frozen=True)
class _Parameter:
    name: str
    check: Callable[[Any, str], Any]
    required: bool = True


_SIGNATURES: dict[str, tuple[_Parameter, ...]] = {
    TASK_PLAN_RUN: (_Parameter("run_id", check_run_id),),
    TASK_COMMIT_RUN: (_Parameter("run_id", check_run_id),),
    TASK_TRANSFORM_CHUNK: (
        _Parameter("run_id", check_run_id),
        _Parameter("chunk_index", _chunk_index),
    ),
    TASK_START_SCHEDULED_RUN: (
        _Parameter("pipeline", _pipeline_name),
        _Parameter("interval", _optional_interval, required=False),
    ),
    TASK_RECONCILE: (),
}
KNOWN_TASKS = frozenset(_SIGNATURES)


def check_arguments(task: str, args: Any, kwargs: Any) -> dict[str, Any]:
    """The arguments of a call to ``task``, bound by name and checked; raises
    InvalidTaskMessage naming the first argument at fault."""
    if task not in _SIGNATURES:
        raise InvalidTaskMessage(f"unknown task {_excerpt(task)}")
    if not isinstance(args, list | tuple):
        raise InvalidTaskMessage(f"the arguments must be a list, got {_kind(args)}")
    if not isinstance(kwargs, dict):
        raise InvalidTaskMessage(f"the keyword arguments must be an object, got {_kind(kwargs)}")
    parameters = _SIGNATURES[task]
    if len(args) > len(parameters):
        raise InvalidTaskMessage(
            f"{task} takes {len(parameters)} argument(s), got {len(args)} positional"
        )
    bound: dict[str, Any] = {}
    names = {parameter.name for parameter in parameters}
    for key in kwargs:
        if key not in names:
            raise InvalidTaskMessage(f"{task} has no argument {_excerpt(str(key))}")
    for position, parameter in enumerate(parameters):
        if position < len(args):
            if parameter.name in kwargs:
                raise InvalidTaskMessage(f"argument {parameter.name} is given twice")
            value = args[position]
        elif parameter.name in kwargs:
            value = kwargs[parameter.name]
        elif parameter.required:
            raise InvalidTaskMessage(f"{task} is missing argument {parameter.name}")
        else:
            continue
        bound[parameter.name] = parameter.check(value, parameter.name)
    return bound


# -- headers -----------------------------------------------------------------------------


def _text(limit: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be a string, got {_kind(value)}"
        if len(value) > limit:
            return f"must be at most {limit} characters, got {len(value)}"
        if "\x00" in value:
            return "must not contain NUL"
        return None

    return check


def _optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda value: None if value is None else check(value)


def _count(limit: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if type(value) is not int:
            return f"must be an integer, got {_kind(value)}"
        if not 0 <= value <= limit:
            return f"must be between 0 and {limit}, got {value}"
        return None

    return check


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {_kind(value)}"


def _time_limits(value: Any) -> str | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return "must be a list of two limits (soft, hard)"
    for limit in value:
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit >= 0:
            return f"must hold numbers of seconds or null, got {_excerpt(repr(limit))}"
    return None


def _moment(value: Any) -> str | None:
    problem = _text(64)(value)
    if problem:
        return problem
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return f"must be an ISO 8601 time, got {_excerpt(value)}"
    return None


def _run_id_header(value: Any) -> str | None:
    try:
        check_run_id(value)
    except InvalidTaskMessage:
        return "must be a run id (a UUID)"
    return None


def _list_of_text(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return "must be a list of strings"
    return None


def _mapping(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"must be an object, got {_kind(value)}"


_ID = _text(MAX_HEADER_TEXT)
# Every header Celery's consumer or request reads before our task code runs, and ours.
_HEADER_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "task": _ID,
    "id": _ID,
    "lang": _optional(_text(16)),
    "shadow": _optional(_ID),
    "root_id": _optional(_ID),
    "parent_id": _optional(_ID),
    "group": _optional(_ID),
    "group_index": _optional(_count(MAX_CHUNK_INDEX)),
    "eta": _optional(_moment),
    "expires": _optional(_moment),
    "retries": _optional(_count(MAX_RETRIES_HEADER)),
    "timelimit": _optional(_time_limits),
    "argsrepr": _optional(_text(MAX_REPR_TEXT)),
    "kwargsrepr": _optional(_text(MAX_REPR_TEXT)),
    "origin": _optional(_ID),
    "ignore_result": _optional(_flag),
    "replaced_task_nesting": _optional(_count(100)),
    "stamped_headers": _optional(_list_of_text),
    "stamps": _optional(_mapping),
    "run_id": _optional(_run_id_header),
}
_PROPERTY_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "correlation_id": _optional(_ID),
    "reply_to": _optional(_ID),
}


def check_headers(
    headers: Any,
    properties: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
    max_eta_s: float | None = None,
) -> None:
    """Headers (and properties) that Celery can read without raising; raises
    InvalidTaskMessage naming the first one at fault. A message with no ``task`` header
    is protocol 1 (task name and id in the body), which we never send and refuse."""
    if not isinstance(headers, Mapping):
        raise InvalidTaskMessage(f"the headers must be a table, got {_kind(headers)}")
    if "task" not in headers:
        raise InvalidTaskMessage(
            "no 'task' header: a protocol 1 message (task in the body) is refused"
        )
    if "id" not in headers:
        raise InvalidTaskMessage("no 'id' header")
    for name, check in _HEADER_CHECKS.items():
        if name in headers and (problem := check(headers[name])):
            raise InvalidTaskMessage(f"header {name!r} {problem}")
    for name, check in _PROPERTY_CHECKS.items():
        if properties and name in properties and (problem := check(properties[name])):
            raise InvalidTaskMessage(f"property {name!r} {problem}")
    size = len(json.dumps(headers, default=repr))
    if size > MAX_HEADERS_BYTES:
        raise InvalidTaskMessage(f"the headers are {size} bytes, over {MAX_HEADERS_BYTES}")
    if headers["task"] not in KNOWN_TASKS:
        raise InvalidTaskMessage(f"unknown task {_excerpt(headers['task'])}")
    eta = headers.get("eta")
    if eta is not None and now is not None and max_eta_s is not None:
        ahead = (as_utc(datetime.fromisoformat(eta)) - now).total_seconds()
        if ahead > max_eta_s:
            raise InvalidTaskMessage(
                f"header 'eta' is {ahead:.0f} s ahead, beyond the {max_eta_s:.0f} s a worker "
                "may hold a message"
            )
    if "compression" in headers:
        # We never compress; a compressed body could be a decompression bomb.
        raise InvalidTaskMessage("header 'compression' is refused (we never compress)")


def check_json_body(task: str, body: bytes) -> dict[str, Any]:
    """A protocol 2 JSON body, ``[args, kwargs, embed]``, with the arguments checked;
    returns them bound by name."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidTaskMessage(f"the body is {len(body)} bytes, over {MAX_BODY_BYTES}")
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidTaskMessage("the body is not valid JSON") from None
    if not isinstance(decoded, list) or len(decoded) != 3:
        raise InvalidTaskMessage("the body must be a list [args, kwargs, embed]")
    args, kwargs, embed = decoded
    if not isinstance(embed, dict) or not all(
        value is None or isinstance(value, list | dict) for value in embed.values()
    ):
        raise InvalidTaskMessage(
            "the body's embed (callbacks, errbacks, chain, chord) is malformed"
        )
    return check_arguments(task, args, kwargs)


def check_json_message(
    headers: Any,
    body: bytes,
    properties: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
    max_eta_s: float | None = None,
) -> dict[str, Any]:
    """A whole JSON task message: headers, then body and arguments."""
    check_headers(headers, properties, now=now, max_eta_s=max_eta_s)
    return check_json_body(headers["task"], body)


def run_and_chunk(task: Any, arguments: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The run and chunk a checked call is about."""
    if task in {TASK_PLAN_RUN, TASK_COMMIT_RUN, TASK_TRANSFORM_CHUNK}:
        return arguments.get("run_id"), arguments.get("chunk_index")
    return None, None


def _excerpt(text: str, limit: int = 60) -> str:
    # A hostile value can be megabytes or hold control characters: quote a short, safe part.
    shown = repr(text[:limit])
    return shown + f"… ({len(text)} characters)" if len(text) > limit else shown

"""RabbitMQ definitions for a deployment: the checked-in template plus each user's
password hash, computed from a password given at deploy time.

The template (infra/rabbitmq/definitions.json) names users but holds no password or
hash, so nothing secret is ever committed; a user imported from it as it is cannot log
in (RabbitMQ refuses blank passwords).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

# RabbitMQ's default: a 4-byte salt, then SHA-256 of salt + UTF-8 password, base64-encoded.
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
# bandit: a variable name prefix
PASSWORD_VARIABLE_PREFIX = "RABBITMQ_PASSWORD_"  # nosec B105


class MissingPasswords(ValueError):
    """Some users of the template have no password in the environment."""

    def __init__(self, variables: list[str]) -> None:
        super().__init__("no password for RabbitMQ users: set " + ", ".join(variables))
        self.variables = variables


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's salted SHA-256 hash of ``password`` (a fresh random salt by default)."""
    salt = os.urandom(4) if salt is None else salt
    if len(salt) != 4:
        raise ValueError("RabbitMQ password salts are 4 bytes")
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def password_variable(user: str) -> str:
    """The environment variable holding a user's password:
    ``etl-worker`` -> ``RABBITMQ_PASSWORD_ETL_WORKER``."""
    return PASSWORD_VARIABLE_PREFIX + re.sub(r"[^A-Z0-9]", "_", user.upper())


def with_passwords(definitions: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``definitions`` in which every user has the hash of the password in its
    environment variable; raises MissingPasswords naming every variable unset or empty."""
    rendered = copy.deepcopy(definitions)
    users = rendered.get("users", [])
    missing = [
        password_variable(user["name"])
        for user in users
        if not environ.get(password_variable(user["name"]))
    ]
    if missing:
        raise MissingPasswords(missing)
    for user in users:
        user["password_hash"] = password_hash(environ[password_variable(user["name"])])
        user["hashing_algorithm"] = HASHING_ALGORITHM
    return rendered

"""Reading the deployment files (compose, .env.example, RabbitMQ definitions) in tests."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
DEFINITIONS_FILE = PROJECT_ROOT / "infra" / "rabbitmq" / "definitions.json"
RABBITMQ_CONF = PROJECT_ROOT / "infra" / "rabbitmq" / "rabbitmq.conf"
DOCKERFILE = "infra/Dockerfile"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ is a "$".
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def load_compose() -> dict[str, Any]:
    """docker-compose.yml, with YAML anchors and merge keys resolved."""
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def load_env_example() -> dict[str, str]:
    """.env.example as NAME -> value (empty for the secrets to fill in)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def filled_env_example() -> dict[str, str]:
    """.env.example with a made-up value for every empty secret, as an operator fills it."""
    return {
        name: value or f"test{name.lower().replace('_', '')}"
        for name, value in load_env_example().items()
    }


class UnsetVariable(KeyError):
    """A ${NAME:?error} whose NAME is unset or empty."""


def variables_used(text: str) -> set[str]:
    """Every NAME of a ${NAME...} in text."""
    return {match.group(1) for match in _VARIABLE.finditer(text) if match.group(1)}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation, for the forms docker-compose.yml uses."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        found = env.get(name)
        if operator in (":-", ":?"):
            found = found or None
        if found is not None:
            return found
        if operator and operator.endswith("?"):
            raise UnsetVariable(f"{name}: {argument}")
        return argument or ""

    return _VARIABLE.sub(replace, value)


def environment_of(service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """A service's environment, interpolated from env."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {name: interpolate(str(value), env) for name, value in raw.items()}


def etl_image_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run our image (built from infra/Dockerfile)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if (service.get("build") or {}).get("dockerfile") == DOCKERFILE
    }


def load_definitions() -> dict[str, Any]:
    """infra/rabbitmq/definitions.json."""
    import json

    document: dict[str, Any] = json.loads(DEFINITIONS_FILE.read_text())
    return document


def relocated_definitions(
    definitions: dict[str, Any], vhost: str, user_prefix: str
) -> dict[str, Any]:
    """The definitions moved into another vhost, their users renamed ``<prefix><name>``,
    so a test can import them into a shared broker without touching anything else."""
    moved = copy.deepcopy(definitions)
    moved["vhosts"] = [{"name": vhost}]
    for user in moved.get("users", []):
        user["name"] = user_prefix + user["name"]
    for permission in moved.get("permissions", []):
        permission["user"] = user_prefix + permission["user"]
    for kind in ("permissions", "exchanges", "queues", "bindings", "policies"):
        for item in moved.get(kind, []):
            item["vhost"] = vhost
    return moved


def definitions_topology(definitions: dict[str, Any]) -> dict[str, Any]:
    """Exchanges, queues and bindings of definitions, in a comparable shape."""
    return {
        "exchanges": {
            e["name"]: (e["type"], e["durable"], e["auto_delete"], e.get("arguments") or {})
            for e in definitions["exchanges"]
        },
        "queues": {
            q["name"]: (q["durable"], q["auto_delete"], q.get("arguments") or {})
            for q in definitions["queues"]
        },
        "bindings": {
            (b["source"], b["destination"], b["destination_type"], b["routing_key"])
            for b in definitions["bindings"]
        },
    }


def app_topology(queue_type: str, delivery_limit: int) -> dict[str, Any]:
    """What ``declare_topology`` declares, in the shape of ``definitions_topology``."""
    from etl.adapters.topology import all_queues

    queues = all_queues(queue_type, delivery_limit)
    return {
        "exchanges": {
            q.exchange.name: (
                q.exchange.type,
                q.exchange.durable,
                q.exchange.auto_delete,
                q.exchange.arguments or {},
            )
            for q in queues
        },
        "queues": {q.name: (q.durable, q.auto_delete, q.queue_arguments or {}) for q in queues},
        "bindings": {(q.exchange.name, q.name, "queue", q.routing_key or "") for q in queues},
    }


class ImportedDefinitions:
    """Definitions imported into the local broker under a vhost and user names of their
    own, with a password per user; ``remove()`` deletes the vhost and every user."""

    def __init__(self, tag: str, *, with_hashes: bool = True) -> None:
        from etl.adapters.rabbitmq_definitions import password_variable, with_passwords

        self.vhost = f"etl-test-defs-{tag}"
        self.template = load_definitions()
        moved = relocated_definitions(self.template, self.vhost, f"{self.vhost}-")
        self.users = {user["name"][len(self.vhost) + 1 :]: user["name"] for user in moved["users"]}
        self.passwords = {role: f"pw-{tag}-{role}" for role in self.users}
        if with_hashes:
            env = {password_variable(self.users[r]): p for r, p in self.passwords.items()}
            moved = with_passwords(moved, env)
        self.definitions = moved

    def add_unrendered_copy(self, role: str) -> str:
        """Add a copy of a role's user and permissions as the template has it (no
        password hash), as if the render step had been skipped; returns its role name."""
        copy_role = f"unrendered-{role}"
        user = next(u for u in self.template["users"] if u["name"] == role)
        permission = next(p for p in self.template["permissions"] if p["user"] == role)
        self.users[copy_role] = f"{self.vhost}-{copy_role}"
        self.passwords[copy_role] = self.passwords[role]
        self.definitions["users"].append({**user, "name": self.users[copy_role]})
        self.definitions["permissions"].append(
            {**permission, "user": self.users[copy_role], "vhost": self.vhost}
        )
        return copy_role

    def load(self) -> None:
        """``rabbitmqctl import_definitions`` (from stdin), then wait until every queue,
        binding and permission is there: the import finishes asynchronously."""
        import json
        import subprocess

        from support import rabbitmqctl, wait_until

        subprocess.run(
            ["rabbitmqctl", "-q", "import_definitions"],
            input=json.dumps(self.definitions),
            text=True,
            capture_output=True,
            check=True,
            timeout=60,
        )

        def complete() -> bool:
            queues = rabbitmqctl("list_queues", "-p", self.vhost, "name", "--no-table-headers")
            permissions = rabbitmqctl("list_permissions", "-p", self.vhost, "--no-table-headers")
            return len(queues.split()) == len(self.definitions["queues"]) and len(
                permissions.splitlines()
            ) == len(self.definitions["permissions"])

        wait_until(complete, timeout_s=30, what=f"the definitions imported into {self.vhost}")

    def url(self, role: str, host: str = "127.0.0.1:5672") -> str:
        """The AMQP URL of one role's user (``etl-worker``, ``etl-api``, ...)."""
        return f"amqp://{self.users[role]}:{self.passwords[role]}@{host}/{self.vhost}"

    def remove(self) -> None:
        """Delete the vhost and the users, whatever state the import reached."""
        import subprocess

        commands = [
            ["delete_vhost", self.vhost],
            *(["delete_user", u] for u in self.users.values()),
        ]
        # Side by side: each rabbitmqctl spends most of a second starting up.
        running = [
            subprocess.Popen(
                ["rabbitmqctl", "-q", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for args in commands
        ]
        for process in running:
            process.wait(timeout=60)

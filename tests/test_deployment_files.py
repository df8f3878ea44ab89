"""Deployment files, checked without a container engine: docker-compose.yaml, the three Dockerfiles,
mlflow/, .env.example and configs/compose.yaml.

The compose file is parsed with PyYAML (anchors and `<<` merges resolved, as compose does) and, where
the `docker-compose` binary is installed, validated by it (`config -q`). CI must have it
(`apt-get install -y docker-compose`): with CI=true a missing binary fails instead of skipping.
"""

from __future__ import annotations

import configparser
import itertools
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"

REQUIRED_SERVICES = {
    "postgres", "redis", "minio", "minio-init", "mlflow",
    "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
    "airflow-triggerer", "airflow-worker", "airflow-gpu-worker",
}
ONE_SHOT_SERVICES = {"minio-init", "airflow-init"}
AIRFLOW_SERVICES = {name for name in REQUIRED_SERVICES if name.startswith("airflow-")}
AIRFLOW_DAEMONS = AIRFLOW_SERVICES - ONE_SHOT_SERVICES
# Keys Debian's docker-compose 1.29 rejects (see shared STACK.md); kept out so one file serves v1 and v2.
V1_REJECTED_TOP_LEVEL = {"name", "include"}

# An environment variable holding a secret: its value must come from .env, never from the file.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|ACCESS_KEY|REDISCLI_AUTH")
# `${NAME}` or `${NAME:?message}` / `${NAME?message}`: a reference with no literal fallback.
SECRET_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?\?[^}]*)?\}$")
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]*:(\$\{[^}]*\}|[^@\s]+)@")
# Compose interpolation: `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?err}`, `${NAME?err}`;
# `$${...}` is an escaped literal for the container's shell.
COMPOSE_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])[^}]*)?\}")


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict), "no services: mapping"
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_strings(item)


def compose_variables(compose: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(every variable referenced, those referenced at least once without a default)."""
    referenced: set[str] = set()
    without_default: set[str] = set()
    for text in walk_strings(compose):
        for match in COMPOSE_VARIABLE.finditer(text):
            referenced.add(match.group(1))
            if match.group(2) not in (":-", "-"):
                without_default.add(match.group(1))
    return referenced, without_default


def env_example() -> tuple[dict[str, str], set[str]]:
    """(variables set in .env.example, variables only documented there as `# NAME=default`)."""
    assigned: dict[str, str] = {}
    documented: set[str] = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line):
            assigned[match.group(1)] = match.group(2)
        elif match := re.match(r"^#\s*([A-Z_][A-Z0-9_]*)=", line):
            documented.add(match.group(1))
    return assigned, documented


def healthcheck_command(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    return " ".join(test) if isinstance(test, list) else str(test or "")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    context: Path
    instructions: tuple[Instruction, ...]

    @classmethod
    def parse(cls, path: Path, context: Path) -> Dockerfile:
        instructions: list[Instruction] = []
        pending: list[str] = []
        start = 0
        for number, raw in enumerate(path.read_text().splitlines(), start=1):
            stripped = raw.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if pending and stripped.startswith("#"):
                continue  # comment lines inside a continued instruction are dropped by Docker too
            if not pending:
                start = number
            continued = stripped.endswith("\\")
            pending.append(stripped[:-1] if continued else stripped)
            if not continued:
                keyword, _, arguments = " ".join(pending).partition(" ")
                instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
                pending = []
        assert not pending, f"{path}: file ends inside a continued instruction"
        return cls(path, context, tuple(instructions))

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def arg_defaults(self) -> dict[str, str]:
        defaults: dict[str, str] = {}
        for item in self.all("ARG"):
            name, _, value = item.arguments.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
        return defaults

    def expand(self, text: str) -> str:
        defaults = self.arg_defaults()
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda match: defaults.get(match.group(1), match.group(0)),
                      text)

    def index_of_run(self, pattern: str) -> int:
        for index, item in enumerate(self.instructions):
            if item.keyword == "RUN" and re.search(pattern, item.arguments):
                return index
        raise AssertionError(f"{self.path.relative_to(REPO)}: no RUN matching {pattern!r}")


PROJECT_DOCKERFILES = {
    "Dockerfile": REPO / "Dockerfile",
    "docker/airflow.Dockerfile": REPO / "docker" / "airflow.Dockerfile",
}
ALL_DOCKERFILES = {**PROJECT_DOCKERFILES, "mlflow/Dockerfile": REPO / "mlflow" / "Dockerfile"}
CONTEXTS = {"Dockerfile": REPO, "docker/airflow.Dockerfile": REPO, "mlflow/Dockerfile": REPO / "mlflow"}
# What the project images may copy: the code, configs and packaging files, nothing else.
ALLOWED_PROJECT_COPIES = {
    "requirements-torch.txt", "requirements.lock", "pyproject.toml", "README.md",
    "tasks", "plugins", "dags", "configs",
}


def dockerfile(name: str) -> Dockerfile:
    path = ALL_DOCKERFILES[name]
    assert path.is_file(), f"{name} is missing"
    return Dockerfile.parse(path, CONTEXTS[name])


def copy_sources(item: Instruction) -> list[str]:
    words = [word for word in shlex.split(item.arguments) if not word.startswith("--")]
    return words[:-1]


def dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    assert path.is_file(), ".dockerignore is missing"
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def is_dockerignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule, closely enough for our patterns: a path is out when it or a parent matches the
    last matching pattern, and that pattern is not a `!` exception."""
    parts = PurePosixPath(relative.rstrip("/")).parts
    prefixes = ["/".join(parts[: count + 1]) for count in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        if any(fnmatch(prefix, candidate) for prefix in prefixes for candidate in candidates):
            ignored = not negate
    return ignored


# ------------------------------------------------------------------------------------------- compose


def test_every_required_service_exists(services: dict[str, dict[str, Any]]) -> None:
    assert REQUIRED_SERVICES <= services.keys(), f"missing services: {sorted(REQUIRED_SERVICES - services.keys())}"


def test_compose_uses_no_key_docker_compose_1_29_rejects(compose: dict[str, Any]) -> None:
    assert not V1_REJECTED_TOP_LEVEL & compose.keys(), "top-level name:/include: break docker-compose 1.29"
    for name, service in compose["services"].items():
        assert "start_interval" not in (service.get("healthcheck") or {}), f"{name}: healthcheck start_interval"
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, dict):
            for target, condition in depends_on.items():
                assert "required" not in (condition or {}), f"{name}: depends_on.{target}.required"


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT_SERVICES:
            assert service.get("restart") == "no", f"one-shot {name} must not restart"
            continue
        healthcheck = service.get("healthcheck") or {}
        test = healthcheck.get("test")
        assert test and not healthcheck.get("disable") and test != ["NONE"], f"{name} has no healthcheck"
        assert service.get("restart") in {"unless-stopped", "always"}, f"{name}: restart policy"


def test_service_healthy_conditions_point_at_services_with_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            wanted = (condition or {}).get("condition")
            if wanted == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target} to be healthy: no healthcheck"
            if wanted == "service_completed_successfully":
                assert target in ONE_SHOT_SERVICES, f"{name} waits for {target} to exit, but it runs forever"


def test_startup_order(services: dict[str, dict[str, Any]]) -> None:
    def condition(service: str, target: str) -> str | None:
        return ((services[service].get("depends_on") or {}).get(target) or {}).get("condition")

    assert condition("minio-init", "minio") == "service_healthy"
    assert condition("mlflow", "postgres") == "service_healthy"
    assert condition("mlflow", "minio-init") == "service_completed_successfully"
    assert condition("airflow-init", "postgres") == "service_healthy"
    for name in AIRFLOW_DAEMONS:
        assert condition(name, "postgres") == "service_healthy", name
        assert condition(name, "redis") == "service_healthy", name
        assert condition(name, "airflow-init") == "service_completed_successfully", name
    for worker in ("airflow-worker", "airflow-gpu-worker"):
        assert condition(worker, "airflow-apiserver") == "service_healthy", worker
        assert condition(worker, "mlflow") == "service_healthy", worker


def test_named_volumes_are_declared_and_hold_the_state(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name} uses undeclared named volume {source}"
                used.add(source)
            elif source.startswith("."):
                assert (REPO / source).exists(), f"{name} bind-mounts missing path {source}"
    assert declared <= used, f"declared but unused volumes: {sorted(declared - used)}"

    def mount_of(service: str, target: str) -> str:
        for volume in compose["services"][service].get("volumes") or []:
            if isinstance(volume, str) and volume.split(":")[1] == target:
                return volume.split(":")[0]
        raise AssertionError(f"{service} mounts nothing on {target}")

    assert mount_of("postgres", "/var/lib/postgresql/data") in declared
    assert mount_of("minio", "/data") in declared
    assert mount_of("redis", "/data") in declared


def test_no_secret_is_written_in_the_compose_file(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for key, value in environment_of(service).items():
            if SECRET_NAME.search(key) and not key.endswith(("_FILE", "_PATH")):
                assert SECRET_REFERENCE.match(value), f"{name}: {key} must be ${{VAR}} from .env, got {value!r}"
            for password in CREDENTIALS_IN_URL.findall(value):
                assert SECRET_REFERENCE.match(password), f"{name}: {key} has a literal password in its URL"
        command = service.get("command")
        words = command if isinstance(command, list) else shlex.split(command or "")
        for flag, value in itertools.pairwise(words):
            if flag == "--requirepass":
                assert SECRET_REFERENCE.match(value), f"{name}: --requirepass with a literal password"


def test_airflow_services_share_the_common_environment(compose: dict[str, Any]) -> None:
    common = compose.get("x-airflow-common")
    assert isinstance(common, dict), "x-airflow-common anchor is missing"
    shared = environment_of(common)
    expected = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://airflow-apiserver:8080/execution/",
        "FRESHET_CONFIG": "/opt/freshet/configs/compose.yaml",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000",
    }
    for key, value in expected.items():
        assert shared.get(key) == value, f"x-airflow-common: {key}={shared.get(key)!r}, want {value!r}"
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND",
                "AIRFLOW__CORE__PARALLELISM", "AIRFLOW__API_AUTH__JWT_SECRET", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert shared.get(key), f"x-airflow-common lacks {key}"
    assert shared["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which the lock does not ship.
    assert shared["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert shared["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert (REPO / "configs" / "compose.yaml").is_file()
    for name in AIRFLOW_SERVICES:
        own = environment_of(compose["services"][name])
        differing = sorted(key for key, value in shared.items() if own.get(key) != value)
        assert not differing, f"{name} does not carry the x-airflow-common environment: {differing}"


def test_gpu_worker_reserves_an_nvidia_gpu_on_its_own_queue(services: dict[str, dict[str, Any]]) -> None:
    worker = services["airflow-gpu-worker"]
    assert "gpu" in (worker.get("profiles") or []), "GPU worker must be opt-in (profile gpu)"
    command = worker["command"] if isinstance(worker["command"], list) else shlex.split(worker["command"])
    assert command[:3] == ["airflow", "celery", "worker"]
    assert command[command.index("--queues") + 1] == "gpu"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", [])
               and (device.get("count") == "all" or int(device.get("count", 0)) >= 1) for device in devices), devices
    cpu_worker = services["airflow-worker"]
    cpu_command = cpu_worker["command"] if isinstance(cpu_worker["command"], list) else shlex.split(cpu_worker["command"])
    assert "gpu" not in cpu_command, "the CPU worker must not take gpu-queue tasks"
    assert "deploy" not in cpu_worker


def test_mlflow_serves_artifacts_with_basic_auth(services: dict[str, dict[str, Any]]) -> None:
    mlflow = services["mlflow"]
    assert (REPO / mlflow["build"]["context"]).resolve() == REPO / "mlflow"
    environment = environment_of(mlflow)
    assert environment["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert environment["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert environment["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert environment["MLFLOW_AUTH_DATABASE_URI"].startswith("postgresql+psycopg2://")
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert SECRET_REFERENCE.match(environment.get(key, "")), key
    assert "/health" in healthcheck_command(mlflow)
    entrypoint = (REPO / "mlflow" / "entrypoint.sh").read_text()
    server = entrypoint[entrypoint.index("exec mlflow server"):]
    for flag in ('--backend-store-uri "$MLFLOW_BACKEND_STORE_URI"',
                 '--artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"',
                 "--serve-artifacts", "--host 0.0.0.0", "--port 5000", "--app-name basic-auth"):
        assert flag in server, f"entrypoint.sh: mlflow server lacks {flag}"


def test_postgres_init_creates_every_database_the_services_use(services: dict[str, dict[str, Any]]) -> None:
    mounts = [volume for volume in services["postgres"]["volumes"] if "/docker-entrypoint-initdb.d/" in volume]
    assert mounts, "postgres mounts no init script"
    script = (REPO / mounts[0].split(":")[0]).read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+)", script))
    urls = [value for service in services.values() for value in environment_of(service).values()
            if "@postgres:5432/" in value]
    wanted = {url.split("@postgres:5432/")[1].split("?")[0] for url in urls}
    assert wanted == {"airflow", "mlflow", "mlflow_auth"}, wanted
    assert wanted <= created, f"init script does not create {sorted(wanted - created)}"
    assert "pg_isready" in healthcheck_command(services["postgres"])


def _docker_compose(*arguments: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("docker-compose is not installed; CI must run `apt-get install -y docker-compose`")
        pytest.skip("docker-compose binary not installed (apt-get install -y docker-compose)")
    referenced, _ = compose_variables(yaml.safe_load(COMPOSE_FILE.read_text()))
    # Only the env file may provide the variables, whatever the caller's shell has exported.
    environment = {key: value for key, value in os.environ.items() if key not in referenced}
    return subprocess.run(
        [binary, "--env-file", str(env_file), "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), *arguments],
        capture_output=True, text=True, env=environment, timeout=120, check=False,
    )


def test_docker_compose_validates_the_file_with_the_example_env() -> None:
    result = _docker_compose("config", "-q", env_file=ENV_EXAMPLE)
    assert result.returncode == 0, f"docker-compose config rejected the file:\n{result.stderr}"
    services = _docker_compose("--profile", "gpu", "config", "--services", env_file=ENV_EXAMPLE)
    assert services.returncode == 0, services.stderr
    assert REQUIRED_SERVICES <= set(services.stdout.split())


def test_docker_compose_refuses_to_run_without_the_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _docker_compose("config", "-q", env_file=empty)
    assert result.returncode != 0, "compose accepted the file with no secrets set"
    assert "in .env" in result.stderr, result.stderr


# ------------------------------------------------------------------------------------ env and config


def test_env_example_lists_every_variable_the_compose_file_uses(compose: dict[str, Any]) -> None:
    referenced, without_default = compose_variables(compose)
    assigned, documented = env_example()
    assert without_default <= assigned.keys(), f".env.example lacks {sorted(without_default - assigned.keys())}"
    assert referenced <= assigned.keys() | documented, (
        f".env.example does not mention {sorted(referenced - assigned.keys() - documented)}")
    stale = (assigned.keys() | documented) - referenced
    assert not stale, f".env.example lists variables docker-compose.yaml never uses: {sorted(stale)}"
    for key, value in assigned.items():
        if SECRET_NAME.search(key):
            assert value.startswith("change-me"), f".env.example: {key} must be a change-me placeholder"


def test_env_file_is_git_ignored() -> None:
    gitignore = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in [line.strip() for line in gitignore], ".gitignore must list .env"


def test_compose_pipeline_config_loads_with_the_workers_environment(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.config import load_config

    path = REPO / "configs" / "compose.yaml"
    shared = environment_of(compose["x-airflow-common"])
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", path.read_text()))
    assert used <= shared.keys(), f"configs/compose.yaml needs {sorted(used - shared.keys())} from the workers"
    monkeypatch.setenv("FRESHET_ARTIFACT_ROOT", "s3://freshet-artifacts/pipeline")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared["MLFLOW_TRACKING_URI"])
    config = load_config(path)
    assert config.artifact_root == "s3://freshet-artifacts/pipeline"
    assert config.mlflow.tracking_uri == "http://mlflow:5000"
    assert config.mlflow.artifact_location is None, "artifacts must go through the server's proxy"
    assert config.runner.mode == "local"


def test_requirements_carry_what_the_compose_deployment_imports() -> None:
    # CeleryExecutor needs the celery provider; Airflow on PostgreSQL derives an asyncpg engine;
    # an s3:// artifact root goes through fsspec's s3fs.
    needed = {"apache-airflow-providers-celery", "asyncpg", "s3fs"}
    for name in ("requirements.in", "requirements.lock"):
        path = REPO / name
        if not path.exists():
            continue
        pinned = {re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower()
                  for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}
        assert needed <= pinned, f"{name} lacks {sorted(needed - pinned)}"


# ---------------------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", sorted(ALL_DOCKERFILES))
def test_every_base_image_is_pinned_to_a_tag(name: str) -> None:
    parsed = dockerfile(name)
    stages: set[str] = set()
    froms = parsed.all("FROM")
    assert froms, f"{name} has no FROM"
    for item in froms:
        words = parsed.expand(item.arguments).split()
        words = [word for word in words if not word.startswith("--platform")]
        image = words[0]
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if image in stages or image == "scratch":
            continue
        repository, _, tag = image.split("@")[0].rpartition(":")
        assert "@sha256:" in image or (repository and "/" not in tag and tag and tag != "latest"), (
            f"{name}:{item.line}: FROM {image} is not pinned to a tag")


# How each project image installs freshet: the step image from the wheel it builds (what `pip install` of the
# package gives, every module and the `freshet` command), the Airflow image from the mounted checkout.
PACKAGE_INSTALLS = {"Dockerfile": r"pip install --no-deps /tmp/wheels/freshet-\*\.whl(?:\s|$)",
                    "docker/airflow.Dockerfile": r"pip install --no-deps (?:-e )?\.(?:\s|$)"}


@pytest.mark.parametrize("name", sorted(PROJECT_DOCKERFILES))
def test_project_image_installs_torch_then_the_lock_then_the_package(name: str) -> None:
    parsed = dockerfile(name)
    torch = parsed.index_of_run(r"pip install\b.*--index-url \"?\$\{?TORCH_INDEX_URL\}?\"?.*-r requirements-torch\.txt")
    lock = parsed.index_of_run(r"pip install\b(?:(?!&&).)*-r requirements\.lock")
    package = parsed.index_of_run(PACKAGE_INSTALLS[name])
    assert torch < lock < package, f"{name}: install order must be torch, lock, package"
    assert parsed.arg_defaults().get("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("name", sorted(ALL_DOCKERFILES))
def test_image_runs_as_a_numeric_non_root_user(name: str) -> None:
    parsed = dockerfile(name)
    users = parsed.all("USER")
    assert users, f"{name} never leaves root"
    user = parsed.expand(users[-1].arguments).split(":")[0]
    assert user.isdigit() and int(user) != 0, f"{name}: final USER {user!r} must be a numeric non-root id"


@pytest.mark.parametrize("name", sorted(ALL_DOCKERFILES))
def test_pip_keeps_no_cache_in_the_image(name: str) -> None:
    parsed = dockerfile(name)
    assert any(re.search(r"\bPIP_NO_CACHE_DIR=(1|true|on)\b", item.arguments) for item in parsed.all("ENV")), name


@pytest.mark.parametrize("name", sorted(ALL_DOCKERFILES))
def test_copies_are_local_existing_and_not_dockerignored(name: str) -> None:
    parsed = dockerfile(name)
    patterns = dockerignore_patterns() if parsed.context == REPO else []
    for item in parsed.all("ADD"):
        assert not re.search(r"(https?|ftp|git)://|git@", item.arguments), f"{name}:{item.line}: ADD of a remote URL"
    for item in parsed.all("COPY"):
        if "--from=" in item.arguments:
            continue
        for source in copy_sources(item):
            assert (parsed.context / source).exists(), f"{name}:{item.line}: COPY source {source} does not exist"
            assert not is_dockerignored(source, patterns), f"{name}:{item.line}: {source} is excluded by .dockerignore"
            if name in PROJECT_DOCKERFILES:
                assert source.rstrip("/") in ALLOWED_PROJECT_COPIES, f"{name}:{item.line}: copies {source}"


@pytest.mark.parametrize("name", sorted(PROJECT_DOCKERFILES))
def test_project_image_layout(name: str) -> None:
    parsed = dockerfile(name)
    assert parsed.all("WORKDIR")[-1].arguments == "/opt/freshet"
    copied = {source.rstrip("/") for item in parsed.all("COPY") for source in copy_sources(item)}
    needed = {"tasks", "plugins", "configs", "pyproject.toml", "README.md"}
    assert needed | ({"dags"} if name == "docker/airflow.Dockerfile" else set()) <= copied
    labels = " ".join(item.arguments for item in parsed.all("LABEL"))
    for label in ("org.opencontainers.image.title", "org.opencontainers.image.source",
                  "org.opencontainers.image.version", "org.opencontainers.image.revision"):
        assert label in labels, f"{name}: no {label} label"
    entrypoint = parsed.all("ENTRYPOINT")
    assert not entrypoint or entrypoint[-1].arguments == '["tini", "--"]', "the operator gives the command"


def stages(parsed: Dockerfile) -> list[list[Instruction]]:
    """The instructions of each build stage, a FROM first."""
    found: list[list[Instruction]] = []
    for item in parsed.instructions:
        if item.keyword == "FROM":
            found.append([])
        if found:
            found[-1].append(item)
    return found


def test_step_image_installs_the_wheel_it_builds_not_the_source_tree() -> None:
    parsed = dockerfile("Dockerfile")
    *builders, image = stages(parsed)
    (builder,) = builders
    builder_name = builder[0].arguments.split()[-1]
    assert builder[0].arguments.split()[-2].upper() == "AS"
    builder_copies = {source.rstrip("/") for item in builder if item.keyword == "COPY" for source in copy_sources(item)}
    assert {"pyproject.toml", "README.md", "tasks", "plugins"} <= builder_copies
    assert any(re.search(r"pip wheel --no-deps --no-build-isolation --wheel-dir /wheels \.(?:\s|$)", item.arguments)
               for item in builder if item.keyword == "RUN"), "the wheel stage builds no wheel into /wheels"
    assert any(re.search(r"\bsetuptools==\$\{?SETUPTOOLS_VERSION\}?", item.arguments)
               for item in builder if item.keyword == "RUN"), "the build backend is not pinned"
    # The image takes the wheel and no code: a tasks/ in the working directory would shadow the installed
    # package for `python -m tasks.<step>`.
    image_copies = [item for item in image if item.keyword == "COPY"]
    assert any(item.arguments.split() == [f"--from={builder_name}", "/wheels/", "/tmp/wheels/"]
               for item in image_copies), "the image does not take the wheel stage's wheel"
    sources = {source.rstrip("/") for item in image_copies if "--from=" not in item.arguments
               for source in copy_sources(item)}
    assert sources.isdisjoint({"tasks", "plugins", "dags", "pyproject.toml"}), f"the image copies code: {sources}"
    assert any("pip check" in item.arguments for item in image if item.keyword == "RUN")


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv", ".freshet", ".git", "tasks/__pycache__", "mlflow.db", "mlruns", "mlartifacts", "runs", ".env",
                 "build", "freshet.egg-info", "dist"):
        assert is_dockerignored(path, patterns), f".dockerignore does not exclude {path}"
    for path in ("tasks", "plugins", "dags", "configs", "pyproject.toml", "requirements.lock"):
        assert not is_dockerignored(path, patterns), f".dockerignore excludes {path}, which the images need"


def test_mlflow_image_pins_its_packages() -> None:
    parsed = dockerfile("mlflow/Dockerfile")
    installs = " ".join(parsed.expand(item.arguments) for item in parsed.all("RUN"))
    assert '"mlflow[auth]==3.17.2"' in installs
    assert re.search(r'"psycopg2-binary==\d+(\.\d+)+"', installs)
    assert re.search(r'"boto3==\d+(\.\d+)+"', installs)


# ---------------------------------------------------------------------------------------------- mlflow/


def test_mlflow_directory_can_never_shadow_the_library() -> None:
    directory = REPO / "mlflow"
    python_files = sorted(str(path.relative_to(REPO)) for path in directory.rglob("*.py"))
    assert not python_files, f"mlflow/ must hold no Python files: {python_files}"
    assert not (directory / "__init__.py").exists()
    for name in ("Dockerfile", "entrypoint.sh", "basic_auth.ini", "README.md"):
        assert (directory / name).is_file(), f"mlflow/{name} is missing"


@pytest.mark.parametrize("script", ["mlflow/entrypoint.sh", "docker/postgres-init.sh"])
def test_shell_scripts_are_strict_executable_and_parse(script: str) -> None:
    path = REPO / script
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n"), f"{script}: bash shebang"
    assert "set -euo pipefail" in text, f"{script}: set -euo pipefail"
    assert os.access(path, os.X_OK), f"{script} is not executable (git update-index --chmod=+x)"
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_mlflow_entrypoint_names_each_missing_setting(tmp_path: Path) -> None:
    script = REPO / "mlflow" / "entrypoint.sh"
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    cases = [
        ({}, "MLFLOW_BACKEND_STORE_URI is not set"),
        ({"MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db"}, "MLFLOW_ARTIFACTS_DESTINATION is not set"),
        ({"MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db", "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/"},
         "MLFLOW_FLASK_SERVER_SECRET_KEY is not set"),
        ({"MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db", "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/",
          "MLFLOW_FLASK_SERVER_SECRET_KEY": "k"}, "AWS_ACCESS_KEY_ID is not set"),
        ({"MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db", "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path),
          "MLFLOW_FLASK_SERVER_SECRET_KEY": "k", "MLFLOW_AUTH_ADMIN_PASSWORD": "short"}, "at least 12 characters"),
    ]
    for extra, message in cases:
        result = subprocess.run(["bash", str(script)], env={**base, **extra}, capture_output=True, text=True,
                                timeout=30, check=False)
        assert result.returncode == 64 and message in result.stderr, (extra, result.stderr)


def test_mlflow_auth_config_has_mlflows_format_and_no_secret() -> None:
    parser = configparser.ConfigParser()
    parser.read(REPO / "mlflow" / "basic_auth.ini")
    section = parser["mlflow"]
    assert section["default_permission"] in {"READ", "EDIT", "MANAGE", "NO_PERMISSIONS"}
    assert section["database_uri"].startswith(("sqlite:", "postgresql"))
    assert section["admin_username"]
    assert "admin_password" not in section, "the admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD"
    assert section.get("authorization_function", "").startswith("mlflow.server.auth:")

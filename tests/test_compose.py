"""temporal-compose.yml and the Dockerfile, checked without Docker (none on the build
machines): the services, images and volumes they name exist, the `oslira` commands they run
are real, and the image installs the package set pyproject.toml declares. No servers."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any, get_args
from urllib.parse import urlsplit

import typer.main
import yaml
from packaging.specifiers import SpecifierSet
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "temporal-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Upstream images the stack may pull; everything else is built from this repository.
UPSTREAM_IMAGES = {"postgres", "temporalio/auto-setup", "temporalio/ui"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# The `oslira` subcommand each application service ends up running.
APP_COMMANDS = {"migrate": "migrate", "api": "api", "worker": "worker"}
# Settings the stack is useless without: the API refuses to start without a JWT secret,
# the workers without their providers.
REQUIRED_FROM_HOST = {"api": {"JWT_SECRET"}, "worker": {"APIFY_TOKEN", "OPENAI_API_KEY"}}
ROLE_PASSWORDS = {"DB_API_PASSWORD", "DB_WORKER_PASSWORD"}
# pip options that install something other than the project (shown as install targets).
NOT_THE_PROJECT = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable"}


# --- reading the files ----------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def built_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if "build" in s}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency -> condition, for both the list and the mapping form."""
    given = service.get("depends_on") or {}
    if isinstance(given, list):
        return dict.fromkeys(given, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in given.items()}


def environment(service: dict[str, Any]) -> dict[str, str]:
    given = service.get("environment") or {}
    if isinstance(given, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in given)
    return {key: "" if value is None else str(value) for key, value in given.items()}


def command_text(service: dict[str, Any]) -> str:
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif value:
            parts.extend(str(v) for v in value)
    return " ".join(parts)


def oslira_subcommands(text: str) -> list[str]:
    return re.findall(r"(?<![\w./:-])oslira\s+([a-z][a-z0-9-]*)", text)


@cache
def real_subcommands() -> frozenset[str]:
    from cli.main import app

    group = typer.main.get_command(app)
    return frozenset(group.commands)  # type: ignore[attr-defined]


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


@cache
def dockerfile() -> tuple[Stage, ...]:
    """The Dockerfile's stages: each instruction with its arguments, continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif instruction != "ARG" or stages:
            assert stages, f"{instruction} before the first FROM"
            stages[-1].instructions.append((instruction, args))
    return tuple(stages)


def pip_install_targets(shell: str) -> list[list[str]] | None:
    """The arguments of each `pip install` in a RUN line (None: it has none). A requirement
    file, a constraint file or an editable install counts as a target, so it shows."""
    words = shlex.split(shell)
    installs: list[list[str]] = []
    for i, word in enumerate(words):
        is_pip = PurePosixPath(word).name in {"pip", "pip3"} or (
            word == "-m" and i + 1 < len(words) and words[i + 1] == "pip"
        )
        if not is_pip:
            continue
        rest = words[i + 1 :] if word != "-m" else words[i + 2 :]
        if not rest or rest[0] != "install":
            continue
        targets: list[str] = []
        for arg in rest[1:]:
            if arg in {"&&", ";", "||", "|"}:
                break
            if arg in NOT_THE_PROJECT or not arg.startswith("-"):
                targets.append(arg)
        installs.append(targets)
    return installs or None


def copy_sources(args: str) -> list[str]:
    words = [w for w in shlex.split(args) if not w.startswith("--")]
    return [str(PurePosixPath(w)) for w in words[:-1]]


# --- the compose file ---------------------------------------------------------------------


def test_compose_runs_the_whole_stack():
    assert {
        "postgresql",
        "temporal",
        "temporal-ui",
        "app-db",
        "migrate",
        "api",
        "worker",
    } <= set(services())


def test_every_dependency_is_a_defined_service_with_a_condition_it_can_reach():
    for name, service in services().items():
        for target, condition in depends_on(service).items():
            assert target in services(), f"{name} depends on undefined service {target}"
            assert target != name
            assert condition in CONDITIONS, f"{name}: unknown condition {condition}"
            if condition == "service_healthy":
                check = services()[target].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), f"{target}: no healthcheck"
            if condition == "service_completed_successfully":
                # A service restarted whenever it exits never counts as completed.
                assert services()[target].get("restart", "no") in {"no", "on-failure"}


def test_api_and_workers_start_after_migrations_and_a_healthy_database():
    for name in ("api", "worker"):
        needs = depends_on(services()[name])
        assert needs.get("migrate") == "service_completed_successfully", name
        assert needs.get("app-db") == "service_healthy", name
    assert depends_on(services()["migrate"]).get("app-db") == "service_healthy"


def test_every_named_volume_is_declared():
    declared = set(compose().get("volumes") or {})
    used = set()
    for service in services().values():
        for volume in service.get("volumes") or []:
            if isinstance(volume, str):
                source, kind = volume.split(":", 1)[0], "volume"
            else:
                source, kind = volume.get("source", ""), volume.get("type", "volume")
            # Paths are bind mounts; anything else names a volume.
            if kind == "volume" and source and not source.startswith((".", "/", "~", "$")):
                used.add(source)
    assert used, "no service keeps its data in a named volume"
    assert used <= declared, f"undeclared volumes: {sorted(used - declared)}"


def test_images_are_pinned_upstream_ones_or_built_here():
    for name, service in services().items():
        if "build" in service:
            build = service["build"]
            build = {"context": build} if isinstance(build, str) else build
            context = ROOT / build.get("context", ".")
            assert context.is_dir(), f"{name}: no build context {context}"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            repository = service.get("image", "").rsplit(":", 1)[0]
            assert repository not in UPSTREAM_IMAGES, f"{name} would shadow {repository}"
            continue
        image = service.get("image")
        assert image, f"{name} has neither image nor build"
        repository, _, tag = image.partition(":")
        assert repository in UPSTREAM_IMAGES, f"{name}: unexpected image {image}"
        assert tag and tag != "latest", f"{name}: {image} is not pinned to a tag"


def test_application_database_is_postgres_15_or_later():
    # Migrations use composite foreign keys with ON DELETE SET NULL (column): PostgreSQL 15.
    repository, _, tag = services()["app-db"]["image"].partition(":")
    assert repository == "postgres"
    assert int(tag.split(".")[0].split("-")[0]) >= 15


def test_workers_can_be_scaled():
    worker = services()["worker"]
    assert "container_name" not in worker  # two containers cannot share a name
    # A published host port would collide between replicas.
    assert not worker.get("ports")
    replicas = str(worker["deploy"]["replicas"])
    default = re.fullmatch(r"\$\{WORKERS:-(\d+)\}", replicas)
    assert int(default.group(1) if default else replicas) >= 1


def test_services_run_real_oslira_subcommands():
    for name, subcommand in APP_COMMANDS.items():
        found = oslira_subcommands(command_text(services()[name]))
        assert found, f"{name} runs no oslira command"
        assert found[-1] == subcommand, f"{name} ends with `oslira {found[-1]}`"
    for name, service in services().items():
        for subcommand in oslira_subcommands(command_text(service)):
            assert subcommand in real_subcommands(), f"{name}: no `oslira {subcommand}`"


def test_migrate_prepares_temporal_too():
    # With TEMPORAL_ADDRESS set, `oslira migrate` registers the search attributes the
    # workflows set and creates the schedules (cli/main.py).
    assert oslira_subcommands(command_text(services()["migrate"]))[-1] == "migrate"
    assert environment(services()["migrate"]).get("TEMPORAL_ADDRESS")


def test_application_settings_use_real_names():
    from core.settings import Settings

    fields = set(Settings.model_fields)
    for name, service in built_services().items():
        for key in environment(service):
            assert key.lower().split("__")[0] in fields, f"{name}: {key} is no setting"


def test_secrets_come_from_the_host_environment():
    from core.settings import Settings

    secrets = {
        key.upper()
        for key, info in Settings.model_fields.items()
        if SecretStr in get_args(info.annotation) or info.annotation is SecretStr
    }
    assert {"JWT_SECRET", "APIFY_TOKEN", "OPENAI_API_KEY"} <= secrets
    for name, service in built_services().items():
        for key, value in environment(service).items():
            if key not in secrets:
                continue
            interpolated = re.fullmatch(rf"\$\{{{key}:-([^}}]*)\}}", value)
            assert interpolated, f"{name}: {key} is not read from the host"
            if key not in ROLE_PASSWORDS:
                assert interpolated.group(1) == "", f"{name}: {key} has a built-in value"
    for name, keys in REQUIRED_FROM_HOST.items():
        assert keys <= set(environment(services()[name])), name


def test_only_migrate_holds_the_owner_credentials():
    env = {name: environment(services()[name]) for name in APP_COMMANDS}
    owner = urlsplit(env["migrate"]["DATABASE_URL"])
    assert owner.username and owner.password
    assert set(env["migrate"]) >= ROLE_PASSWORDS
    for name, own, other in (
        ("api", "DB_API_PASSWORD", "DB_WORKER_PASSWORD"),
        ("worker", "DB_WORKER_PASSWORD", "DB_API_PASSWORD"),
    ):
        url = urlsplit(env[name]["DATABASE_URL"])
        assert url.username is None and url.password is None, f"{name} sees the owner login"
        assert (url.hostname, url.port, url.path) == (owner.hostname, owner.port, owner.path)
        assert own in env[name] and other not in env[name], name


def test_api_healthcheck_calls_a_real_route():
    from api.routes.health import router

    check = " ".join(services()["api"]["healthcheck"]["test"])
    path = re.search(r"http://[^/'\"\s]+(/[^'\"\s]*)", check)
    assert path, "the API healthcheck calls no URL"
    assert path.group(1) in {route.path for route in router.routes}  # type: ignore[attr-defined]


# --- the Dockerfile -----------------------------------------------------------------------


def test_image_installs_the_project_and_nothing_hand_listed():
    installs = [
        targets
        for stage in dockerfile()
        for instruction, args in stage.instructions
        if instruction == "RUN"
        for targets in pip_install_targets(args) or []
    ]
    assert installs, "the Dockerfile installs nothing with pip"
    for targets in installs:
        assert targets == ["."], f"pip install {' '.join(targets)}: install `.` only"


def test_image_copies_what_the_wheel_contains_before_installing_it():
    wheel = pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]
    wanted = set(wheel.get("only-include", [])) | set(wheel.get("packages", []))
    assert wanted
    (build,) = [
        stage
        for stage in dockerfile()
        if any(pip_install_targets(args) for _, args in stage.instructions)
    ]
    copied: set[str] = set()
    for instruction, args in build.instructions:
        if instruction == "RUN" and pip_install_targets(args):
            break
        if instruction in {"COPY", "ADD"} and "--from" not in args:
            copied.update(copy_sources(args))
    assert "pyproject.toml" in copied
    assert wanted <= copied, f"not copied: {sorted(wanted - copied)}"
    # Nothing beyond the wheel's contents (no tests, no local state) enters the build.
    assert copied <= wanted | {"pyproject.toml", "README.md", "LICENSE"}, sorted(copied)


def test_image_python_satisfies_requires_python():
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    bases = [stage.base for stage in dockerfile() if stage.base.startswith("python:")]
    assert bases, "no python base image"
    # The virtual environment is built in one stage and run in another.
    assert len(set(bases)) == 1, f"different python bases: {bases}"
    tag = bases[0].split(":", 1)[1]
    version = re.match(r"(\d+\.\d+)", tag)
    assert version, f"python:{tag} is not pinned to a version"
    assert requires.contains(version.group(1)), f"{version.group(1)} outside {requires}"


def test_image_runs_as_a_non_root_user():
    users = [args for instruction, args in dockerfile()[-1].instructions if instruction == "USER"]
    assert users, "the final stage runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_image_default_command_is_a_real_subcommand():
    final = dict(dockerfile()[-1].instructions)
    command = [
        *json.loads(final.get("ENTRYPOINT", "[]")),
        *json.loads(final.get("CMD", "[]")),
    ]
    assert command[:1] == ["oslira"]
    assert command[1] in real_subcommands()


def test_build_context_leaves_out_local_state():
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".venv", ".git", ".oslira", "tests/histories"} <= ignored

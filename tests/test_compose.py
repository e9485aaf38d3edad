"""docker-compose.yml, its GPU switch, .env.example and the Dockerfiles, read as an operator
would, without a Docker engine (validated against the Compose Specification's schema)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from pydantic import SecretStr

from catdog.cli import main
from catdog.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
#: The GPU switch: an override file for the worker and the trainer.
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"]
#: Where compose mounts the image store in every catdog container.
STORE_MOUNT = "/data"


def merged(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for the mappings these files use."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: merged(base[k], v) if k in base else v for k, v in {**base, **override}.items()}
    return override


def example_env() -> dict[str, str]:
    """The variables .env.example sets (commented lines are not set)."""
    pairs = (line.partition("=") for line in ENV_EXAMPLE.read_text().splitlines())
    return {k.strip(): v for k, sep, v in pairs if sep and not k.lstrip().startswith("#")}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``; a required one unset
    fails like ``docker compose up`` would."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        if env.get(name):
            return env[name]
        assert op != ":?", f"{name} is required and unset: {arg}"
        return arg if op == ":-" else ""

    return re.sub(r"(?<!\$)\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    """The compose services, YAML anchors and merge keys resolved."""
    return yaml.safe_load(COMPOSE.read_text())["services"]


@pytest.fixture(scope="module")
def gpu_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services with docker-compose.gpu.yml switched on."""
    return merged(services, yaml.safe_load(COMPOSE_GPU.read_text())["services"])


def catdog_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services that run a catdog image."""
    return {
        name: spec
        for name, spec in services.items()
        if str(spec.get("image", "")).startswith("catdog:")
    }


def parse_command(argv: list[str]) -> click.Command:
    """Resolve ``catdog ARGV`` to its command and parse its options; raise if either is wrong."""
    command: click.Command = main
    args = list(argv)
    while isinstance(command, click.Group):
        assert args, f"catdog {' '.join(argv)} names no subcommand"
        name = args.pop(0)
        assert name in command.commands, f"catdog has no command {name!r} ({' '.join(argv)})"
        command = command.commands[name]
    with command.make_context(command.name or "", args) as _:
        pass
    return command


def gpu_reserved(spec: dict[str, Any]) -> bool:
    """True when the service reserves a GPU through deploy.resources.reservations.devices."""
    devices = spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    return any("gpu" in device.get("capabilities", []) for device in devices or [])


def test_the_catdog_services_cover_the_cluster(services: dict[str, dict[str, Any]]) -> None:
    """Broker, database, migrations, workers, trainer, Flower, metrics and producer are there."""
    assert {"redis", "postgres"} <= set(services)
    assert {"migrate", "worker", "trainer", "flower", "metrics", "producer"} <= set(
        catdog_services(services)
    )


def test_every_service_command_is_a_real_catdog_command(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Each catdog service's command parses as a ``catdog`` subcommand with valid options."""
    commands = {name: spec["command"] for name, spec in catdog_services(services).items()}
    for name, argv in commands.items():
        if name != "producer":  # its command comes from `docker compose run`
            parse_command(argv)
    assert parse_command(["db", "upgrade"]).name == "upgrade"
    assert commands["worker"][:3] == ["worker", "--queues", "inference"]
    assert commands["trainer"][:3] == ["worker", "--queues", "training"]
    # What the README tells users to run as a one-off.
    # (scan checks that its folder exists: a folder here stands in for the mounted store)
    assert parse_command(["scan", str(tmp_path), "--wait"]).name == "scan"


def test_every_catdog_variable_is_a_settings_field() -> None:
    """Every CATDOG_* variable compose, .env.example or an image sets is one Settings reads."""
    texts = [COMPOSE.read_text(), ENV_EXAMPLE.read_text(), *(p.read_text() for p in DOCKERFILES)]
    names = {name for text in texts for name in re.findall(r"\bCATDOG_[A-Z0-9_]+", text)}
    assert names, "no CATDOG_ variables found"
    unknown = {n for n in names if n.removeprefix("CATDOG_").lower() not in Settings.model_fields}
    assert not unknown, f"not fields of catdog.settings.Settings: {sorted(unknown)}"


def test_the_example_env_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CATDOG_* values in .env.example pass Settings' own validation."""
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CATDOG_"):
            monkeypatch.setenv(key, value)
    Settings(_env_file=None)  # type: ignore[call-arg]


def test_the_default_cluster_runs_its_workers_on_cpus_without_a_profile(
    services: dict[str, dict[str, Any]],
) -> None:
    """Plain ``docker compose up`` starts the workers, and nothing asks for a GPU runtime."""
    assert "COMPOSE_PROFILES" not in example_env()
    for name, spec in services.items():
        assert "profiles" not in spec or name == "producer", name
        assert not gpu_reserved(spec), name
    assert services["worker"]["image"] == services["trainer"]["image"] == "catdog:${IMAGE_TAG:-cpu}"


def test_the_gpu_switch_gives_each_worker_a_named_gpu_and_shared_cards_a_memory_cap(
    gpu_services: dict[str, dict[str, Any]],
) -> None:
    """With the GPU file, worker and trainer run the GPU image on the device ids they name;
    on one shared card (the example's setting) each has a cap and the caps fit 16 GB."""
    env = example_env()
    assert "docker-compose.gpu.yml" in ENV_EXAMPLE.read_text()  # the documented switch
    reserving = {name for name, spec in gpu_services.items() if gpu_reserved(spec)}
    assert reserving == {"worker", "trainer"}
    devices, caps = {}, {}
    for name in reserving:
        spec = gpu_services[name]
        assert interpolate(spec["image"], env) == "catdog:gpu", name
        (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
        assert "count" not in device, f"{name}: count picks the same GPU for every service"
        devices[name] = [interpolate(d, env) for d in device["device_ids"]]
        caps[name] = int(interpolate(spec["environment"]["CATDOG_GPU_MEMORY_LIMIT_MB"], env))
        argv = spec["command"]
        assert argv[argv.index("--concurrency") + 1] == "1", name
    if devices["worker"] == devices["trainer"]:
        assert min(caps.values()) > 0 and sum(caps.values()) <= 16 * 1024


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_each_catdog_image_is_built_once_and_never_pulled(
    services: dict[str, dict[str, Any]], gpu_services: dict[str, dict[str, Any]], gpu: bool
) -> None:
    """One service builds each catdog tag; the others run it and never pull it from a registry."""
    chosen = catdog_services(gpu_services if gpu else services)
    builders: dict[str, list[str]] = {}
    for name, spec in chosen.items():
        if "build" in spec:
            builders.setdefault(spec["image"], []).append(name)
        else:
            assert spec.get("pull_policy") == "never", name
    assert {image: len(names) for image, names in builders.items()} == {
        image: 1 for image in {spec["image"] for spec in chosen.values()}
    }
    # A service that runs a tag it does not build depends, directly or not, on its builder.
    for name, spec in chosen.items():
        (builder,) = builders[spec["image"]]
        seen, todo = set(), [name]
        while todo:
            current = todo.pop()
            seen.add(current)
            todo += [d for d in chosen.get(current, {}).get("depends_on", {}) if d not in seen]
        assert builder in seen, f"{name} may start before {builder} built {spec['image']}"


def test_image_stores_are_mounted_read_only(services: dict[str, dict[str, Any]]) -> None:
    """Every mount of the image store is read-only, and workers only read under it."""
    mounts = [
        (name, volume)
        for name, spec in catdog_services(services).items()
        for volume in spec.get("volumes", [])
        if f":{STORE_MOUNT}" in volume or "IMAGE_STORE" in volume
    ]
    assert {"worker", "trainer", "producer"} <= {name for name, _ in mounts}
    for name, volume in mounts:
        assert volume.endswith(":ro"), f"{name} mounts the image store writable: {volume}"
    for name in ("worker", "producer"):
        assert services[name]["environment"]["CATDOG_STORE_ROOTS"] == STORE_MOUNT


def test_models_live_on_one_shared_volume(services: dict[str, dict[str, Any]]) -> None:
    """Workers, trainer and producer share the models volume at CATDOG_MODELS_DIR."""
    for name in ("worker", "trainer", "producer", "migrate"):
        spec = services[name]
        models_dir = spec["environment"]["CATDOG_MODELS_DIR"]
        assert f"models:{models_dir}" in spec["volumes"], name


def test_flower_requires_basic_auth_and_keeps_its_state(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Flower gets a required login from the environment and a state file on a volume."""
    from catdog.cli.ops import flower_argv

    flower = services["flower"]
    assert flower["environment"]["CATDOG_FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    state = Path(flower["environment"]["CATDOG_FLOWER_DB"])
    assert any(v.split(":")[1] == str(state.parent) for v in flower["volumes"])
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        broker_url=SecretStr("redis://redis:6379/0"),
        flower_basic_auth=SecretStr("ops:s3cret-Pa55"),
        flower_db=tmp_path / "flower" / "flower.db",
    )
    argv = flower_argv(settings, 5555, flower["command"][flower["command"].index("--address") + 1])
    assert "--basic_auth=ops:s3cret-Pa55" in argv
    assert "--persistent=True" in argv


@pytest.mark.parametrize("auth", [None, "admin:change-me", "ops:s3cret,admin:admin"])
def test_flower_refuses_an_open_or_placeholder_login_off_loopback(auth: str | None) -> None:
    """On a public address Flower needs real passwords; on loopback it may run without."""
    from catdog.cli.ops import flower_argv

    secret = None if auth is None else SecretStr(auth)
    settings = Settings(_env_file=None, flower_basic_auth=secret)  # type: ignore[call-arg]
    with pytest.raises(click.ClickException):
        flower_argv(settings, 5555, "0.0.0.0")
    assert flower_argv(settings, 5555, "127.0.0.1")[0] == "flower"


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        ("ops-s3cret-Pa55", "no colon"),
        (":s3cret-Pa55", "empty user"),
        ("ops:", "empty password"),
        ("ops:s3cret-Pa55,", "entry 2 of 2 has no colon"),
    ],
)
@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0"])
def test_flower_refuses_a_malformed_login_on_any_address(
    auth: str, problem: str, address: str
) -> None:
    """A login Flower could never match is refused at start in one line that does not echo it."""
    from catdog.cli.ops import flower_argv

    settings = Settings(_env_file=None, flower_basic_auth=SecretStr(auth))  # type: ignore[call-arg]
    with pytest.raises(click.ClickException) as refused:
        flower_argv(settings, 5555, address)
    message = refused.value.message
    assert problem in message and "s3cret" not in message and "\n" not in message


def test_flower_generates_a_login_once_when_none_is_set(tmp_path: Path) -> None:
    """Without CATDOG_FLOWER_BASIC_AUTH, --login-file holds a random login, kept across starts."""
    from catdog.cli.ops import flower_argv

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    login_file = tmp_path / "flower" / "login"
    first = flower_argv(settings, 5555, "0.0.0.0", login_file)
    assert login_file.stat().st_mode & 0o777 == 0o600
    user, _, password = login_file.read_text().strip().partition(":")
    assert user and len(password) >= 24
    assert f"--basic_auth={user}:{password}" in first
    assert flower_argv(settings, 5555, "0.0.0.0", login_file) == first


def test_long_running_services_restart_and_report_health(
    services: dict[str, dict[str, Any]],
) -> None:
    """Every service but the one-offs restarts on failure and has a healthcheck."""
    one_off = {"migrate", "producer"}
    for name, spec in services.items():
        if name in one_off:
            assert spec["restart"] == "no", name
            continue
        assert spec.get("restart") in ("unless-stopped", "always", "on-failure"), name
        assert spec.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_worker_healthchecks_read_the_heartbeat_a_busy_worker_still_gives(
    services: dict[str, dict[str, Any]],
) -> None:
    """Workers are checked with ``catdog health`` (tests/test_health.py runs it against a busy
    worker), never a ping their busy main loop cannot answer; the age allows missed beats."""
    from catdog.workers.health import HEARTBEAT_INTERVAL_S

    workers = {n: s for n, s in catdog_services(services).items() if s["command"][0] == "worker"}
    assert {"worker", "trainer"} <= set(workers)
    for name, spec in workers.items():
        test = spec["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "catdog", name
        assert parse_command(test[2:]).name == "health", name
        max_age = float(test[test.index("--max-age") + 1])
        assert max_age >= 3 * HEARTBEAT_INTERVAL_S, name
    assert "inspect ping" not in COMPOSE.read_text()


def test_the_example_env_sets_every_required_variable_and_starts_flower(tmp_path: Path) -> None:
    """Every ``${VAR:?}`` is set by .env.example, and Flower starts on it (no restart loop)."""
    from catdog.cli.ops import flower_argv

    env = example_env()
    for text in (COMPOSE.read_text(), COMPOSE_GPU.read_text()):
        interpolate(text, env)
    flower = yaml.safe_load(COMPOSE.read_text())["services"]["flower"]
    auth = interpolate(flower["environment"]["CATDOG_FLOWER_BASIC_AUTH"], env)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        flower_basic_auth=SecretStr(auth) if auth else None,
    )
    argv = flower["command"]
    login_file = tmp_path / Path(argv[argv.index("--login-file") + 1]).name
    started = flower_argv(settings, 5555, argv[argv.index("--address") + 1], login_file)
    assert any(a.startswith("--basic_auth=") for a in started)
    state_dir = str(Path(flower["environment"]["CATDOG_FLOWER_DB"]).parent)
    assert str(Path(argv[argv.index("--login-file") + 1]).parent) == state_dir  # on the volume


def test_the_deployment_guide_installs_this_project_not_a_namesake() -> None:
    """``pip install catdog`` would fetch an unrelated package: the guide installs from here."""
    guide = (ROOT / "docs" / "deployment.md").read_text()
    commands = "\n".join(re.findall(r"```sh\n(.*?)```", guide, re.S))
    assert not re.search(r"pip install catdog(\s|$)", commands)
    assert "pip install ." in commands


def _compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema: CATDOG_COMPOSE_SCHEMA, else the copy that
    check-jsonschema (a dev dependency) ships for its `--builtin-schema vendor.compose-spec`."""
    if os.environ.get("CATDOG_COMPOSE_SCHEMA"):
        return dict(json.loads(Path(os.environ["CATDOG_COMPOSE_SCHEMA"]).read_text()))
    from importlib.resources import files

    vendored = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return dict(json.loads(vendored.read_text()))


def test_the_compose_files_follow_the_compose_schema(
    services: dict[str, dict[str, Any]],
) -> None:
    """docker-compose.yml, the GPU file and both merged validate against the compose schema."""
    import jsonschema

    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert list(validator.iter_errors({"services": {"x": {"image": "a", "bogus_key": 1}}}))
    base = yaml.safe_load(COMPOSE.read_text())
    gpu = yaml.safe_load(COMPOSE_GPU.read_text())
    for document in (base, gpu, merged(base, gpu)):
        errors = [e.message for e in validator.iter_errors(document)]
        assert errors == []


def test_the_producer_is_a_one_off_tool(services: dict[str, dict[str, Any]]) -> None:
    """The producer only runs through ``docker compose run`` (profile tools)."""
    assert services["producer"]["profiles"] == ["tools"]


def test_images_run_catdog_as_a_non_root_user_from_a_multi_stage_build() -> None:
    """Both Dockerfiles build in one stage, run in another, as a named non-root user."""
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert len(re.findall(r"^FROM ", text, re.M)) >= 2, dockerfile
        assert "COPY --from=build" in text, dockerfile
        users = re.findall(r"^USER (\S+)", text, re.M)
        assert users and users[-1] not in ("root", "0"), dockerfile
        assert 'ENTRYPOINT ["catdog"]' in text, dockerfile
    assert "requirements/gpu.lock" in DOCKERFILES[1].read_text()


def test_the_build_context_leaves_out_secrets_and_local_state() -> None:
    """.dockerignore keeps .env, the virtualenv, git and databases out of the images."""
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".git", "*.db"} <= ignored

"""Reading a compose file as the Compose Specification says (no engine needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_dockapp import ComposeError
from pytest_dockapp.services.compose import load_project
from pytest_dockapp.services.interpolate import interpolate
from pytest_dockapp.services.order import start_order
from pytest_dockapp.services.service import parse_duration


def write(folder: Path, text: str, name: str = "compose.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$SET and ${SET}", "yes and yes"),
        ("${UNSET:-d} ${EMPTY:-d} ${UNSET-d} ${EMPTY-d}", "d d d "),
        ("${SET:+alt} ${EMPTY:+alt} ${EMPTY+alt} ${UNSET+alt}", "alt  alt "),
        ("$$SET costs $$5", "$SET costs $5"),
        ("${UNSET:-${SET}}", "yes"),
        ("a lone $ stays", "a lone $ stays"),
    ],
)
def test_interpolation_follows_the_compose_specification(text: str, expected: str) -> None:
    assert interpolate(text, {"SET": "yes", "EMPTY": ""}, "f") == expected


def test_a_required_variable_names_itself_and_the_file() -> None:
    with pytest.raises(ComposeError, match=r"compose.yaml: required variable DB_URL is missing a value: set it"):
        interpolate("${DB_URL:?set it}", {"DB_URL": ""}, "compose.yaml")


def test_env_file_anchors_merge_keys_and_extension_fields(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TAG=from-dotenv\nexport PORT=8080 # a comment\nQUOTED='$literal'\n")
    write(
        tmp_path,
        """
        x-env: &env
          LOG: debug
          TAG: ${TAG}
        x-ignored: {anything: here}
        services:
          web:
            build: {context: ., args: [VERSION=1]}
            environment:
              <<: *env
              PORT: ${PORT}
              QUOTED: ${QUOTED}
            ports: ["${PORT}"]
            x-note: ignored too
        """,
    )
    project = load_project([tmp_path / "compose.yaml"], env={})
    web = project.services["web"]
    assert web.environment == {"LOG": "debug", "TAG": "from-dotenv", "PORT": "8080", "QUOTED": "$literal"}
    assert web.build is not None and web.build.args == {"VERSION": "1"} and web.build.context == tmp_path
    assert [p.container for p in web.ports] == [8080]


def test_the_environment_wins_over_the_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TAG=from-dotenv\n")
    write(tmp_path, "services:\n  web:\n    image: app:${TAG}\n")
    assert load_project([tmp_path / "compose.yaml"], env={"TAG": "from-env"}).services["web"].image == "app:from-env"


def test_override_files_merge_as_compose_merges_them(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        """
        services:
          web:
            build: .
            environment: [A=1, B=2]
            ports: ["80"]
            command: ["serve"]
            volumes: ["./data:/data"]
          db:
            image: db
        """,
    )
    override = write(
        tmp_path,
        """
        services:
          web:
            environment: {B: "3", C: "4"}
            ports: ["81"]
            command: ["serve", "--debug"]
            volumes: ["./other:/data"]
            depends_on: [db]
        """,
        "compose.test.yaml",
    )
    web = load_project([base, override], env={}).services["web"]
    assert web.environment == {"A": "1", "B": "3", "C": "4"}
    assert [p.container for p in web.ports] == [80, 81]
    assert web.command == ["serve", "--debug"]
    assert [m.source for m in web.mounts] == [str(tmp_path / "other")]
    assert web.depends_on == {"db": "service_started"}


def test_profiles_leave_out_services_unless_enabled_or_needed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        services:
          web: {build: ., depends_on: [db]}
          db: {image: db, profiles: [backend]}
          debug: {image: tools, profiles: [debug]}
        """,
    )
    assert set(load_project([path], env={}, wanted="web").services) == {"web", "db"}
    assert set(load_project([path], env={}, profiles=["debug"], wanted="web").services) == {"web", "db", "debug"}
    with pytest.raises(ComposeError, match=r"service web depends on db, whose profiles \['backend'\] are off"):
        load_project([path], env={})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    deploy: {replicas: 2}\n", r"service web: 2 replicas: a test stack runs one container per service"),
        (
            "    build: {context: ., additional_contexts: {base: ../base}}\n",
            r"service web: build.additional_contexts \(compose.yaml:5\): one context per build",
        ),
        ("    depends_on: [nowhere]\n", r"service web depends on 'nowhere', which is not a service"),
        ("    volumes: [data:/data]\n", r"mounts volume 'data', which is not in the top-level volumes"),
        ("    ports: [http]\n", r"service web: 'http' is not a port mapping"),
        ("    healthcheck: {test: [CMD, x], interval: soon}\n", r"'soon' is not a duration"),
        ("    healthcheck: {test: true}\n", r"healthcheck test True is neither a string nor a list"),
        ("    environment: 5\n", r"service web: environment is int, but must be a list of KEY=VALUE or a mapping"),
        ("    depends_on: {db: {condition: service_ready}}\n", r"condition 'service_ready' is unknown"),
    ],
)
def test_an_unsupported_or_wrong_key_is_an_error_naming_it(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, "services:\n  db: {image: db}\n  web:\n    image: web\n" + body)
    with pytest.raises(ComposeError, match=message) as info:
        load_project([path], env={})
    assert str(path) in info.value.what


def test_a_dependency_cycle_is_named() -> None:
    with pytest.raises(ComposeError, match=r"depends_on has a cycle: a -> b -> c -> a"):
        start_order({"a": {"b": "service_started"}, "b": {"c": "service_healthy"}, "c": {"a": "service_started"}})


def test_dependencies_start_first() -> None:
    order = start_order({"web": {"db": "x", "cache": "x"}, "cache": {}, "db": {"migrate": "x"}, "migrate": {}})
    assert order.index("migrate") < order.index("db") < order.index("web") and order.index("cache") < order.index("web")


def test_the_app_service_is_the_one_with_a_build_or_named(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n  api: {build: .}\n  worker: {build: .}\n  db: {image: db}\n")
    project = load_project([path], env={})
    with pytest.raises(ComposeError, match=r"has 2 services with a build:.*") as info:
        project.main_service(None)
    assert info.value.hint == "set dockapp_service to one of: api, worker, db"
    assert project.main_service("worker") == "worker"
    with pytest.raises(ComposeError, match=r"dockapp_service 'wrker' is not a service"):
        project.main_service("wrker")


def test_durations_and_healthchecks_take_the_engine_api_form(tmp_path: Path) -> None:
    assert parse_duration("1m30s", "f") == 90_000_000_000 and parse_duration("500ms", "f") == 500_000_000
    path = write(
        tmp_path,
        """
        services:
          db: {image: db, healthcheck: {test: pg_isready, interval: 2s, retries: 3}}
          off: {image: db, healthcheck: {disable: true}}
        """,
    )
    services = load_project([path], env={}).services
    assert services["db"].healthcheck == {"test": ["CMD-SHELL", "pg_isready"], "interval": 2_000_000_000, "retries": 3}
    assert services["off"].healthcheck == {"test": ["NONE"]}


def test_yaml_1_2_booleans_as_compose_reads_them(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n  off:\n    image: db\n    environment: {DEBUG: yes, FAST: true, MODE: on}\n")
    assert load_project([path], env={}).services["off"].environment == {"DEBUG": "yes", "FAST": "true", "MODE": "on"}


def test_the_readme_keys_table_is_the_generated_one() -> None:
    from pytest_dockapp.services.keys import keys_table

    from .helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- compose-keys -->")
    assert readme[readme.index("\n", start) + 1 : readme.index("<!-- end compose-keys -->")].strip() == keys_table()


def test_env_file_is_one_path_or_a_list(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("A=1\n")
    (tmp_path / "b.env").write_text("B=2\n")
    path = write(
        tmp_path, "services:\n  one: {image: x, env_file: a.env}\n  two: {image: x, env_file: [a.env, b.env]}\n"
    )
    services = load_project([path], env={}).services
    assert services["one"].environment == {"A": "1"} and services["two"].environment == {"A": "1", "B": "2"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "services:\n  web: {image: w}\nvolumes: [data]\n",
            r": volumes is a list, but must be a mapping of volume names",
        ),
        (
            "services:\n  web: {image: w, volumes: {data: /data}}\nvolumes: {data: {}}\n",
            r"service web: volumes is a mapping, but must be a list, e.g. volumes: \[data:/data\]",
        ),
        (
            "services:\n  web: {image: w, healthcheck: 'CMD true'}\n",
            r"service web: healthcheck is a string, but must be a mapping",
        ),
        ("services:\n  web: {image: w, ports: '8080:80'}\n", r"service web: ports is a string, but must be a list"),
        ("services: [web]\n", r": services is a list, but must be a mapping of service names"),
        ("services:\n  web: {image: w}\nvolumes: {data: [x]}\n", r"volumes data is a list, but must be a mapping"),
    ],
)
def test_a_value_of_the_wrong_shape_names_the_key_the_shape_and_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ComposeError, match=message) as info:
        load_project([path], env={})
    assert str(path) in info.value.what


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    lines = ["x-a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"x-{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    lines += ["services:", "  web:", "    image: w", "    labels:", "      bomb: x", "    command: *i"]
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ComposeError, match=r"more than 100,000 values once its YAML aliases are expanded"):
        load_project([path], env={})


def test_a_list_nested_thousands_deep_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n  web:\n    image: w\n    command: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ComposeError, match="nest"):
        load_project([path], env={})


def test_a_depends_on_chain_of_1500_services_is_ordered(tmp_path: Path) -> None:
    body = "".join(f"  s{i}: {{image: w, depends_on: [s{i + 1}]}}\n" for i in range(1499)) + "  s1499: {image: w}\n"
    project = load_project([write(tmp_path, "services:\n" + body)], env={})
    order = start_order({n: s.depends_on for n, s in project.services.items()})
    assert order[0] == "s1499" and order[-1] == "s0" and len(order) == 1500


def test_reading_a_compose_file_needs_nothing_the_package_does_not_install() -> None:
    import re
    from importlib.metadata import requires

    runtime = [r for r in requires("pytest-dockapp") or [] if "extra ==" not in r]
    assert any(re.match(r"(?i)pyyaml\b", r) for r in runtime), runtime


def test_a_compose_file_read_before_is_read_again_without_pyyaml(tmp_path: Path) -> None:
    """PyYAML's import and parse were 15-20 ms of every run; the parse of unchanged text is kept."""
    import subprocess
    import sys

    write(tmp_path, "services:\n  web: {image: app, environment: {DEBUG: yes, ON: true}}\n")
    code = (
        "import sys; from pytest_dockapp.services.compose import load_project; "
        "env = load_project([sys.argv[1]]).services['web'].environment; "
        "print('yaml' in sys.modules, env['DEBUG'], env['ON'])"
    )
    env = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "compose.yaml")], env=env, capture_output=True, text=True
        )
        for _ in range(2)
    ]
    assert [r.stdout.split() for r in runs] == [["True", "yes", "true"], ["False", "yes", "true"]], runs[0].stderr
    write(tmp_path, "services:\n  web: {image: app, environment: {DEBUG: no, ON: true}}\n")  # changed: parsed again
    again = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "compose.yaml")], env=env, capture_output=True, text=True
    )
    assert again.stdout.split() == ["True", "no", "true"]


def test_a_compose_file_that_writes_a_password_out_is_never_copied(tmp_path: Path) -> None:
    """The kept parse would be a second copy of the password, one the user never sees or rotates."""
    import subprocess
    import sys

    write(tmp_path, "services:\n  db: {image: pg, environment: {POSTGRES_PASSWORD: hunter22, MODE: '${MODE:-a}'}}\n")
    code = "import sys; from pytest_dockapp.services.compose import load_project; load_project([sys.argv[1]])"
    env = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "compose.yaml")], env=env, check=True)
    kept = [p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not any("hunter22" in text for text in kept)
    write(tmp_path, "services:\n  db: {image: pg, environment: {POSTGRES_PASSWORD: '${PW}'}}\n")  # a reference: kept
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "compose.yaml")], env=env | {"PW": "x"}, check=True)
    (copy,) = (tmp_path / "cache").rglob("*.json")
    assert copy.stat().st_mode & 0o077 == 0  # its owner's only

"""tasks/core/compose.py: a user's compose file patched round trip, only the managed lines changed."""
import difflib
import os
import shutil
import subprocess

import pytest
import yaml

from tasks.core import compose
from tasks.core.compose import ComposeError, ServicePatch, compose_diff, patch_compose_service, service_view
from tasks.core.sizes import GIB, MIB

# A compose file as users write it: comments at the top, inline and between services, an `x-`
# block with an anchor merged by several services, a ${VAR} reference, quoted strings, a named
# volume, an environment in list form, an empty `deploy:`.
USER_FILE = """\
# docker-compose-ml.yml: the quant team's ML stack.
# Start with: docker compose --env-file .env up -d

x-common: &common
  restart: unless-stopped   # all long-running services
  logging:
    driver: json-file
    options:
      max-size: "10m"
      max-file: "3"

services:
  postgres:
    <<: *common
    image: "postgres:15"
    environment:
      POSTGRES_USER: quant_user
      POSTGRES_PASSWORD: ${PGPASSWORD}   # from .env
    volumes:
      - pgdata:/var/lib/postgresql/data

  # MLflow tracking server (gunicorn)
  mlflow:
    <<: *common
    image: quantlab/mlflow:2.9.2
    command: mlflow server --host 0.0.0.0 --port 5000 --workers 4
    environment:
      MLFLOW_S3_ENDPOINT_URL: http://minio:9000
      GUNICORN_CMD_ARGS: "--timeout 30"
      WORKERS: "4"
      OLD_FLAG: "1"   # no longer used
    ports:
      - "127.0.0.1:15500:5000"
    deploy:
      resources:
        limits:
          memory: 420m   # too small: workers got OOM-killed
          cpus: "1.5"
    depends_on:
      - postgres

  # the API
  backend:
    <<: *common
    image: quant/backend:latest
    environment:
      - DB_HOST=postgres
      - PGPASSWORD=${PGPASSWORD}
    deploy:

  redis:
    <<: *common
    image: redis:7   # cache only

volumes:
  pgdata: {}   # named volume, survives `down`
"""

COMMAND = ("mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "2")
MLFLOW_PATCH = ServicePatch(
    command=COMMAND,
    environment={"GUNICORN_CMD_ARGS": "", "WORKERS": "2", "PGPASSWORD": "${PGPASSWORD}"},
    remove_environment=frozenset({"OLD_FLAG"}),
    memory_limit=GIB,
    memory_reservation=512 * MIB,
    restart="always",
    labels={"io.quantlab.managed": "yes"},
    init=True,
)
ANCHOR_BLOCK = USER_FILE[USER_FILE.index("x-common:") : USER_FILE.index("services:")]


def changed_lines(old: str, new: str) -> tuple[list[str], list[str]]:
    """(removed, added) lines, as `git diff` shows them."""
    removed, added = [], []
    for line in list(difflib.unified_diff(old.splitlines(), new.splitlines(), n=0, lineterm=""))[2:]:
        if line.startswith("-"):
            removed.append(line[1:])
        elif line.startswith("+"):
            added.append(line[1:])
    return removed, added


def comments(text: str) -> list[str]:
    return [line[line.index("#"):] for line in text.splitlines() if "#" in line]


def test_user_file_patched_in_place_only_managed_lines_change():
    new, changed = patch_compose_service(USER_FILE, "mlflow", MLFLOW_PATCH)
    assert changed == [
        "command", "environment.GUNICORN_CMD_ARGS", "environment.WORKERS", "environment.PGPASSWORD",
        "environment.OLD_FLAG", "deploy.resources.limits.memory", "deploy.resources.reservations.memory",
        "restart", "labels.io.quantlab.managed", "init",
    ]
    removed, added = changed_lines(USER_FILE, new)
    assert removed == [
        "    command: mlflow server --host 0.0.0.0 --port 5000 --workers 4",
        '      GUNICORN_CMD_ARGS: "--timeout 30"',
        '      WORKERS: "4"',
        '      OLD_FLAG: "1"   # no longer used',
        "          memory: 420m   # too small: workers got OOM-killed",
    ]
    assert added == [
        "    command: mlflow server --host 0.0.0.0 --port 5000 --workers 2",  # the string form kept
        '      GUNICORN_CMD_ARGS: ""',
        '      WORKERS: "2"',
        "      PGPASSWORD: ${PGPASSWORD}",  # a reference, kept as written
        "          memory: 1g     # too small: workers got OOM-killed",  # the comment stays in its column
        "        reservations:",
        "          memory: 512m",
        "    restart: always",  # inherited from x-common: overridden on the service itself
        "    labels:",
        '      io.quantlab.managed: "yes"',  # yes is a bool to compose v1: quoted
        "    init: true",
    ]
    # Comments, the anchor and its merges survive; no &id001, no header line.
    assert comments(new) == [c for c in comments(USER_FILE) if c != "# no longer used"]
    assert ANCHOR_BLOCK in new and new.count("<<: *common") == 4 and "&id0" not in new
    assert new.splitlines()[0] == USER_FILE.splitlines()[0]
    # The other services are unchanged, by meaning and by text.
    for other in ("postgres", "backend", "redis"):
        assert service_view(new, other) == service_view(USER_FILE, other)
    view = service_view(new, "mlflow")
    assert view["restart"] == "always" and view["logging"]["driver"] == "json-file"
    assert view["environment"] == {"MLFLOW_S3_ENDPOINT_URL": "http://minio:9000", "GUNICORN_CMD_ARGS": "",
                                   "WORKERS": "2", "PGPASSWORD": "${PGPASSWORD}"}
    assert view["deploy"] == {"resources": {"limits": {"memory": "1g", "cpus": "1.5"},
                                            "reservations": {"memory": "512m"}}}
    assert view["labels"] == {"io.quantlab.managed": "yes"} and view["init"] is True


def test_idempotent_second_patch_returns_the_same_text():
    once, _ = patch_compose_service(USER_FILE, "mlflow", MLFLOW_PATCH)
    assert patch_compose_service(once, "mlflow", MLFLOW_PATCH) == (once, [])


def test_no_change_returns_the_input_byte_for_byte_even_where_ruamel_would_reformat():
    # Odd spacing, a flow mapping, a list command, sizes and restart spelt differently: all equal
    # by meaning, so the text comes back as it was.
    text = (
        "services:\n"
        "  mlflow:   # tracking\n"
        "    command:   [mlflow,   server, '--workers', 2]\n"
        "    restart:   no\n"
        "    init: yes\n"
        "    environment: {WORKERS: 2, EMPTY: ''}\n"
        "    mem_limit: 1073741824\n"
        "    deploy:\n"
        "        resources:\n"
        "            limits: {memory: 1024M}\n"
        "            reservations: {memory: 536870912}\n"
    )
    patch = ServicePatch(command=("mlflow", "server", "--workers", "2"), environment={"WORKERS": "2", "EMPTY": ""},
                         memory_limit=GIB, memory_reservation=512 * MIB, restart="no", init=True)
    assert patch_compose_service(text, "mlflow", patch) == (text, [])
    assert patch_compose_service(text, "mlflow", ServicePatch()) == (text, [])


def test_inherited_key_overridden_on_the_service_anchor_untouched():
    new, changed = patch_compose_service(USER_FILE, "redis", ServicePatch(restart="on-failure:3"))
    assert changed == ["restart"]
    assert changed_lines(USER_FILE, new) == ([], ["    restart: on-failure:3"])
    assert ANCHOR_BLOCK in new
    assert service_view(new, "postgres")["restart"] == "unless-stopped"
    # Equal by meaning to what the anchor gives: nothing to do.
    assert patch_compose_service(USER_FILE, "redis", ServicePatch(restart="unless-stopped")) == (USER_FILE, [])


INHERITED_DEPLOY = """\
x-limits: &limits
  restart: "no"
  environment:
    TZ: UTC
    OLD: x
  deploy:
    resources:
      limits:
        memory: 256m
        cpus: "0.5"
  labels:
    - "team=quant"

services:
  mlflow:
    <<: *limits
    image: quantlab/mlflow:2.9.2

  worker:
    <<: *limits
    image: worker
"""


def test_inherited_nested_mappings_are_copied_onto_the_service_never_changed_in_the_anchor():
    patch = ServicePatch(environment={"WORKERS": "2"}, remove_environment=frozenset({"OLD"}),
                         memory_limit=GIB, memory_reservation=512 * MIB, labels={"svc": "mlflow"})
    new, changed = patch_compose_service(INHERITED_DEPLOY, "mlflow", patch)
    assert changed == ["environment.WORKERS", "environment.OLD", "deploy.resources.limits.memory",
                       "deploy.resources.reservations.memory", "labels.svc"]
    anchor = INHERITED_DEPLOY[: INHERITED_DEPLOY.index("services:")]
    assert new.startswith(anchor)
    assert service_view(new, "worker") == service_view(INHERITED_DEPLOY, "worker")
    assert new.endswith("  worker:\n    <<: *limits\n    image: worker\n")
    view = service_view(new, "mlflow")
    assert view["environment"] == {"TZ": "UTC", "WORKERS": "2"}
    assert view["deploy"] == {"resources": {"limits": {"memory": "1g", "cpus": "0.5"},
                                            "reservations": {"memory": "512m"}}}
    assert view["labels"] == ["team=quant", "svc=mlflow"]  # the list form, and its quotes, kept
    assert '    - "svc=mlflow"' in new
    assert view["restart"] == "no"  # not managed here: still inherited
    assert patch_compose_service(new, "mlflow", patch) == (new, [])


def test_alias_shared_by_two_services_is_not_changed_in_place():
    text = 'x-env: &env\n  A: "1"\nservices:\n  a:\n    environment: *env\n  b:\n    environment: *env\n'
    new, _ = patch_compose_service(text, "a", ServicePatch(environment={"A": "2"}))
    assert new == 'x-env: &env\n  A: "1"\nservices:\n  a:\n    environment:\n      A: "2"\n  b:\n    environment: *env\n'


def test_a_service_other_services_merge_is_refused_when_it_would_change():
    text = "services:\n  a: &a\n    image: x\n  b:\n    <<: *a\n"
    with pytest.raises(ComposeError, match="shared with other services through an anchor"):
        patch_compose_service(text, "a", ServicePatch(image="y"))
    assert patch_compose_service(text, "a", ServicePatch(image="x")) == (text, [])
    assert patch_compose_service(text, "b", ServicePatch(image="y"))[0].endswith("    <<: *a\n    image: y\n")


def test_empty_deploy_gets_the_limits_and_comments_stay_with_the_next_service():
    new, changed = patch_compose_service(USER_FILE, "backend", ServicePatch(
        environment={"WATCHFILES_FORCE_POLLING": "true", "PGPASSWORD": "${PGPASSWORD}"}, memory_limit=GIB))
    assert changed == ["environment.WATCHFILES_FORCE_POLLING", "deploy.resources.limits.memory"]
    assert changed_lines(USER_FILE, new) == ([], [
        "      - WATCHFILES_FORCE_POLLING=true",
        "      resources:", "        limits:", "          memory: 1g"])
    assert "    deploy:\n      resources:\n        limits:\n          memory: 1g\n\n  redis:\n" in new


def test_keys_appended_to_a_service_go_above_the_comment_about_the_next_one():
    text = "services:\n  a:\n    image: x\n    ports:\n      - 1:1\n\n  # about b\n  b:\n    image: y\n# end\n"
    new, _ = patch_compose_service(text, "a", ServicePatch(init=True))
    assert new == text.replace("      - 1:1\n", "      - 1:1\n    init: true\n")
    new, _ = patch_compose_service(text, "b", ServicePatch(init=True))
    assert new == text.replace("    image: y\n", "    image: y\n    init: true\n")


@pytest.mark.parametrize("mapping, items", [(2, 2), (2, 0), (4, 4), (4, 0)])
def test_the_files_indentation_is_kept(mapping, items):
    """Mapping indent 2 or 4; `- ` items indented under their key or not."""
    m, i = " " * mapping, " " * items

    def layout(env_items: list[str], command: list[str]) -> str:
        lines = ["services:", f"{m}web:", f"{m}{m}image: web", f"{m}{m}environment:"]
        lines += [f"{m}{m}{i}- {item}" for item in env_items]
        lines += [f"{m}{m}ports:", f"{m}{m}{i}- 80:80", f"{m}{m}command:"]
        lines += [f"{m}{m}{i}- {arg}" for arg in command]
        lines += [f"{m}{m}deploy:", f"{m}{m}{m}resources:", f"{m}{m}{m}{m}limits:", f"{m}{m}{m}{m}{m}memory: 1g"]
        return "\n".join(lines) + "\n"

    text = layout(["A=1"], ["serve"])
    patch = ServicePatch(environment={"B": "2"}, command=("serve", "--port", "80"), memory_reservation=512 * MIB)
    new, _ = patch_compose_service(text, "web", patch)
    expected = layout(["A=1", "B=2"], ["serve", "--port", '"80"']) + f"{m}{m}{m}{m}reservations:\n{m * 5}memory: 512m\n"
    assert new == expected


def test_list_environment_form_kept_pass_through_entry_gets_a_value():
    text = "services:\n  s:\n    environment:\n      - KEEP=1\n      - GUNICORN_CMD_ARGS\n      - 'QUOTED=a'\n"
    new, changed = patch_compose_service(text, "s", ServicePatch(
        environment={"GUNICORN_CMD_ARGS": "", "QUOTED": "b", "ADDED": "x"}))
    assert changed == ["environment.GUNICORN_CMD_ARGS", "environment.QUOTED", "environment.ADDED"]
    assert new == ("services:\n  s:\n    environment:\n      - KEEP=1\n      - GUNICORN_CMD_ARGS=\n"
                   "      - 'QUOTED=b'\n      - ADDED=x\n")


@pytest.mark.parametrize("value, written", [
    ("3", '"3"'), ("true", '"true"'), ("no", '"no"'), ("", '""'), ("1.5", '"1.5"'), ("2024-01-01", '"2024-01-01"'),
    ("0x1f", '"0x1f"'), ("plain text", "plain text"), ("${VAR}", "${VAR}"), ("a: b", "'a: b'"),
])
def test_new_strings_compose_would_read_as_other_types_are_quoted(value, written):
    new, _ = patch_compose_service("services:\n  s:\n    image: x\n", "s", ServicePatch(environment={"K": value}))
    assert new == f"services:\n  s:\n    image: x\n    environment:\n      K: {written}\n"
    assert yaml.safe_load(new)["services"]["s"]["environment"]["K"] == value  # as compose v1 reads it


def test_quotes_of_the_replaced_value_kept_numbers_compare_as_strings():
    text = "services:\n  s:\n    environment:\n      A: '3'\n      B: 4\n      C: \"x\"\n"
    assert patch_compose_service(text, "s", ServicePatch(environment={"A": "3", "B": "4"})) == (text, [])
    new, _ = patch_compose_service(text, "s", ServicePatch(environment={"A": "5", "B": "6", "C": "y"}))
    assert new == "services:\n  s:\n    environment:\n      A: '5'\n      B: \"6\"\n      C: \"y\"\n"


def test_command_list_forms_kept():
    flow = 'services:\n  s:\n    command: ["a", "b"]\n'
    assert patch_compose_service(flow, "s", ServicePatch(command=("a", "c", "1")))[0] == (
        'services:\n  s:\n    command: ["a", "c", "1"]\n')
    missing = "services:\n  s:\n    image: x\n"
    assert patch_compose_service(missing, "s", ServicePatch(command=("a", "2")))[0] == (
        missing + '    command:\n      - a\n      - "2"\n')


def test_memory_zero_removes_the_limit_legacy_key_and_emptied_mappings():
    text = ("services:\n  s:\n    image: x\n    mem_limit: 1g   # legacy\n    deploy:\n      resources:\n"
            "        limits:\n          memory: 1g\n        reservations:\n          memory: 100m\n\n  # t\n  t:\n"
            "    image: y\n")
    new, changed = patch_compose_service(text, "s", ServicePatch(memory_limit=0))
    assert changed == ["deploy.resources.limits.memory", "mem_limit"]
    assert new == ("services:\n  s:\n    image: x\n    deploy:\n      resources:\n        reservations:\n"
                   "          memory: 100m\n\n  # t\n  t:\n    image: y\n")
    newer, changed = patch_compose_service(new, "s", ServicePatch(memory_limit=0, memory_reservation=0))
    assert changed == ["deploy.resources.reservations.memory"]
    assert newer == "services:\n  s:\n    image: x\n\n  # t\n  t:\n    image: y\n"
    assert patch_compose_service(newer, "s", ServicePatch(memory_limit=0, memory_reservation=0)) == (newer, [])


def test_memory_zero_on_an_inherited_limit_keeps_an_override():
    new, _ = patch_compose_service(INHERITED_DEPLOY, "mlflow", ServicePatch(memory_limit=0))
    assert service_view(new, "mlflow")["deploy"] == {"resources": {"limits": {"cpus": "0.5"}}}
    assert service_view(new, "worker")["deploy"]["resources"]["limits"]["memory"] == "256m"


def test_legacy_mem_limit_kept_equal_and_format_2_uses_it():
    text = "services:\n  s:\n    mem_limit: 420m\n    mem_reservation: \"100m\"\n"
    new, changed = patch_compose_service(text, "s", ServicePatch(memory_limit=GIB, memory_reservation=512 * MIB))
    assert changed == ["deploy.resources.limits.memory", "mem_limit", "deploy.resources.reservations.memory",
                       "mem_reservation"]
    assert new == ("services:\n  s:\n    mem_limit: 1g\n    mem_reservation: \"512m\"\n    deploy:\n      resources:\n"
                   "        limits:\n          memory: 1g\n        reservations:\n          memory: 512m\n")
    v2 = "version: '2.4'\nservices:\n  s:\n    image: x\n"
    assert patch_compose_service(v2, "s", ServicePatch(memory_limit=GIB))[0] == v2 + "    mem_limit: 1g\n"


def test_remove_environment_mapping_and_list():
    text = "services:\n  s:\n    environment:\n      A: '1'   # a\n      # about B\n      B: '2'\n    image: x\n"
    new, changed = patch_compose_service(text, "s", ServicePatch(remove_environment=frozenset({"A", "Z"})))
    assert changed == ["environment.A"]
    assert new == "services:\n  s:\n    environment:\n      # about B\n      B: '2'\n    image: x\n"
    new, _ = patch_compose_service(new, "s", ServicePatch(remove_environment=frozenset({"B"})))
    assert new == "services:\n  s:\n      # about B\n    image: x\n"
    listed = "services:\n  s:\n    environment:\n      - A=1\n      - B=2\n"
    assert patch_compose_service(listed, "s", ServicePatch(remove_environment=frozenset({"B"})))[0] == (
        "services:\n  s:\n    environment:\n      - A=1\n")
    # A key both set and removed is set.
    assert patch_compose_service(listed, "s", ServicePatch(environment={"B": "2"},
                                                           remove_environment=frozenset({"B"}))) == (listed, [])


def test_restart_and_init_by_meaning():
    text = "services:\n  s:\n    restart: no\n    init: yes\n"
    assert patch_compose_service(text, "s", ServicePatch(restart="no", init=True)) == (text, [])
    new, changed = patch_compose_service(text, "s", ServicePatch(restart="on-failure:3", init=False))
    assert (new, changed) == ("services:\n  s:\n    restart: on-failure:3\n    init: false\n", ["restart", "init"])
    new, _ = patch_compose_service("services:\n  s:\n    image: x\n", "s", ServicePatch(restart="no"))
    assert yaml.safe_load(new)["services"]["s"]["restart"] == "no"


def test_crlf_line_ends_and_document_start_kept():
    text = "---\r\n# c\r\nservices:\r\n  s:\r\n    image: x\r\n"
    assert patch_compose_service(text, "s", ServicePatch(image="y"))[0] == text.replace("x", "y")


@pytest.mark.parametrize("text, service, message", [
    (USER_FILE, "mlfow", "service 'mlfow' is not in the compose file (services: postgres, mlflow, backend, redis)"),
    ("version: '3'\n", "mlflow", "compose file has no 'services' mapping"),
    ("services: [a, b]\n", "mlflow", "compose file has no 'services' mapping"),
    ("services:\n  mlflow: [\n", "mlflow", "compose file is not valid YAML: expected the node content"),
    ("services:\n  a: {}\n  a: {}\n", "a", "compose file is not valid YAML: found duplicate key"),
    ("services:\n  mlflow:\n", "mlflow", "service 'mlflow' is empty, expected a mapping"),
    ("services:\n  mlflow:\n    environment: 5\n", "mlflow",
     "service 'mlflow': environment is an int, expected a mapping or a list"),
    ("services:\n  mlflow:\n    deploy: [1]\n", "mlflow", "service 'mlflow': deploy is a list, expected a mapping"),
    ("services:\n  mlflow:\n    deploy:\n      resources: x\n", "mlflow",
     "service 'mlflow': deploy.resources is a string, expected a mapping"),
])
def test_errors_are_one_line(text, service, message):
    with pytest.raises(ComposeError) as raised:
        patch_compose_service(text, service, ServicePatch(environment={"A": "1"}, memory_limit=GIB))
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_service_view_resolves_merge_keys():
    view = service_view(USER_FILE, "postgres")
    assert view == {"image": "postgres:15",
                    "environment": {"POSTGRES_USER": "quant_user", "POSTGRES_PASSWORD": "${PGPASSWORD}"},
                    "volumes": ["pgdata:/var/lib/postgresql/data"], "restart": "unless-stopped",
                    "logging": {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}}
    assert type(view["image"]) is str
    with pytest.raises(ComposeError, match="not in the compose file"):
        service_view(USER_FILE, "nope")


def test_compose_diff():
    new, _ = patch_compose_service(USER_FILE, "redis", ServicePatch(init=True))
    assert compose_diff(USER_FILE, new, "/srv/c.yml").splitlines() == [
        "--- /srv/c.yml (now)", "+++ /srv/c.yml (patched)", "@@ -51,6 +51,7 @@",
        "   redis:", "     <<: *common", "     image: redis:7   # cache only", "+    init: true", " ",
        " volumes:", "   pgdata: {}   # named volume, survives `down`"]
    assert compose_diff(USER_FILE, USER_FILE, "x") == ""


def test_no_header_constant():
    assert not hasattr(compose, "HEADER")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (compose v1) is not installed")
def test_docker_compose_reads_the_patched_file(tmp_path):
    new, _ = patch_compose_service(USER_FILE, "mlflow", MLFLOW_PATCH)
    new, _ = patch_compose_service(new, "backend", ServicePatch(
        environment={"WATCHFILES_FORCE_POLLING": "true"}, memory_limit=GIB, restart="no"))
    path = tmp_path / "docker-compose-ml.yml"
    path.write_text(new)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSWORD": "placeholder-not-a-secret",
           "HOME": str(tmp_path)}
    result = subprocess.run(["docker-compose", "-p", "test", "-f", str(path), "config"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    mlflow = services["mlflow"]
    assert mlflow["command"] == "mlflow server --host 0.0.0.0 --port 5000 --workers 2"
    assert mlflow["environment"] == {"MLFLOW_S3_ENDPOINT_URL": "http://minio:9000", "GUNICORN_CMD_ARGS": "",
                                     "WORKERS": "2", "PGPASSWORD": "placeholder-not-a-secret"}
    assert mlflow["deploy"]["resources"] == {"limits": {"memory": "1g", "cpus": 1.5},
                                             "reservations": {"memory": "512m"}}
    assert (mlflow["restart"], mlflow["init"], mlflow["labels"]) == ("always", True, {"io.quantlab.managed": "yes"})
    assert mlflow["logging"]["options"] == {"max-size": "10m", "max-file": "3"}  # still merged from x-common
    backend = services["backend"]
    assert backend["environment"]["WATCHFILES_FORCE_POLLING"] == "true" and backend["restart"] == "no"
    assert backend["deploy"]["resources"]["limits"]["memory"] == "1g"
    assert services["postgres"]["restart"] == services["redis"]["restart"] == "unless-stopped"
    assert "pgdata" in yaml.safe_load(result.stdout)["volumes"]


@pytest.mark.parametrize("version, ok", [
    ("", True), ("2.2", True), ("2.4", True), ("3.7", True), ("3.9", True), ("'3.8'", True),
    ("2", False), ("2.1", False), ("3", False), ("3.6", False), ("1", False),
])
def test_init_needs_a_file_format_that_has_it(version, ok):
    """docker-compose v1 validates a file against its `version`: `init` came in 2.2 and 3.7; an
    older version is refused with the reason, the file untouched (no version: compose spec, fine)."""
    head = f"version: {version}\n" if version else ""
    text = head + "services:\n  s:\n    image: x\n"
    if ok:
        new, changed = patch_compose_service(text, "s", ServicePatch(init=True))
        assert (new, changed) == (text + "    init: true\n", ["init"])
    else:
        with pytest.raises(ComposeError, match="needs compose file format 2.2. or 3.7."):
            patch_compose_service(text, "s", ServicePatch(init=True))
    # Turning it off, or a file that already says true, never needs a newer format.
    assert patch_compose_service(text + "    init: true\n", "s", ServicePatch(init=True))[1] == []
    assert patch_compose_service(text + "    init: true\n", "s", ServicePatch(init=False))[1] == ["init"]

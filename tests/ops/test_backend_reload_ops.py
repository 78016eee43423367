"""The backend --reload fix without a host (tasks/operations/backend_reload.py): the Dockerfile and
compose operations from file contents (tests/ops/backend_reload.<operation>/*.json), the container
operation and the whole deploy's plan from recorded `docker inspect` output
(tests/ops/data/backend-*.json, tests/ops/record_backend.py)."""
from __future__ import annotations

import hashlib

import pytest
import yaml
from pyinfra.api import FunctionCommand, OperationError

from tasks.operations import backend_reload
from tests.ops.deploy_plan import plan as deploy_plan
from tests.ops.harness import InspectAnswers, cases, plan, recorded

NAME = "qtops-backend"
IMAGE = "quantlab/backend:5766e3318cda"  # Config.Image of the recorded containers
UVICORN = ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000", "--reload"]


def check_operation(op, case):
    if "exception" in case:
        with pytest.raises(OperationError) as error:
            plan(op, case["facts"], **case["kwargs"])
        assert str(error.value) == case["exception"]["message"]
        return
    planned = plan(op, case["facts"], **case["kwargs"])
    assert planned.rendered() == case["commands"]
    assert planned.noop == case.get("noop_description")


@pytest.mark.parametrize("case", cases("backend_reload.dockerfile"))
def test_dockerfile(case):
    check_operation(backend_reload.dockerfile, case)


@pytest.mark.parametrize("case", cases("backend_reload.compose_service"))
def test_compose_service(case):
    check_operation(backend_reload.compose_service, case)


# -- the container ----------------------------------------------------------------------------------

def inspect_facts(container: str) -> dict:
    """ContainerInspect as the operation reads it: by the container's name, then its image (as
    the host's filter answers: secret env values as digests)."""
    found = recorded(container)
    return {"docker.ContainerInspect": InspectAnswers({
        f"container={NAME}, image={NAME}": {"container": found, "previous": None, "image": None},
        f"container={NAME}, image={IMAGE}": {"container": found, "previous": None,
                                            "image": recorded("backend-image")},
    })}


def test_container_recreated_with_polling_and_the_delay():
    planned = plan(backend_reload.container, inspect_facts("backend-incident"), container=NAME)
    assert planned.rendered() == [["_recreate", True]]
    (command,) = planned.commands
    assert isinstance(command, FunctionCommand)
    spec, _, verify = command.args
    assert spec.command == tuple(UVICORN + ["--reload-delay", "2"])
    assert spec.env["WATCHFILES_FORCE_POLLING"] == "true"
    assert spec.env["DB_USER"] == "quant_user" and "PATH" not in spec.env  # the image's env stays the image's
    assert spec.ports == ("127.0.0.1:15504:8000/tcp",) and spec.networks == ("qtops-backend-net",)
    assert spec.secret_env_keys == {"PGPASSWORD"}
    plan_text = "\n".join(planned.logs)
    assert "WATCHFILES_FORCE_POLLING" in plan_text and "--reload-delay" in plan_text
    assert "placeholder-not-a-secret" not in plan_text
    assert callable(verify)


def test_container_noop_when_fixed():
    planned = plan(backend_reload.container, inspect_facts("backend-fixed"), container=NAME)
    assert planned.commands == []
    assert planned.noop == f"container {NAME} matches the settings"


def test_container_another_delay_recreates():
    planned = plan(backend_reload.container, inspect_facts("backend-fixed"), container=NAME, reload_delay=5)
    assert planned.rendered() == [["_recreate", True]]
    assert planned.commands[0].args[0].command[-2:] == ("--reload-delay", "5")


def test_container_refused_when_missing():
    facts = {"docker.ContainerInspect": {
        f"container={NAME}, image={NAME}": {"container": None, "previous": None, "image": None}}}
    with pytest.raises(OperationError, match=f"backend container {NAME} does not exist on this host"):
        plan(backend_reload.container, facts, container=NAME)


def test_container_refused_without_the_docker_cli():
    facts = {"docker.ContainerInspect": {f"container={NAME}, image={NAME}": None}}
    with pytest.raises(OperationError, match="docker CLI is not installed"):
        plan(backend_reload.container, facts, container=NAME)


# -- the deploy -------------------------------------------------------------------------------------

DOCKERFILE, COMPOSE = "/srv/quant/backend/Dockerfile", "/srv/quant/docker-compose-ml.yml"


def deploy_facts(container: str, dockerfile: list[str] | None, compose: list[str] | None) -> dict:
    """The container's inspect, the two files' lines (as the host's filter reads them) and what
    pyinfra's files.put reads of them (their mode and owner, their SHA-1)."""
    def sha1(lines: list[str] | None) -> str | None:
        return None if lines is None else hashlib.sha1(("\n".join(lines) + "\n").encode()).hexdigest()

    return {**inspect_facts(container),
            "compose.ConfigText": {f"path={DOCKERFILE}": {"lines": dockerfile, "secret_lines": []},
                                   f"path={COMPOSE}": {"lines": compose, "secret_lines": []}},
            "files.File": {f"path={path}": {"mode": 644, "user": "root", "group": "root"}
                           for path, lines in ((DOCKERFILE, dockerfile), (COMPOSE, compose)) if lines},
            "files.Sha1File": {f"path={path}": sha1(lines)
                               for path, lines in ((DOCKERFILE, dockerfile), (COMPOSE, compose)) if lines},
            "server.TmpDir": "/tmp"}


def case_lines(folder: str, name: str) -> list[str]:
    case = next(c.values[0] for c in cases(folder) if c.id == name)
    return next(iter(case["facts"]["compose.ConfigText"].values()))["lines"]


def test_deploy_plans_all_three_on_the_incident():
    facts = deploy_facts("backend-incident", case_lines("backend_reload.dockerfile", "patch_the_labs_recipe"),
                         case_lines("backend_reload.compose_service", "polling_env_added_command_left_to_the_dockerfile"))
    data = {"backend": {"container": NAME, "dockerfile": DOCKERFILE, "compose_file": COMPOSE}}
    steps = deploy_plan(backend_reload.fix_backend_reload, data, facts)
    assert [name for name, _ in steps] == [f"Backend Dockerfile {DOCKERFILE}",
                                           f"Compose service backend in {COMPOSE}",
                                           f"Backend container {NAME}"]
    (dockerfile, *dockerfile_mode), (compose, *compose_mode), container = (commands for _, commands in steps)
    assert dockerfile[0] == "upload" and "--reload-delay" in dockerfile[1]
    # files.put keeps each file's owner and mode
    assert dockerfile_mode == [f"chown root:root {DOCKERFILE}", f"chmod 644 {DOCKERFILE}"]
    assert compose_mode == [f"chown root:root {COMPOSE}", f"chmod 644 {COMPOSE}"]
    service = yaml.safe_load(compose[1])["services"]["backend"]
    assert service["environment"]["WATCHFILES_FORCE_POLLING"] == "true" and "command" not in service
    assert container == [["_recreate", True]]


def test_deploy_compose_only_takes_the_command_from_the_container():
    facts = deploy_facts("backend-incident", None,
                         case_lines("backend_reload.compose_service", "polling_env_added_command_left_to_the_dockerfile"))
    data = {"backend": {"container": NAME, "compose_file": COMPOSE}}
    steps = dict(deploy_plan(backend_reload.fix_backend_reload, data, facts))
    (compose, *_) = steps[f"Compose service backend in {COMPOSE}"]
    assert yaml.safe_load(compose[1])["services"]["backend"]["command"] == UVICORN + ["--reload-delay", "2"]


def test_deploy_second_run_changes_nothing():
    facts = deploy_facts("backend-fixed", case_lines("backend_reload.dockerfile", "noop_when_patched"),
                         case_lines("backend_reload.compose_service", "noop_when_patched"))
    data = {"backend": {"container": NAME, "dockerfile": DOCKERFILE, "compose_file": COMPOSE}}
    steps = deploy_plan(backend_reload.fix_backend_reload, data, facts)
    assert len(steps) == 3 and all(commands == [] for _, commands in steps), steps


def test_deploy_without_files_touches_only_the_container():
    steps = deploy_plan(backend_reload.fix_backend_reload, {"backend": {"container": NAME}},
                        inspect_facts("backend-incident"))
    assert [name for name, _ in steps] == [f"Backend container {NAME}"]


def test_polling_off_adds_nothing_and_removes_nothing():
    # force_polling False: the fix does not add the env, nor take away one the container has.
    planned = plan(backend_reload.container, inspect_facts("backend-fixed"), container=NAME, force_polling=False)
    assert planned.commands == [] and planned.noop == f"container {NAME} matches the settings"
    planned = plan(backend_reload.container, inspect_facts("backend-incident"), container=NAME, force_polling=False)
    assert "WATCHFILES_FORCE_POLLING" not in planned.commands[0].args[0].env

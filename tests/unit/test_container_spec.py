import copy
import dataclasses

import pytest

from tasks.core.container_spec import (
    MANAGED_ENV_LABEL,
    ContainerSpec,
    describe_plan,
    diff_spec,
    docker_run_args,
    docker_update_args,
    env_file_text,
    format_plan,
    image_defaults_from_inspect,
    normalize_port,
    spec_from_inspect,
)
from tasks.core.sizes import GIB, MIB

COMMAND = (
    "mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "2",
    "--gunicorn-opts", "--timeout 60 --max-requests 100 --max-requests-jitter 10 --worker-class sync",
)

IMAGE_INSPECT = [
    {
        "Id": "sha256:aaaaaaaaaaaa1111",
        "Config": {
            "Env": ["PATH=/opt/venv/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["mlflow", "server"],
            "Entrypoint": None,
            "Labels": {"org.opencontainers.image.title": "mlflow"},
        },
    }
]


def inspect_json(**overrides):
    """`docker inspect` of a container created from DESIRED (as the runner would)."""
    data = {
        "Id": "c0ffee",
        "Name": "/quant-mlflow",
        "Image": "sha256:aaaaaaaaaaaa1111",
        "Config": {
            "Image": "quantlab/mlflow:2.9.2",
            "Cmd": list(COMMAND),
            "Entrypoint": None,
            "Env": [
                "GUNICORN_CMD_ARGS=",
                "MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:s3cret@db/mlflow",
                "PATH=/opt/venv/bin:/usr/bin:/bin",
                "LANG=C.UTF-8",
            ],
            "Labels": {
                "team": "quant",
                MANAGED_ENV_LABEL: "GUNICORN_CMD_ARGS,MLFLOW_BACKEND_STORE_URI",
                "org.opencontainers.image.title": "mlflow",
                "com.docker.compose.project": "stack",
            },
        },
        "HostConfig": {
            "Memory": GIB,
            "MemoryReservation": 512 * MIB,
            "MemorySwap": 2 * GIB,
            "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
            "PortBindings": {"5000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "15500"}]},
        },
        "NetworkSettings": {"Networks": {"lab-net": {}, "bridge": {}}},
    }
    for path, value in overrides.items():
        *parents, leaf = path.split("__")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    return [data]


DESIRED = ContainerSpec(
    name="quant-mlflow",
    image="quantlab/mlflow:2.9.2",
    command=COMMAND,
    env={"GUNICORN_CMD_ARGS": "", "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:s3cret@db/mlflow"},
    secret_env_keys=frozenset({"MLFLOW_BACKEND_STORE_URI"}),
    labels={"team": "quant"},
    memory=GIB,
    memory_reservation=512 * MIB,
    restart_policy="unless-stopped",
    ports=("127.0.0.1:15500:5000/tcp",),
    networks=("lab-net",),
)
IMAGE = image_defaults_from_inspect(IMAGE_INSPECT)


def plan_for(desired=DESIRED, image=IMAGE, **overrides):
    return diff_spec(desired, spec_from_inspect(inspect_json(**overrides)), image)


def test_spec_from_inspect_reads_everything():
    actual = spec_from_inspect(inspect_json(HostConfig__RestartPolicy={"Name": "on-failure", "MaximumRetryCount": 3}))
    assert actual.name == "quant-mlflow"
    assert actual.command == COMMAND
    assert actual.env["LANG"] == "C.UTF-8"
    assert actual.memory == GIB and actual.memory_reservation == 512 * MIB
    assert actual.restart_policy == "on-failure:3"
    assert actual.ports == ("127.0.0.1:15500:5000/tcp",)
    assert actual.networks == ("bridge", "lab-net")
    assert actual.image_id == "sha256:aaaaaaaaaaaa1111"
    assert actual.managed_env_keys == {"GUNICORN_CMD_ARGS", "MLFLOW_BACKEND_STORE_URI"}


@pytest.mark.parametrize(
    "policy, expected",
    [({"Name": "", "MaximumRetryCount": 0}, "no"), (None, "no"), ({"Name": "always"}, "always"),
     ({"Name": "on-failure", "MaximumRetryCount": 0}, "on-failure")],
)
def test_restart_policy_normalized(policy, expected):
    assert spec_from_inspect(inspect_json(HostConfig__RestartPolicy=policy)).restart_policy == expected


def test_equal_is_none_despite_image_env_and_compose_labels():
    plan = plan_for()
    assert plan.action == "none", format_plan(plan)
    assert plan.changes == () and not plan.changed
    assert describe_plan(plan) == "container quant-mlflow matches the settings"


def test_no_container_is_create():
    plan = diff_spec(DESIRED, None, IMAGE)
    assert plan.action == "create"
    assert describe_plan(plan) == "create container quant-mlflow"


def test_memory_only_is_update_with_readable_plan():
    plan = plan_for(HostConfig__Memory=420 * MIB, HostConfig__MemoryReservation=256 * MIB)
    assert plan.action == "update"
    assert format_plan(plan) == ["memory: 420 MiB -> 1 GiB", "memory_reservation: 256 MiB -> 512 MiB"]
    assert describe_plan(plan) == "update in place container quant-mlflow: memory, memory_reservation"


def test_restart_policy_only_is_update():
    plan = plan_for(HostConfig__RestartPolicy={"Name": "no"})
    assert plan.action == "update"
    assert format_plan(plan) == ["restart_policy: no -> unless-stopped"]


def test_memory_and_command_is_recreate():
    old_cmd = ["mlflow", "server", "--workers", "4"]
    plan = plan_for(HostConfig__Memory=420 * MIB, Config__Cmd=old_cmd)
    assert plan.action == "recreate"
    lines = format_plan(plan)
    assert "command: mlflow server --workers 4 -> mlflow server --host 0.0.0.0 --port 5000 --workers 2 --gunicorn-opts '--timeout 60 --max-requests 100 --max-requests-jitter 10 --worker-class sync'" in lines
    assert "memory: 420 MiB -> 1 GiB" in lines


@pytest.mark.parametrize(
    "override, setting",
    [
        ({"Config__Image": "quantlab/mlflow:2.8.0"}, "image"),
        ({"Image": "sha256:bbbbbbbbbbbb2222"}, "image_id"),
        ({"Config__Labels": {"team": "ops"}}, "labels.team"),
        ({"HostConfig__PortBindings": {"5000/tcp": [{"HostIp": "", "HostPort": "15500"}]}}, "ports"),
        ({"NetworkSettings": {"Networks": {"bridge": {}}}}, "networks"),
        ({"Config__Entrypoint": ["/bin/sh", "-c"]}, "entrypoint"),
    ],
)
def test_other_differences_recreate(override, setting):
    plan = plan_for(**override)
    assert plan.action == "recreate"
    assert [c.setting for c in plan.changes] == [setting]


def test_image_added_env_is_not_drift_but_desired_env_is():
    data = inspect_json()
    data[0]["Config"]["Env"].append("MLFLOW_IMAGE_EXTRA=1")
    assert diff_spec(DESIRED, spec_from_inspect(data), IMAGE).action == "none"
    desired = dataclasses.replace(DESIRED, env={**DESIRED.env, "LANG": "en_US.UTF-8"})
    plan = diff_spec(desired, spec_from_inspect(data), IMAGE)
    assert plan.action == "recreate"
    assert format_plan(plan) == ["env.LANG: C.UTF-8 -> en_US.UTF-8"]


def test_stale_gunicorn_cmd_args_is_drift():
    data = inspect_json()
    data[0]["Config"]["Env"][0] = "GUNICORN_CMD_ARGS=--workers 4 --threads 8"
    plan = diff_spec(DESIRED, spec_from_inspect(data), IMAGE)
    assert plan.action == "recreate"
    assert format_plan(plan) == ["env.GUNICORN_CMD_ARGS: '--workers 4 --threads 8' -> ''"]


def test_secret_change_detected_but_masked():
    data = inspect_json()
    data[0]["Config"]["Env"][1] = "MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:OLDPASS@db/mlflow"
    plan = diff_spec(DESIRED, spec_from_inspect(data), IMAGE)
    assert plan.action == "recreate"
    assert format_plan(plan) == ["env.MLFLOW_BACKEND_STORE_URI: *** -> ***"]
    text = repr(plan) + " ".join(format_plan(plan)) + describe_plan(plan)
    assert "OLDPASS" not in text and "s3cret" not in text


def test_secret_added_shows_unset_to_mask():
    data = inspect_json()
    del data[0]["Config"]["Env"][1]
    plan = diff_spec(DESIRED, spec_from_inspect(data), IMAGE)
    assert format_plan(plan) == ["env.MLFLOW_BACKEND_STORE_URI: (unset) -> ***"]


def test_dropped_managed_env_key_is_drift_and_masked():
    desired = dataclasses.replace(DESIRED, env={"GUNICORN_CMD_ARGS": ""}, secret_env_keys=frozenset())
    plan = plan_for(desired=desired)
    assert plan.action == "recreate"
    assert format_plan(plan) == ["env.MLFLOW_BACKEND_STORE_URI: *** -> (unset)"]
    assert "s3cret" not in repr(plan)


def test_dropped_key_equal_to_image_default_is_not_drift():
    data = inspect_json()
    data[0]["Config"]["Labels"][MANAGED_ENV_LABEL] += ",LANG"
    assert diff_spec(DESIRED, spec_from_inspect(data), IMAGE).action == "none"


def test_removing_a_limit_needs_recreate():
    desired = dataclasses.replace(DESIRED, memory_reservation=0)
    plan = plan_for(desired=desired)
    assert plan.action == "recreate"
    assert format_plan(plan) == ["memory_reservation: 512 MiB -> unlimited"]


def test_entrypoint_none_means_image_default():
    assert plan_for(image=None).action == "none"
    assert plan_for(image=None, Config__Entrypoint=["tini"]).action == "none"  # unknown image: not compared


def test_normalize_port():
    assert normalize_port("127.0.0.1:15500:5000") == "127.0.0.1:15500:5000/tcp"
    assert normalize_port("8080:80/udp") == "8080:80/udp"
    assert normalize_port("[::1]:15500:5000") == "[::1]:15500:5000/tcp"
    with pytest.raises(ValueError):
        normalize_port("15500")


def test_ipv6_binding_round_trips():
    actual = spec_from_inspect(
        inspect_json(HostConfig__PortBindings={"5000/tcp": [{"HostIp": "::1", "HostPort": "15500"}]})
    )
    assert actual.ports == (normalize_port("[::1]:15500:5000"),)


def test_env_file_text_and_run_args_keep_secrets_off_the_command_line():
    text = env_file_text(DESIRED)
    assert text == (
        "GUNICORN_CMD_ARGS=\n"
        "MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:s3cret@db/mlflow\n"
    )
    args = docker_run_args(DESIRED, "/tmp/quant-mlflow.env")
    assert "s3cret" not in " ".join(args)
    assert args[:2] == ["docker", "run"]
    assert args[args.index("--env-file") + 1] == "/tmp/quant-mlflow.env"
    assert args[args.index("--memory") + 1] == "1g"
    assert args[args.index("--memory-reservation") + 1] == "512m"
    assert args[args.index("--restart") + 1] == "unless-stopped"
    assert args[args.index("--publish") + 1] == "127.0.0.1:15500:5000/tcp"
    assert args[args.index("--network") + 1] == "lab-net"
    assert f"{MANAGED_ENV_LABEL}=GUNICORN_CMD_ARGS,MLFLOW_BACKEND_STORE_URI" in args
    assert "team=quant" in args
    assert "-e" not in args and "--env" not in args
    image_at = args.index("quantlab/mlflow:2.9.2")
    assert tuple(args[image_at + 1:]) == COMMAND


def test_run_args_refuse_env_without_env_file():
    with pytest.raises(ValueError, match="env_file"):
        docker_run_args(DESIRED, None)


def test_env_file_refuses_multiline_values():
    spec = dataclasses.replace(DESIRED, env={"A": "x\ny"})
    with pytest.raises(ValueError, match="spans lines"):
        env_file_text(spec)


def test_round_trip_run_args_to_inspect_is_none():
    """What docker_run_args sets is exactly what diff_spec compares (labels incl. managed env)."""
    args = docker_run_args(DESIRED, "/tmp/x.env")
    labels = dict(a.split("=", 1) for a, prev in zip(args[1:], args) if prev == "--label")
    data = inspect_json(Config__Labels=labels)
    assert diff_spec(DESIRED, spec_from_inspect(data), IMAGE).action == "none"


def test_update_args_raise_swap_with_memory():
    args = docker_update_args(DESIRED)
    assert args == [
        "docker", "update", "--restart", "unless-stopped", "--memory", "1g",
        "--memory-swap", "2g", "--memory-reservation", "512m", "quant-mlflow",
    ]


def test_inspect_input_is_not_mutated():
    data = inspect_json()
    before = copy.deepcopy(data)
    spec_from_inspect(data)
    assert data == before


# -- init (Docker's --init: docker-init as PID 1) ---------------------------------------------------

WITH_INIT = dataclasses.replace(DESIRED, init=True)


def test_init_missing_on_the_container_is_a_recreate():
    """inspect's HostConfig.Init is null on a container made without --init: off, so wanting it
    recreates (it cannot be changed in place)."""
    plan = plan_for(WITH_INIT)
    assert plan.action == "recreate"
    assert format_plan(plan) == ["init: off -> on"]
    assert plan_for(WITH_INIT, HostConfig__Init=False).action == "recreate"
    assert plan_for(WITH_INIT, HostConfig__Init=True).action == "none"


def test_init_not_managed_leaves_the_containers_own():
    """A spec without an opinion (None) compares nothing: a container with an init stays as it is."""
    assert plan_for(DESIRED, HostConfig__Init=True).action == "none"
    assert plan_for(DESIRED).action == "none"


def test_init_off_wanted_recreates_a_container_that_has_one():
    off = dataclasses.replace(DESIRED, init=False)
    assert format_plan(plan_for(off, HostConfig__Init=True)) == ["init: on -> off"]
    assert plan_for(off).action == "none"  # null reads as off


def test_run_args_carry_the_init_and_read_back_as_none():
    args = docker_run_args(WITH_INIT, "/tmp/x.env")
    assert args[:8] == ["docker", "run", "--detach", "--name", "quant-mlflow", "--restart", "unless-stopped", "--init"]
    assert "--init=false" in docker_run_args(dataclasses.replace(DESIRED, init=False), "/tmp/x.env")
    assert not any(a.startswith("--init") for a in docker_run_args(DESIRED, "/tmp/x.env"))
    labels = dict(a.split("=", 1) for a, prev in zip(args[1:], args) if prev == "--label")
    data = inspect_json(Config__Labels=labels, HostConfig__Init=True)
    assert diff_spec(WITH_INIT, spec_from_inspect(data), IMAGE).action == "none"

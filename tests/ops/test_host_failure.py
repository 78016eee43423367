"""A host's failure is its own, and commands at execution time carry the operation's connector
arguments: pyinfra's own machinery (State, Inventory, add_op/add_deploy, connect_all, run_ops)
over real hosts of pyinfra's @local connector on this machine (three hosts, each given the local
connector: pyinfra allows one "@local" by name). No engine, no SSH.

- an exception in an operation's generator (a refusal, a bug) or in a deploy's body while it is
  loaded for one host fails that host alone, with its reason; the others run every operation;
- a command a callback runs through tasks/operations/runner.py runs as the operation says
  (``_su_user``: a real `su`), where a bare ``host.run_shell_command`` would not.
"""
from __future__ import annotations

import io
import logging
import os
import pwd

import pytest
from pyinfra.api import Config, FunctionCommand, Inventory, OperationError, State, StringCommand
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage
from pyinfra.connectors.local import LocalConnector

from tasks import settings as host_settings
from tasks.operations import refusals, runner
from tasks.operations.refusals import deploy, operation

NAMES = ["good1", "bad", "good2"]


@pytest.fixture
def state():
    inventory = Inventory((list(NAMES), {}))
    state = State(inventory, Config(PARALLEL=3))
    for host in inventory:
        host.connector_cls = LocalConnector
        host.connector = LocalConnector(state, host)
    state.set_stage(StateStage.Connect)
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    return state


@pytest.fixture
def logs():
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger("pyinfra")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def _run(state):
    state.set_stage(StateStage.Execute)
    run_ops(state)


def _by_name(hosts) -> set[str]:
    return {host.name for host in hosts}


@operation()
def refuse_on_bad(marker: str, error: type[Exception] = OperationError):
    """Refuses on host "bad" (as "image ... is not on this host" does); a command elsewhere."""
    from pyinfra import host

    if host.name == "bad":
        raise error(f"image x is not on this host: pull or build it first; nothing was changed ({marker})")
    yield StringCommand("true")


@operation()
def everyone():
    yield StringCommand("true")


@pytest.mark.parametrize("check_for_changes", [True, False], ids=["planned", "at-execution"])
def test_a_refusal_in_an_operation_fails_that_host_alone(state, logs, check_for_changes):
    """pyinfra re-raises a generator's exception from the host's greenlet and ends the run for
    every host. Ours fails that host alone: at execution, as its failing command; while changes
    are detected, at once (none of its operations runs). The others run every operation."""
    state.check_for_changes = check_for_changes
    add_op(state, refuse_on_bad, marker="m1")
    add_op(state, everyone)
    _run(state)
    assert _by_name(state.failed_hosts) == {"bad"}
    for host in state.inventory:
        results = state.get_results_for_host(host)
        if host.name == "bad":
            assert results.error_ops == (0 if check_for_changes else 1) and results.success_ops == 0
        else:
            assert results.success_ops == 2 and results.error_ops == 0
    named = [line for line in logs if "image x is not on this host" in line]
    assert named and all("[bad]" in line for line in named), logs


def test_a_bug_fails_that_host_alone_with_its_type(state, logs):
    add_op(state, refuse_on_bad, marker="m2", error=IndexError)
    add_op(state, everyone)
    _run(state)
    assert _by_name(state.failed_hosts) == {"bad"}
    assert any("[bad]" in line and "IndexError: image x" in line for line in logs), logs
    assert any("Traceback" in line for line in logs), "a bug keeps its traceback for whoever fixes it"


def test_inner_still_raises_for_the_outer_operation(state):
    """Called from another operation with ``_inner``, an operation raises: the outermost decides."""
    from pyinfra.context import ctx_host, ctx_state

    with ctx_state.use(state), ctx_host.use(state.inventory.get_host("bad")), \
            pytest.raises(OperationError, match="not on this host"):
        list(refuse_on_bad._inner("m3"))


@deploy("Reads its settings first")
def settings_then_ops():
    from pyinfra import host

    everyone(name="before the settings")
    host_settings.of_host(host, "mlflow")  # "bad" has a bad memory_limit
    everyone(name="after the settings")


@pytest.mark.parametrize("check_for_changes", [True, False], ids=["planned", "at-execution"])
def test_a_settings_error_while_loading_fails_that_host_alone(state, logs, check_for_changes):
    """The deploy's body raises for one host while it is loaded (after adding an operation for
    it): that host is failed at once, with the reason, and nothing runs there; the other hosts
    load and run the whole deploy."""
    state.check_for_changes = check_for_changes
    for host in state.inventory:
        host.data.mlflow = {"memory_limit": "1gb" if host.name == "bad" else "1g"}
    add_deploy(state, settings_then_ops)
    _run(state)
    assert _by_name(state.failed_hosts) == {"bad"}
    bad = state.inventory.get_host("bad")
    assert state.get_results_for_host(bad).ops == 0  # not even the operation added before
    for name in ("good1", "good2"):
        assert state.get_results_for_host(state.inventory.get_host(name)).success_ops == 2
    assert any("[bad]" in line and "mlflow.memory_limit" in line for line in logs), logs


def test_a_host_pyinfra_already_failed_stops_quietly(state, logs):
    """A fact pyinfra could not read (it names the host and fails it): no second reason."""

    @operation()
    def after_a_failed_fact():
        from pyinfra import host

        if host.name == "bad":
            host.state.fail_hosts({host._get_module()})  # as pyinfra's get_fact does
            raise RuntimeError("a fact came back empty")
        yield StringCommand("true")

    add_op(state, after_a_failed_fact)
    _run(state)
    assert _by_name(state.failed_hosts) == {"bad"}
    assert not any("a fact came back empty" in line for line in logs)


# -- the runner: connector arguments reach commands run at execution time -------------------------

NOBODY = pwd.getpwnam("nobody").pw_uid


@operation()
def who_runs(seen: dict):
    def callback(state, host):
        ok, out = runner.run_now(host, "id -u")
        bare = host.run_shell_command(StringCommand("id -u"))[1].stdout
        seen[host.name] = (ok, out.strip(), bare.strip(), runner.connector_arguments(host))
        return ok

    yield FunctionCommand(callback, (), {})


@pytest.mark.skipif(os.geteuid() != 0, reason="su to another user without a password needs root")
def test_a_callback_command_runs_as_the_operation_says(state):
    """``_su_user`` on the operation: the runner's command ran as that user (a real `su`); a
    bare run_shell_command in the same callback did not (what the deploys did before)."""
    seen: dict = {}
    add_op(state, who_runs, seen=seen, _su_user="nobody", _su_shell="/bin/sh")
    _run(state)
    assert not state.failed_hosts
    for name in NAMES:
        ok, via_runner, bare, arguments = seen[name]
        assert ok and via_runner == str(NOBODY) and bare == "0", seen
        assert arguments["_su_user"] == "nobody" and "_stdin" not in arguments


def test_put_file_carries_the_arguments_and_private_files_stay_the_login_users(state):
    """runner.put_file hands the connector the operation's arguments (with sudo, pyinfra's
    connector stages the file and copies it as root: the remediation record); private uploads
    go without escalation, 0600 in a 0700 folder, and are removed."""
    seen: dict = {}
    for host in state.inventory:
        put = host.connector.put_file

        def recording(src, dest, *args, _put=put, _name=host.name, **kwargs):
            seen.setdefault(_name, []).append((dest, {k: kwargs.get(k) for k in ("_sudo", "_su_user")}))
            return _put(src, dest, *args, **{k: v for k, v in kwargs.items() if k != "_su_user"})

        host.connector.put_file = recording

    @operation()
    def record(folder: str):
        def callback(state, host):
            return runner.put_file(host, io.BytesIO(b"{}\n"), f"{folder}/{host.name}.json")

        yield FunctionCommand(callback, (), {})

    @operation()
    def private():
        def callback(state, host):
            folder = runner.upload_private(host, {"secret": "s3cret\n"}, "quantlab-test")
            st_dir, st_file = os.stat(folder), os.stat(f"{folder}/secret")
            seen[host.name + "/private"] = (oct(st_dir.st_mode & 0o777), oct(st_file.st_mode & 0o777))
            seen[host.name + "/removed"] = runner.remove_private(host, folder) and not os.path.exists(folder)
            return True

        yield FunctionCommand(callback, (), {})

    import tempfile

    folder = tempfile.mkdtemp(prefix="quant-ops-")
    try:
        add_op(state, record, folder=folder, _su_user="nobody", _su_shell="/bin/sh")
        add_op(state, private)  # as root: another target user needs setfacl, absent here
        _run(state)
        assert not state.failed_hosts
        for name in NAMES:
            assert seen[name][0] == (f"{folder}/{name}.json", {"_sudo": False, "_su_user": "nobody"})
            assert seen[name][1][1] == {"_sudo": False, "_su_user": None}, "the private upload: no escalation"
            assert seen[name + "/private"] == ("0o700", "0o600")
            assert seen[name + "/removed"] is True
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="su to another user without a password needs root")
def test_replace_file_moves_a_new_file_over_one_the_user_cannot_write(state):
    """The record's case: root's file in a folder the user's group may write (root:<group> 2770,
    as onboarding makes /var/lib/quantlab). The user (``_su_user=nobody``) cannot write root's
    file in place, but runner.replace_file makes its own beside it and moves it over: the file is
    then the user's, 0644, with the new text, and no temp file is left."""
    import pathlib
    import shutil
    import subprocess
    import tempfile

    nobody = pwd.getpwnam("nobody")
    folder = tempfile.mkdtemp(prefix="quant-ops-")
    seen: dict = {}
    try:
        os.chown(folder, 0, nobody.pw_gid)
        os.chmod(folder, 0o2770)
        for name in NAMES:
            path = f"{folder}/{name}.json"
            with open(path, "w") as handle:
                handle.write("root's\n")
            os.chmod(path, 0o644)
        assert subprocess.run(["su", "-s", "/bin/sh", "nobody", "-c", f"test -w {folder}/good1.json"]).returncode
        for host in state.inventory:  # no setfacl here: the upload itself as root, the rest as nobody
            put = host.connector.put_file
            host.connector.put_file = lambda src, dest, *a, _put=put, **kw: _put(
                src, dest, *a, **{k: v for k, v in kw.items() if k != "_su_user"})

        @operation()
        def record():
            def callback(state, host):
                seen[host.name] = runner.replace_file(host, io.BytesIO(b"{}\n"), f"{folder}/{host.name}.json")
                return seen[host.name]

            yield FunctionCommand(callback, (), {})

        add_op(state, record, _su_user="nobody", _su_shell="/bin/sh")
        _run(state)
        assert not state.failed_hosts and all(seen[name] for name in NAMES), seen
        for name in NAMES:
            st = os.stat(f"{folder}/{name}.json")
            assert (st.st_uid, oct(st.st_mode & 0o7777)) == (nobody.pw_uid, "0o644")
            assert pathlib.Path(f"{folder}/{name}.json").read_text() == "{}\n"
        assert sorted(os.listdir(folder)) == sorted(f"{name}.json" for name in NAMES)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_refusals_module_is_the_one_way(tmp_path):
    """Every operation and deploy of the project is declared through refusals (module doc)."""
    import pathlib
    import re

    root = pathlib.Path(refusals.__file__).parents[1]
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "refusals.py" or "lab" in path.parts:
            continue
        text = path.read_text()
        for match in re.finditer(r"^from pyinfra\.api import (.+)$", text, re.M):
            names = {n.strip() for n in match.group(1).split(",")}
            if names & {"operation", "deploy"}:
                offenders.append(str(path.relative_to(root)))
        if re.search(r"^from pyinfra\.api\.(operation|deploy) import", text, re.M):
            offenders.append(str(path.relative_to(root)))
    assert not offenders, f"declare operations/deploys with tasks.operations.refusals: {offenders}"

"""One runner for commands run at execution time (inside an operation's callback) and by checks:
they carry the operation's connector arguments, as pyinfra's own commands do.

pyinfra hands a StringCommand or FileUploadCommand the operation's connector arguments (``_sudo``,
``_sudo_user``, ``_su_user``, ``_doas``, ``_env``, ``_shell_executable``, ``_chdir``, ``_timeout``,
``_get_pty``, ...: ``pyinfra.api.arguments.ConnectorArguments``), but a FunctionCommand's callback
gets only ``(state, host)``: a bare ``host.run_shell_command`` there runs without ``--sudo``,
``_sudo=True`` or host data ``_sudo``. While the callback runs, the operation's generator is
paused at its ``yield``, so ``host.current_op_global_arguments`` (set by pyinfra around the
generator, and the same dict facts read their arguments from) still holds the operation's
arguments; outside an operation the arguments an operation would get now (config, host data,
the current ``@deploy``'s keyword arguments) stand in.

Not carried: ``_stdin`` and ``_success_exit_codes`` (meant for the operation's own commands; a
caller here reads exit status 0 as success and gives its own stdin) and the retry arguments
(pyinfra retries the whole operation).

Files: :func:`put_file` / :func:`get_file` go through pyinfra's connector with the same arguments
(with ``_sudo`` it stages in a temp file and copies with sudo): for files that are not secret,
such as the remediation record under /var/lib/quantlab, written as root with sudo so that every
login (an operator, the scheduled run, the onboarded ``deploy`` user) shares one record and one
throttle. Secrets never take that path (pyinfra's staging file is created with the login's
umask, world-readable for a moment): :func:`upload_private` makes a 0700 directory owned by the
*login* user (no escalation), uploads into it directly and makes the files 0600; commands run
with escalation read them (root reads anything; another target user, ``_sudo_user=postgres``,
gets an ACL), and :func:`remove_private` removes them.
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Mapping
from typing import IO, Any

from pyinfra.api import StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.connectors.util import CommandOutput

NOT_CARRIED = frozenset({"_stdin", "_success_exit_codes", "_retries", "_retry_delay", "_retry_until"})
CARRIED = tuple(key for key in CONNECTOR_ARGUMENT_KEYS if key not in NOT_CARRIED)

# Over the operation's arguments: the command runs as the login user itself.
AS_LOGIN_USER: dict[str, Any] = {
    "_sudo": False,
    "_sudo_user": None,
    "_su_user": None,
    "_doas": False,
    "_doas_user": None,
    "_dzdo": False,
    "_dzdo_user": None,
    "_chdir": None,
}


def connector_arguments(host) -> dict[str, Any]:
    """The connector arguments of the operation running on ``host`` (its callback is running),
    else those an operation would get now; empty for a host without pyinfra state (tests)."""
    current: Mapping[str, Any] | None = getattr(host, "current_op_global_arguments", None)
    if current is None:
        state = getattr(host, "state", None)
        if state is None or not hasattr(state, "config"):
            return {}
        current = dict(pop_global_arguments(state, host, {})[0])
    return {key: current[key] for key in CARRIED if key in current}


def escalated_user(arguments: Mapping[str, Any]) -> str | None:
    """Who commands run as with these arguments, when not the login user: "root" or a name."""
    for flag, user in (("_doas", "_doas_user"), ("_dzdo", "_dzdo_user"), ("_sudo", "_sudo_user")):
        if arguments.get(flag):
            return arguments.get("_su_user") or arguments.get(user) or "root"
    return arguments.get("_su_user") or None


def run(
    host, command: str | StringCommand, *, stdin: str | None = None, **overrides: Any
) -> tuple[bool, CommandOutput]:
    """``command`` on ``host`` now, with the operation's connector arguments (``overrides`` win:
    ``_timeout=20``, or ``**AS_LOGIN_USER``); nothing printed. Connection errors propagate."""
    arguments = {**connector_arguments(host), **overrides}
    if stdin is not None:
        arguments["_stdin"] = stdin
    if not isinstance(command, StringCommand):
        command = StringCommand(command)
    return host.run_shell_command(command, print_output=False, print_input=False, **arguments)


def run_now(host, command: str, **overrides: Any) -> tuple[bool, str]:
    """:func:`run`, answered as text: stdout when it worked, stdout and stderr when it did not."""
    ok, output = run(host, command, **overrides)
    return ok, output.stdout if ok else output.output


def put_file(host, src: IO | str, dest: str, **overrides: Any) -> bool:
    """Upload with the operation's connector arguments (with sudo: staged, then copied as root).
    Not for secrets: see :func:`upload_private`."""
    arguments = {**connector_arguments(host), **overrides}
    return bool(host.put_file(src, dest, print_output=False, **arguments))


def replace_file(host, src: IO | str, dest: str, mode: str = "644", **overrides: Any) -> bool:
    """``src`` into a fresh ``mktemp`` file beside ``dest``, made ``mode``, then ``mv -f`` over
    ``dest``, all with the operation's connector arguments: readers never see half a file, and
    whoever may write the folder may replace the file, whoever wrote the old one (the record under
    /var/lib/quantlab: root through sudo on one run, the deploy user through the group folder
    onboarding makes on the next, where a copy into root's file would be refused). Not for secrets."""
    folder, _, name = dest.rpartition("/")
    ok, out = run_now(host, f"mktemp {shlex.quote(f'{folder}/.{name}.XXXXXX')}", **overrides)
    lines = out.strip().splitlines() if ok else []
    if not lines:
        return False
    temp = shlex.quote(lines[-1])
    if put_file(host, src, lines[-1], **overrides):
        ok, _ = run(
            host, f"chmod {shlex.quote(mode)} {temp} && mv -f {temp} {shlex.quote(dest)}", **overrides
        )
        if ok:
            return True
    run(host, f"rm -f {temp}", **overrides)
    return False


def get_file(host, src: str, dest: IO | str, **overrides: Any) -> bool:
    """Download with the operation's connector arguments (with sudo: copied to a temp file first)."""
    arguments = {**connector_arguments(host), **overrides}
    return bool(host.get_file(src, dest, print_output=False, **arguments))


class PrivateUploadError(OSError):
    """A private directory or file could not be made on the host."""


def upload_private(host, files: Mapping[str, str | bytes], prefix: str = "quantlab") -> str:
    """A fresh 0700 directory ``/tmp/<prefix>.XXXXXXXX`` owned by the login user, holding ``files``
    (name -> content) as 0600 files, uploaded directly (never through a shared staging file).
    When the operation's commands run as another user than root, that user gets read access by
    ACL. Returns the directory; the caller removes it with :func:`remove_private`."""
    ok, out = run_now(host, f"mktemp -d /tmp/{shlex.quote(prefix)}.XXXXXXXX", **AS_LOGIN_USER)
    lines = out.strip().splitlines()
    if not ok or not lines:
        raise PrivateUploadError(f"cannot make a private directory on the host: {out.strip()[:200]}")
    folder = lines[-1]
    try:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            path = f"{folder}/{name}"
            if not host.put_file(io.BytesIO(data), path, print_output=False, **_login(host)):
                raise PrivateUploadError(f"uploading {path} failed")
        paths = " ".join(shlex.quote(f"{folder}/{name}") for name in files)
        grant = ""
        other = escalated_user(connector_arguments(host))
        if other and other != "root":
            user = shlex.quote(other)
            grant = f" && setfacl -m u:{user}:rx {shlex.quote(folder)} && setfacl -m u:{user}:r {paths}"
        if files:
            ok, out = run_now(host, f"chmod 600 {paths}{grant}", **AS_LOGIN_USER)
            if not ok:
                raise PrivateUploadError(f"cannot make {folder}'s files private: {out.strip()[:200]}")
    except BaseException:
        remove_private(host, folder)
        raise
    return folder


def remove_private(host, folder: str) -> bool:
    """Remove a directory made by :func:`upload_private` (as the login user, who owns it; files
    an escalated command wrote there go too, as the directory is the login user's)."""
    try:
        ok, _ = run(host, f"rm -rf {shlex.quote(folder)}", **AS_LOGIN_USER)
    except OSError:
        return False
    return ok


def _login(host) -> dict[str, Any]:
    return {**connector_arguments(host), **AS_LOGIN_USER}

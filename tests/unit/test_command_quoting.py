"""Every value interpolated into a shell command goes through the one quoting layer.

A static scan of tasks/ (the lab included; settings only build messages): each
f-string that builds a shell command - passed to a runner (``run_now``, ``StringCommand``,
``Shell.run`` ...), returned by a fact's ``command``, or whose text reads as shell (``docker ...``,
``;``, ``&&``, ``$(``, ``2>`` ...) - may interpolate only

- a quoting call: ``shlex.quote``/``quote``/``q`` (an alias of it), ``shlex.join``;
- a number: ``int(...)``, ``len(...)``;
- a command built elsewhere: a call to a function named ``*_command`` or ``timed``, or a
  variable named ``command``/``*_command``/``cmd`` (a complete command, quoted where it was built);
- an UPPER_CASE constant: a command fragment written in code (its own definition is scanned),
  or data - a number, or text with no quote, ``$``, backquote, backslash or line break (checked
  by importing it); a constant named ``*_AWK``, ``*_ERE``,
  ``*_SQL`` or ``*_PY`` holds another language's program and is checked where it is quoted;
- a local variable every assignment of which is one of the above (``q_name = shlex.quote(name)``).

Anything else - a setting, an attribute, a parameter - is a finding, so a new command that
forgets to quote fails here before a hostile name reaches a host. Messages (exceptions, logs,
``host.noop``, operation names, check names) are not commands and are not scanned.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TASKS = Path(__file__).resolve().parents[2] / "tasks"
SCANNED = ("core", "facts", "checks", "operations", "lab")  # settings build messages, not commands
# The quoting layer itself: its few f-strings check what they interpolate (tested directly).
EXEMPT = {"core/quoting.py"}

# Calls taking a shell command run on a host, and at which position (None: every argument).
SINKS = {
    "run_now": 1, "_must": 1, "must": 0, "run": 0, "sh": 0, "_run": 0, "run_shell_command": 0,
    "StringCommand": None, "timed": 0, "run_with_secret": 0, "run_and_clean": 0,
}  # fmt: skip
QUOTING = {"quote", "shlex.quote", "q", "shlex.join", "int", "len", "word", "argv_line", "export_line"}
# Calls an f-string passes through on its way into a command (a list of parts, joined).
TRANSPARENT = {"append", "extend", "join", "insert"}
COMMAND_NAME = re.compile(r"(.*_)?command|cmd")
CONSTANT_NAME = re.compile(r"_?[A-Z][A-Z0-9_]*")
# A constant holding another language's program (awk, an ERE, SQL, Python): quoted as one word
# where a command uses it, and that use is what the scan checks.
OTHER_LANGUAGE = re.compile(r"_?[A-Z][A-Z0-9_]*_(AWK|ERE|SQL|PY|PYTHON)")
_WORDS = (
    "docker|echo|cat|rm|mkdir|chmod|chown|mv|cp|printf|getent|id|stat|sudo|runuser|timeout|psql|sh"
    "|bash|if|umask|cd|test|curl|python3|flock|crontab|systemctl|visudo|install|ls|find|tee|grep"
    "|base64|date|tail|head|kill|env|export|exec"
)
# Text that reads as a shell command: a command word (then a space) first or after shell
# syntax, or a redirection or command substitution anywhere.
SHELL_TEXT = re.compile(
    rf"(^|[;&|{{(]\s*|\bthen\s|\belse\s|\bdo\s)\s*({_WORDS})\s|\$\(|\s[12]?>\s*[&/$\'\"]|>/dev/null"
)
SQL_TEXT = re.compile(
    r"\s*(SELECT|WITH|INSERT|UPDATE|DELETE|VACUUM|ANALYZE|ALTER|CREATE|GRANT|REVOKE|DROP|SET|RESET|BEGIN"
    r"|COMMIT|ROLLBACK|DO|LOCK|COMMENT|\\)\b"
)
# Shell syntax alone (a list item such as a check's name may start with a command word).
SHELL_SYNTAX = re.compile(r"\$\(|\s[12]?>\s*[&/$'\"]|>/dev/null|\s(;|&&|\|\||\|)\s")
UNSAFE_IN_CONSTANT = re.compile(r"['\"$`\\\n\r]")


@dataclass
class Finding:
    where: str
    expression: str

    def __str__(self) -> str:
        return f"{self.where}: {{{self.expression}}}"


@dataclass
class Scope:
    """A function's local assignments: name -> the expressions assigned to it."""

    assigned: dict[str, list[ast.expr]] = field(default_factory=dict)
    parent: Scope | None = None

    def lookup(self, name: str) -> list[ast.expr] | None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.assigned:
                return scope.assigned[name]
            scope = scope.parent
        return None


def _call_name(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _call_name(node.value) if isinstance(node.value, (ast.Name, ast.Attribute)) else "?"
        return f"{base}.{node.attr}"
    return "?"


def _added(node: ast.expr) -> list[ast.expr]:
    """The operands of ``a + b + c``, left to right."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _added(node.left) + _added(node.right)
    return [node]


def _local_assignments(function: ast.AST) -> dict[str, list[ast.expr]]:
    assigned: dict[str, list[ast.expr]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
            for target in targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(value)
                elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
                    for t, v in zip(target.elts, value.elts):
                        if isinstance(t, ast.Name):
                            assigned.setdefault(t.id, []).append(v)
                elif isinstance(target, ast.Tuple):
                    # a, b = (quote(x) for x in ...): each name is what the comprehension makes.
                    each = value.elt if isinstance(value, (ast.GeneratorExp, ast.ListComp)) else None
                    for t in target.elts:
                        if isinstance(t, ast.Name):
                            assigned.setdefault(t.id, []).append(each or ast.Name(id="<unpacked>"))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            if node.value is not None:
                assigned.setdefault(node.target.id, []).append(node.value)
        elif isinstance(node, (ast.For, ast.comprehension)):
            for t in ast.walk(node.target):
                if isinstance(t, ast.Name):
                    assigned.setdefault(t.id, []).append(ast.Name(id="<loop>"))
    return assigned


class Scanner:
    def __init__(self, path: Path):
        self.path = path
        self.module = "tasks." + ".".join(path.relative_to(TASKS).with_suffix("").parts)
        self.tree = ast.parse(path.read_text())
        self.findings: list[Finding] = []
        self.constants: set[str] = set()
        self._parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self._parents[child] = node

    # -- which f-strings are commands ---------------------------------------------------------

    def _context(self, node: ast.AST) -> str:
        """Where an f-string ends up: "command" (a runner's command argument), "quoted" (inside
        a quoting call: its own text is data), "item" (in a list or tuple), "data" (any other
        call's argument, a keyword, an exception, an attribute), or "free" (assigned to a local,
        returned, concatenated). Concatenations with ``+`` are checked like f-strings."""
        child, parent = node, self._parents.get(node)
        while parent is not None and not isinstance(parent, ast.stmt):
            if isinstance(parent, ast.Call) and child is not parent.func:
                name = _call_name(parent)
                short = name.split(".")[-1]
                if name in QUOTING or short == "quote":
                    return "quoted"
                if short in SINKS:
                    index = SINKS[short]
                    if index is None or (index < len(parent.args) and parent.args[index] is child):
                        return "command"
                    return "data"
                if short not in TRANSPARENT:
                    return "data"
            elif isinstance(parent, (ast.Tuple, ast.List)):
                return "item"  # a list of command parts, or a row of data: decided by its text
            elif isinstance(parent, (ast.Dict, ast.keyword, ast.Compare)):
                return "data"
            child, parent = parent, self._parents.get(parent)
        if isinstance(parent, (ast.Raise, ast.Assert)):
            return "data"
        if isinstance(parent, ast.Assign) and any(
            isinstance(t, ast.Name) and OTHER_LANGUAGE.fullmatch(t.id) for t in parent.targets
        ):
            return "data"  # awk, SQL, a regex: not shell
        if isinstance(parent, ast.Assign) and not all(isinstance(t, ast.Name) for t in parent.targets):
            return "data"  # stored on an object (evidence, a reason): a message
        return "free"

    def _fact_command_return(self, node: ast.AST) -> bool:
        parent: ast.AST | None = node
        while parent is not None and not isinstance(parent, ast.stmt):
            parent = self._parents.get(parent)
        if not isinstance(parent, ast.Return):
            return False
        while parent is not None and not isinstance(parent, ast.FunctionDef):
            parent = self._parents.get(parent)
        return isinstance(parent, ast.FunctionDef) and parent.name == "command"

    def is_command(self, node: ast.JoinedStr) -> bool:
        context = self._context(node)
        if context == "command" or (context == "free" and self._fact_command_return(node)):
            return True
        text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
        if SQL_TEXT.match(text):
            return False  # SQL: tests/unit/test_pg_sql.py holds its quoting to account
        if context == "item":
            return bool(SHELL_SYNTAX.search(text))
        return context == "free" and bool(SHELL_TEXT.search(text))

    # -- which interpolations are safe ---------------------------------------------------------

    def safe(self, expr: ast.expr, scope: Scope, depth: int = 0) -> bool:
        if depth > 8:
            return False
        if isinstance(expr, ast.Constant):
            return True  # text written in the code is part of the command, not a value
        if isinstance(expr, ast.Call):
            name = _call_name(expr)
            short = name.split(".")[-1]
            if name in QUOTING or short == "quote" or short == "timed" or short.endswith("_command"):
                return True
            if short == "join" and isinstance(expr.func, ast.Attribute) and expr.args:
                # " ".join(q(a) for a in argv): safe when what is joined is safe.
                arg = expr.args[0]
                if isinstance(arg, (ast.GeneratorExp, ast.ListComp)):
                    return self.safe(arg.elt, scope, depth + 1)
                if isinstance(arg, (ast.List, ast.Tuple)):
                    return all(self.safe(e, scope, depth + 1) for e in arg.elts)
            return False
        if isinstance(expr, ast.JoinedStr):
            return all(
                self.safe(v.value, scope, depth + 1) for v in expr.values if isinstance(v, ast.FormattedValue)
            )
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return self.safe(expr.left, scope, depth + 1) and self.safe(expr.right, scope, depth + 1)
        if isinstance(expr, ast.IfExp):
            return self.safe(expr.body, scope, depth + 1) and self.safe(expr.orelse, scope, depth + 1)
        if isinstance(expr, ast.Name):
            if COMMAND_NAME.fullmatch(expr.id):
                return True
            if CONSTANT_NAME.fullmatch(expr.id):
                self.constants.add(expr.id)
                return True
            values = scope.lookup(expr.id)
            return bool(values) and all(self.safe(v, scope, depth + 1) for v in values)
        return False

    def _is_concatenation(self, node: ast.AST) -> bool:
        """The outermost ``a + b + ...`` holding a string literal (a command built by ``+``)."""
        parent = self._parents.get(node)
        return (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Add)
            and not (isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Add))
            and any(isinstance(p, ast.Constant) and isinstance(p.value, str) for p in _added(node))
        )

    def scan(self) -> None:
        self._scan_body(self.tree, Scope())

    def _scan_body(self, node: ast.AST, scope: Scope) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = Scope(_local_assignments(child), scope)
                self._scan_body(child, inner)
            elif self._is_concatenation(child):
                parts = list(_added(child))
                text = "".join(p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str))
                context = self._context(child)
                if context == "command" or (context == "free" and SHELL_TEXT.search(text) and not SQL_TEXT.match(text)):
                    for part in parts:
                        if not isinstance(part, ast.Constant) and not self.safe(part, scope):
                            where = f"{self.path.relative_to(TASKS.parent)}:{child.lineno}"
                            self.findings.append(Finding(where, ast.unparse(part)))
                self._scan_body(child, scope)
            elif isinstance(child, ast.JoinedStr):
                if self.is_command(child):
                    for value in child.values:
                        if isinstance(value, ast.FormattedValue) and not self.safe(value.value, scope):
                            where = f"{self.path.relative_to(TASKS.parent)}:{child.lineno}"
                            self.findings.append(Finding(where, ast.unparse(value.value)))
                self._scan_body(child, scope)
            else:
                self._scan_body(child, scope)


def _scanners() -> list[Scanner]:
    out = []
    for folder in SCANNED:
        for path in sorted((TASKS / folder).glob("*.py")):
            if path.relative_to(TASKS).as_posix() in EXEMPT:
                continue
            scanner = Scanner(path)
            scanner.scan()
            out.append(scanner)
    return out


def test_every_interpolation_in_a_command_is_quoted():
    findings = [str(f) for s in _scanners() for f in s.findings]
    assert not findings, "unquoted values in shell commands:\n  " + "\n  ".join(findings)


def test_constants_in_commands_need_no_quoting():
    bad = []
    for scanner in _scanners():
        module = importlib.import_module(scanner.module)
        for name in sorted(scanner.constants):
            value = getattr(module, name, None)
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                bad.append(f"{scanner.module}.{name}: {type(value).__name__}")
            elif isinstance(value, str) and (SHELL_TEXT.search(value) or SHELL_SYNTAX.search(value)):
                continue  # a command fragment written in code: its definition is scanned above
            elif isinstance(value, str) and UNSAFE_IN_CONSTANT.search(value):
                bad.append(f"{scanner.module}.{name} = {value!r}")
    assert not bad, "constants interpolated into commands must need no quoting:\n  " + "\n  ".join(bad)


# -- the scan itself catches what it is for ------------------------------------------------------


def _findings_in(source: str) -> list[str]:
    path = TASKS / "core" / "_probe.py"
    scanner = Scanner.__new__(Scanner)
    scanner.path, scanner.module = path, "tasks.core._probe"
    scanner.tree = ast.parse(source)
    scanner.findings, scanner.constants, scanner._parents = [], set(), {}
    for node in ast.walk(scanner.tree):
        for child in ast.iter_child_nodes(node):
            scanner._parents[child] = node
    scanner.scan()
    return [f.expression for f in scanner.findings]


def test_the_scan_finds_unquoted_names():
    source = '''
import shlex
from pyinfra.api import FactBase, StringCommand

class Probe(FactBase):
    def command(self, name, since):
        q = shlex.quote(name)
        return f"echo 'state {name}'; docker logs --since {shlex.quote(since)} {q}"

def remove(target, name):
    run_now(target, f"docker rm -f {name}")
    label = f"docker stop {name.strip()}"
    StringCommand(f"{label}")
    raise OperationError(f"docker rm -f {name} failed")
    run_now(target, "docker rm " + name)
    script = "cd /srv && docker logs " + name + " 2>&1"
    return script
'''
    assert _findings_in(source) == ["name", "name", "name.strip()", "label", "name", "name"]


def test_the_scan_accepts_quoted_and_composed_commands():
    source = '''
import shlex
SECTION = "### quantlab "

def build(name, workdir, command):
    q_name = shlex.quote(name)
    argv = " ".join(shlex.quote(a) for a in [name, workdir])
    inner = f"cat {shlex.quote(workdir)}/x; rc=$?"
    also = "docker logs " + shlex.quote(name) + " 2>&1"
    return f"echo '{SECTION}'; {command} && docker rm {q_name} {argv}; {inner}; {also}; exit {int(3)}"
'''
    assert _findings_in(source) == []


# -- hostile names through the commands, run for real -------------------------------------------

HOSTILE_NAMES = [
    "x'; touch {m}/squote; echo '",
    "$(touch {m}/dollar)",
    "`touch {m}/backquote`",
    "x; touch {m}/semicolon",
    '"; touch {m}/dquote; "',
    "--privileged",
    "-v/:/host",
]


def _fake_docker(folder: Path) -> Path:
    """A `docker` that logs its argv (one line per argument, to $ARGV_LOG) and fails like a
    missing object."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text('#!/bin/sh\nfor a in "$@"; do printf "argv<%s>\\n" "$a" >>"$ARGV_LOG"; done\n'
                      'echo "Error: No such object" >&2; exit 1\n')  # fmt: skip
    docker.chmod(0o755)
    return bin_dir


def test_the_diagnosis_fact_carries_hostile_container_names_as_text(tmp_path):
    from tasks.core.signatures import SECTION
    from tasks.facts.diagnose import HostDiagnosis

    marks = tmp_path / "marks"
    marks.mkdir()
    bin_dir = _fake_docker(tmp_path)
    containers = tuple(n.format(m=marks) for n in HOSTILE_NAMES)
    command = HostDiagnosis().command(containers, "2h", 10, str(tmp_path / "record $(touch x).json"))
    argv_log = tmp_path / "argv.log"
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30, cwd=marks,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "ARGV_LOG": str(argv_log)})  # fmt: skip
    assert list(marks.iterdir()) == [], sorted(p.name for p in marks.iterdir())
    lines = proc.stdout.splitlines()
    args = [line[5:-1] for line in argv_log.read_text().splitlines()]
    for name in containers:
        assert f"{SECTION}state {name}" in lines and f"{SECTION}logs {name}" in lines
        # Passed after `--`: an option-like name is the object asked about, not a flag.
        assert sum(args[i] == "--" and args[i + 1] == name for i in range(len(args) - 1)) == 2, name
    parsed = HostDiagnosis().process(lines)
    assert set(parsed["containers"]) == set(containers)
    assert not any(c["exists"] for c in parsed["containers"].values())


def test_docker_run_never_takes_the_image_for_an_option():
    from tasks.core.container_spec import ContainerSpec, docker_run_args

    args = docker_run_args(ContainerSpec(name="quant-mlflow", image="--privileged", command=("mlflow",)), None)
    assert args[-3:] == ["--", "--privileged", "mlflow"]


def test_image_facts_pass_the_image_after_the_end_of_options():
    from tasks.facts.docker import ContainerInspect, ImageVersion

    assert f"-- {shlex.quote('--privileged')} -c" in ImageVersion().command("--privileged", "mlflow")
    assert 'image inspect --format "$t" -- -v/:/host' in ContainerInspect().command("quant-mlflow", "-v/:/host")


@pytest.mark.parametrize("bad", ["\n", "\r", "\x00", "\x0b", "\x85", "\u2028"])
def test_env_files_refuse_control_characters(bad):
    from tasks.core.container_spec import ContainerSpec, env_file_text

    spec = ContainerSpec(name="quant-mlflow", image="x:1", env={"A": f"v{bad}B=injected"})
    with pytest.raises(ValueError, match="control character"):
        env_file_text(spec)


def test_one_control_character_rule():
    """The settings and the renderers refuse the same characters: one definition."""
    defining = []
    for path in sorted(TASKS.rglob("*.py")):
        if "recipes" in path.parts:
            continue
        text = path.read_text()
        if "\\x7f-\\x9f" in text or "\\x00-\\x1f" in text:
            defining.append(path.relative_to(TASKS).as_posix())
    assert defining == ["core/quoting.py"]


# -- the quoting layer itself ------------------------------------------------------------------


def test_quoting_layer_words_and_exports():
    from tasks.core import quoting

    assert quoting.word("it's $(x)") == "'it'\"'\"'s $(x)'" and quoting.word(5) == "5"
    assert quoting.argv_line(["docker", "rm", "a b"]) == "docker rm 'a b'"
    assert quoting.export_line("PREFIX", "q`x`") == "PREFIX='q`x`'; export PREFIX"
    for bad_name in ("1X", "A-B", "A;B", "A B", ""):
        with pytest.raises(ValueError, match="not a shell variable name"):
            quoting.export_line(bad_name, "v")
    with pytest.raises(ValueError, match="control character"):
        quoting.export_line("A", "v\nB=1")
    with pytest.raises(ValueError, match="NUL"):
        quoting.word("a\x00b")
    with pytest.raises(ValueError):
        quoting.word(True)  # type: ignore[arg-type]


def test_quoting_layer_systemd_and_rendered_files():
    from tasks.core import quoting

    assert quoting.systemd_value("50% at %H", "x") == "50%% at %%H"
    assert quoting.systemd_exec_word("/srv/a.sh", "x") == "/srv/a.sh"
    assert quoting.systemd_exec_word('/srv/my "x"\\$HOME.sh', "x") == '"/srv/my \\"x\\"\\\\$$HOME.sh"'
    assert quoting.check_rendered("a\tb\n", "f", tabs=True) == "a\tb\n"
    with pytest.raises(ValueError, match=r"f, line 2: contains a control character \(U\+0009\)"):
        quoting.check_rendered("a\nb\tc\n", "f")
    with pytest.raises(ValueError, match="U\\+000D"):
        quoting.systemd_value("daily\rExecStartPre=/bin/sh", "on_calendar")


@pytest.mark.parametrize("bad", ["\r", "\n", "\x0b", "\x85", "\u2028"])
def test_sudoers_text_refuses_a_second_rule(bad):
    from tasks.core.onboard_files import sudoers_text

    with pytest.raises(ValueError, match="sudoers: command 0: contains a control character"):
        sudoers_text("deploy", (f"/usr/bin/systemctl status docker{bad}deploy ALL=(ALL) NOPASSWD: ALL",))

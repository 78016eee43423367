"""deploys/db_users.py against the lab's real PostgreSQL, through the real pyinfra CLI.

One private lab (own prefix and ports, `incident` scenario: quant_user absent, the backend's
/health/db failing authentication) for the whole module, brought down by a finalizer. Tests run
in file order and each leaves the lab converged (as inventories/lab.py says) for the next.
"""
import json
import os
import re
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.labkit import free_port_base, pyinfra_process

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "scripts" / "lab"
DEPLOY = "deploys/db_users.py"


class DbLab:
    def __init__(self, prefix: str, port_base: int, tmp: Path):
        self.prefix, self.port_base, self.tmp = prefix, port_base, tmp
        self.state = None

    # the lab
    def cli(self, *args, timeout=600):
        proc = subprocess.run([str(LAB), "--prefix", self.prefix, "--port-base", str(self.port_base),
                               *args], capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"lab {args} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def up(self):
        self.cli("up", "--scenario", "incident", timeout=900)
        self.state = json.loads((REPO / ".lab" / self.prefix / "state.json").read_text())

    @property
    def container(self):
        return self.state["containers"]["postgres"]

    @property
    def pg_port(self):
        return self.state["ports"]["postgres"]

    def secret_file(self, name) -> Path:
        return Path(self.state["secret_files"][name])

    def secret(self, name) -> str:
        return self.secret_file(name).read_text().splitlines()[0]

    # PostgreSQL as the superuser over the container's socket (SQL on stdin)
    def su(self, sql: str, database: str = "postgres") -> str:
        proc = subprocess.run(["docker", "exec", "-i", "-u", "postgres", self.container, "psql", "-X",
                               "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", database],
                              input=sql, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    # a role over TCP with its password, from the host (password file, never argv)
    def as_role(self, role: str, password: str, sql: str, database: str = "quant"):
        passfile = self.tmp / f"pgpass-{secrets.token_hex(4)}"
        esc = lambda s: s.replace("\\", "\\\\").replace(":", "\\:")  # noqa: E731
        passfile.write_text(f"*:*:*:{esc(role)}:{esc(password)}\n")
        passfile.chmod(0o600)
        try:
            return subprocess.run(
                ["psql", "-w", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                 "-p", str(self.pg_port), "-U", role, "-d", database, "-c", sql],
                env={**os.environ, "PGPASSFILE": str(passfile)},
                capture_output=True, text=True, timeout=60)
        finally:
            passfile.unlink()

    def backend_db_health(self) -> int:
        url = f"http://127.0.0.1:{self.state['ports']['backend']}/health/db"
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    # the deploy, through the real CLI
    def inventory(self, name: str, patch: str) -> str:
        """An inventory like inventories/lab.py with `patch` (Python acting on `data`) applied."""
        path = self.tmp / f"inv_{name}.py"
        body = "".join(f"    {line}\n" for line in patch.splitlines())
        # Inside a function: pyinfra reads every module-level list as a group of hosts.
        path.write_text(
            "import os\nfrom tasks.lab.inventory import lab_host_data\n\n\n"
            "def _data():\n"
            "    data = lab_host_data(os.environ['QUANTLAB_PREFIX'])\n"
            f"{body}"
            "    return data\n\n\n"
            "lab = [('@local', _data())]\n")
        return str(path)

    def deploy(self, inventory="inventories/lab.py", *flags, json_output=True, check=True,
               env=None):
        proc = pyinfra_process("-y", *(["--json"] if json_output else []), *flags, inventory, DEPLOY,
                               env={"QUANTLAB_PREFIX": self.prefix, **(env or {})}, timeout=300)
        if check:
            assert proc.returncode == 0, f"pyinfra failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return proc


def changed_ops(proc) -> list[str]:
    results = json.loads(proc.stdout)["results"]
    assert results["totals"]["error"] == 0 and not results["failed_hosts"], proc.stderr[-3000:]
    return [op["name"].split(" | ")[-1] for op in results["operations"] if op["success"]]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dblab")
    lab = DbLab(f"qtdb{secrets.token_hex(3)}", free_port_base(27000), tmp)
    try:
        lab.up()
        yield lab
    finally:
        subprocess.run([str(LAB), "--prefix", lab.prefix, "--port-base", str(lab.port_base), "down"],
                       capture_output=True, text=True, timeout=300)


def wait_for(probe, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def acl_snapshot(lab) -> str:
    """Roles, memberships and every ACL the settings touch (not the verifier: salts differ)."""
    return lab.su("""
        SELECT json_build_object(
          'role', (SELECT row_to_json(r) FROM (SELECT rolname, rolcanlogin, rolsuper, rolinherit,
                   rolconnlimit, rolvaliduntil, left(rolpassword, 14) AS kind
                   FROM pg_authid WHERE rolname = 'quant_user') r),
          'db', (SELECT datacl::text FROM pg_database WHERE datname = 'quant'),
          'schema', (SELECT nspacl::text FROM pg_namespace WHERE nspname = 'public'),
          'tables', (SELECT json_object_agg(relname, relacl::text ORDER BY relname) FROM pg_class
                     WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S')),
          'defaults', (SELECT json_agg(defaclacl::text ORDER BY defaclobjtype) FROM pg_default_acl))
    """, database="quant")


# --- the incident ----------------------------------------------------------------------------


def test_incident_deploy_fixes_the_backend_and_second_run_changes_nothing(lab):
    assert lab.backend_db_health() == 503
    assert lab.su("SELECT count(*) FROM pg_roles WHERE rolname = 'quant_user'") == "0"

    first = lab.deploy()
    assert changed_ops(first) == ["PostgreSQL role quant_user", "PostgreSQL grants in quant"]
    assert "verify: role quant_user can log in with its password" in first.stderr
    assert "verify: role quant_user can use what it was granted" in first.stderr
    assert wait_for(lambda: lab.backend_db_health() == 200), "backend still failing after the deploy"
    assert lab.su("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
                  "WHERE rolname = 'quant_user'") == "t"

    second = lab.deploy()
    assert changed_ops(second) == []
    assert "verify:" not in second.stderr  # verification only follows a change
    assert json.loads(second.stdout)["results"]["totals"]["success"] == 0


def test_granted_and_not_granted(lab):
    pw = lab.secret("quant_user_password")
    ok = lab.as_role("quant_user", pw, "SELECT count(*) FROM users")
    assert ok.returncode == 0 and int(ok.stdout) > 0
    denied = lab.as_role("quant_user", pw, "TRUNCATE audit_log")
    assert denied.returncode != 0 and "permission denied" in denied.stderr
    denied = lab.as_role("quant_user", pw, "CREATE TABLE nope (id int)")
    assert denied.returncode != 0 and "permission denied" in denied.stderr
    wrong = lab.as_role("quant_user", pw + "x", "SELECT 1")
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr


def test_default_privileges_cover_a_table_the_owner_creates_later(lab):
    lab.su("CREATE TABLE signals (id bigserial PRIMARY KEY, name text);"
           "INSERT INTO signals (name) VALUES ('momentum')", database="quant")
    proc = lab.as_role("quant_user", lab.secret("quant_user_password"),
                       "SELECT name FROM signals; INSERT INTO signals (name) VALUES ('carry')")
    assert proc.returncode == 0, proc.stderr
    assert changed_ops(lab.deploy()) == []  # the new table already has what the settings say


# --- passwords -------------------------------------------------------------------------------


def test_password_rotation_changes_exactly_one_thing(lab):
    secret_file = lab.secret_file("quant_user_password")
    original = secret_file.read_text()
    rotated = "rot-" + secrets.token_urlsafe(12)
    try:
        secret_file.write_text(rotated + "\n")
        assert changed_ops(lab.deploy()) == ["PostgreSQL role quant_user"]
        assert lab.as_role("quant_user", rotated, "SELECT 1").returncode == 0
        assert lab.as_role("quant_user", original.strip(), "SELECT 1").returncode != 0
        assert changed_ops(lab.deploy()) == []  # same password again: no change
    finally:
        secret_file.write_text(original)
    assert changed_ops(lab.deploy()) == ["PostgreSQL role quant_user"]
    assert wait_for(lambda: lab.backend_db_health() == 200)


def test_md5_password_is_upgraded_to_scram(lab):
    pw = lab.secret("quant_user_password")
    lab.su("SET password_encryption = 'md5';\n"
           f"\\set pw '{pw}'\n"
           "SELECT format('ALTER ROLE quant_user PASSWORD %L', :'pw') \\gexec\n")
    assert lab.su("SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'quant_user'") == "md5"

    proc = lab.deploy("inventories/lab.py", json_output=False)
    assert "password upgraded md5 -> SCRAM-SHA-256" in proc.stderr
    assert lab.su("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
                  "WHERE rolname = 'quant_user'") == "t"
    assert changed_ops(lab.deploy()) == []


# --- names, exclusive mode, removed settings -----------------------------------------------


def test_role_names_needing_quotes(lab):
    names = ["quant-user", "o'brien \"x\"; DROP ROLE quant_user; --"]
    files = []
    for i in range(len(names)):
        f = lab.tmp / f"odd_{i}"
        f.write_text(f"pw-{i}-{secrets.token_hex(8)}\n")
        files.append(str(f))
    patch = f"names, files = {names!r}, {files!r}\n" + (
        "for n, f in zip(names, files):\n"
        "    data['db_roles'].append({'name': n, 'password': {'file': f}, 'login': True,\n"
        "                             'connection_limit': 3})\n"
        "    data['db_grants'].append({'role': n, 'database': 'quant', 'privileges': ['CONNECT']})\n"
        "    data['db_grants'].append({'role': n, 'database': 'quant', 'schema': 'public',\n"
        "                              'privileges': ['USAGE']})\n"
        "    data['db_grants'].append({'role': n, 'database': 'quant', 'schema': 'public',\n"
        "                              'on': 'tables', 'privileges': ['SELECT']})\n")
    inventory = lab.inventory("odd_names", patch)
    first = lab.deploy(inventory)
    assert changed_ops(first) == [f"PostgreSQL role {n}" for n in names] + ["PostgreSQL grants in quant"]
    assert lab.su("SELECT count(*) FROM pg_roles WHERE rolname = 'quant_user'") == "1"
    for name, f in zip(names, files):
        pw = Path(f).read_text().strip()
        proc = lab.as_role(name, pw, "SELECT current_user, count(*) FROM users")
        assert proc.returncode == 0 and proc.stdout.startswith(name + "|"), proc.stderr
        assert lab.as_role(name, pw, "DELETE FROM trades").returncode != 0
    assert changed_ops(lab.deploy(inventory)) == []
    # Dropped from the settings again: left alone (documented), and no change is reported.
    assert changed_ops(lab.deploy()) == []
    assert lab.su("SELECT count(*) FROM pg_roles WHERE rolname = 'quant-user'") == "1"


def test_exclusive_mode_revokes_extras_and_removed_grants(lab):
    lab.su("GRANT TRUNCATE ON audit_log TO quant_user", database="quant")
    assert changed_ops(lab.deploy()) == []  # not exclusive: an extra grant is left alone

    # Exclusive, with DELETE dropped from the tables grant and the sequences entry removed.
    patch = ("data['db_exclusive'] = True\n"
             "data['db_grants'] = [g for g in data['db_grants'] if g.get('on') != 'sequences']\n"
             "data['db_grants'][-1]['privileges'] = ['SELECT', 'INSERT', 'UPDATE']\n")
    inventory = lab.inventory("exclusive", patch)
    proc = lab.deploy(inventory, json_output=False)
    assert 'table public.audit_log: revoke DELETE, TRUNCATE from "quant_user"' in proc.stderr
    assert 'table public.users: revoke DELETE from "quant_user"' in proc.stderr
    assert "can use what it was granted, and only that" in proc.stderr
    assert lab.su("SELECT has_table_privilege('quant_user', 'audit_log', 'TRUNCATE'), "
                  "has_table_privilege('quant_user', 'users', 'DELETE'), "
                  "has_table_privilege('quant_user', 'users', 'UPDATE'), "
                  # sequences are no longer named by the settings: left alone, as documented
                  "has_sequence_privilege('quant_user', 'users_id_seq', 'USAGE')", "quant") == "f|f|t|t"
    assert changed_ops(lab.deploy(inventory)) == []

    # Back to the lab's settings: the sequence grant comes back (one operation changes).
    assert changed_ops(lab.deploy()) == ["PostgreSQL grants in quant"]
    assert wait_for(lambda: lab.backend_db_health() == 200)


def test_exclusive_mode_never_revokes_from_a_superuser(lab):
    lab.su("CREATE ROLE qt_admin SUPERUSER; CREATE ROLE qt_extra;\n"
           "GRANT TRUNCATE ON audit_log TO qt_admin; GRANT SELECT ON users TO qt_extra;", database="quant")
    try:
        inventory = lab.inventory("exclusive_su", "data['db_exclusive'] = True\n")
        proc = lab.deploy(inventory, json_output=False)
        assert ('note: kept what "qt_admin" holds beyond the settings: it is a superuser, and '
                "exclusive mode never revokes from one") in proc.stderr
        assert 'from "qt_admin"' not in proc.stderr
        assert 'table public.users: revoke SELECT from "qt_extra"' in proc.stderr
        acl = lab.su("SELECT relname || ' ' || relacl::text FROM pg_class WHERE relname IN "
                     "('audit_log', 'users') ORDER BY 1", database="quant")
        assert "qt_admin=D/postgres" in acl and "qt_extra" not in acl
        assert changed_ops(lab.deploy(inventory)) == []
    finally:
        lab.su("DROP OWNED BY qt_admin, qt_extra; DROP ROLE qt_admin; DROP ROLE qt_extra;", database="quant")
    assert changed_ops(lab.deploy()) == []


def test_a_role_named_public_is_that_role_not_public(lab):
    public_before = lab.su("SELECT array_to_string(ARRAY(SELECT a FROM unnest(datacl) a "
                           "WHERE a::text LIKE '=%'), ',') FROM pg_database WHERE datname = 'quant'")
    patch = ("data['db_roles'].append({'name': 'Public', 'login': False})\n"
             "data['db_grants'].append({'role': 'Public', 'database': 'quant',\n"
             "                          'privileges': ['CONNECT', 'CREATE']})\n")
    inventory = lab.inventory("public_role", patch)
    try:
        proc = lab.deploy(inventory, json_output=False)
        assert 'database "quant": grant CREATE, CONNECT to "Public"' in proc.stderr
        assert lab.su("SELECT has_database_privilege('Public', 'quant', 'CREATE'), "
                      "has_database_privilege('public', 'quant', 'CREATE')") == "t|f"
        assert lab.su("SELECT array_to_string(ARRAY(SELECT a FROM unnest(datacl) a "
                      "WHERE a::text LIKE '=%'), ',') FROM pg_database WHERE datname = 'quant'") == public_before
        assert changed_ops(lab.deploy(inventory)) == []
    finally:
        lab.su('REVOKE ALL ON DATABASE quant FROM "Public"; DROP ROLE IF EXISTS "Public";')


def pg_log(lab, since: float) -> str:
    proc = subprocess.run(["docker", "logs", "--since", str(int(since) - 1), lab.container],
                          capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def test_a_failing_password_change_never_logs_the_verifier(lab):
    """The server logs every statement (log_statement = 'all') and every failing one with its
    text; the password change fails (another transaction holds the role's row past
    lock_timeout). The log shows the failure, never the verifier; then it succeeds, unlogged."""
    secret_file = lab.secret_file("quant_user_password")
    original = secret_file.read_text()
    rotated = "rot-" + secrets.token_urlsafe(12)
    lab.su("ALTER SYSTEM SET log_statement = 'all';\nSELECT pg_reload_conf();")
    started = time.time()
    holder = subprocess.Popen(
        ["docker", "exec", "-i", "-u", "postgres", lab.container, "psql", "-X", "-q"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        holder.stdin.write("BEGIN; ALTER ROLE quant_user CONNECTION LIMIT 7; SELECT pg_sleep(25); ROLLBACK;\n")
        holder.stdin.close()
        assert wait_for(lambda: lab.su("SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                                       "'%pg_sleep(25)%' AND pid <> pg_backend_pid()") == "1")
        secret_file.write_text(rotated + "\n")
        failed = lab.deploy(json_output=False, check=False)
        assert failed.returncode != 0
        holder.wait(timeout=60)
        log = pg_log(lab, started)
        assert "canceling statement due to lock timeout" in log  # the failure reached the log
        assert "statement: DO $quant$" in log  # and every statement was logged up to the quiet step
        ok = lab.deploy()
        assert "PostgreSQL role quant_user" in changed_ops(ok)
        assert lab.as_role("quant_user", rotated, "SELECT 1").returncode == 0
        log = pg_log(lab, started)
        # (the catalog fact's own text names the prefix 'SCRAM-SHA-256$%': a verifier has more)
        assert not re.search(r"SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$", log), "a verifier in the server log"
        assert "WITH PASSWORD" not in log and rotated not in log
    finally:
        if holder.poll() is None:
            holder.kill()
        secret_file.write_text(original)
        lab.su("ALTER SYSTEM RESET log_statement;\nSELECT pg_reload_conf();")
    assert changed_ops(lab.deploy()) == ["PostgreSQL role quant_user"]
    assert wait_for(lambda: lab.backend_db_health() == 200)


# --- both access paths, and secrets ----------------------------------------------------------


def test_psql_access_reaches_the_same_end_state(lab):
    docker_state = acl_snapshot(lab)
    lab.su("DROP OWNED BY quant_user; DROP ROLE quant_user", database="quant")
    assert wait_for(lambda: lab.backend_db_health() == 503)

    inventory = lab.inventory("psql", "data['postgres']['access'] = 'psql'\n")
    proc = lab.deploy(inventory)
    assert changed_ops(proc) == ["PostgreSQL role quant_user", "PostgreSQL grants in quant"]
    assert f"127.0.0.1:{lab.pg_port}" in proc.stderr  # verified over the host-side TCP port
    assert wait_for(lambda: lab.backend_db_health() == 200)
    assert acl_snapshot(lab) == docker_state
    assert changed_ops(lab.deploy(inventory)) == []
    assert changed_ops(lab.deploy()) == []  # and the docker path agrees


@pytest.mark.parametrize("access", ["psql", "docker"])
def test_passwords_never_appear_in_output_or_ps(lab, access):
    secret_file = lab.secret_file("quant_user_password")
    original = secret_file.read_text()
    rotated = "Zq9-" + secrets.token_urlsafe(16)
    superuser_pw = lab.secret("postgres_password")
    seen: list[str] = []
    stop = threading.Event()

    def watch_ps():  # sample every process's command line while pyinfra runs
        while not stop.is_set():
            out = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True).stdout
            # "PGPASSWORD=": an assignment; other tests running beside this one (xdist) may
            # name the variable alone (`docker run --env PGPASSWORD`), which carries no value.
            seen.extend(line for line in out.splitlines()
                        if rotated in line or superuser_pw in line or "PGPASSWORD=" in line)
            time.sleep(0.02)

    inventory = lab.inventory(f"secrets_{access}", f"data['postgres']['access'] = {access!r}\n")
    watcher = threading.Thread(target=watch_ps, daemon=True)
    try:
        secret_file.write_text(rotated + "\n")
        watcher.start()
        proc = lab.deploy(inventory, "--debug", "-vvv", json_output=False)
        stop.set()
        watcher.join()
    finally:
        stop.set()
        secret_file.write_text(original)
    output = proc.stdout + proc.stderr
    assert "password changed" in output and "1/1 checks passed" in output  # it did rotate
    stored = lab.su("SELECT rolpassword FROM pg_authid WHERE rolname = 'quant_user'")
    keys = stored.split("$")[2]
    for secret in (rotated, superuser_pw, original.strip(), keys, keys.split(":")[0]):
        assert secret not in output
    assert not seen, "a password showed in a process command line"
    assert not list(Path("/tmp").glob("quant-pg-*")), "a private upload directory was left behind"
    assert changed_ops(lab.deploy()) == ["PostgreSQL role quant_user"]  # back to the lab's password

"""Settings for deploys/db_users.py (the `postgres` and `db` blocks) are validated before any
change; secrets never in errors."""

import hashlib

import pytest

from tasks import settings
from tasks.core.pg_exec import PgTarget
from tasks.core.pg_grants import DefaultPrivilegeSpec, GrantSpec
from tasks.core.scram import md5_verifier, password_status, scram_verifier
from tasks.facts.postgres import password_status_from_digest, stand_in
from tasks.settings import SettingsError
from tasks.settings.postgres import gather_db
from tasks.settings.types import SecretSource

SECRET = "s3cr3t-Value!"


@pytest.fixture
def pwfile(tmp_path):
    path = tmp_path / "quant_user_password"
    path.write_text(SECRET + "\n")
    return str(path)


@pytest.fixture(autouse=True)
def no_quant_pw(monkeypatch):
    monkeypatch.delenv("QUANT_PW", raising=False)


def lab_like(pwfile, **extra):
    data = {
        "postgres": {"container": "qt-postgres", "host": "127.0.0.1", "port": 15501,
                     "superuser": "postgres", "superuser_password": {"file": pwfile},
                     "access": "docker"},
        "db_roles": [{"name": "quant_user", "password": {"file": pwfile}, "login": True}],
        "db_databases": [{"name": "quant", "owner": "postgres"}],
        "db_grants": [
            {"role": "quant_user", "database": "quant", "privileges": ["CONNECT"]},
            {"role": "quant_user", "database": "quant", "schema": "public", "privileges": ["USAGE"]},
            {"role": "quant_user", "database": "quant", "schema": "public", "on": "tables",
             "privileges": ["select", "INSERT"]},
        ],
        "db_default_privileges": [
            {"owner": "postgres", "role": "quant_user", "database": "quant", "schema": "public",
             "on": "tables", "privileges": ["SELECT"]},
        ],
        "db_exclusive": False,
        "db_verify": True,
    }
    data.update(extra)
    return data


class FakeHost:
    """What settings.of_host needs of a pyinfra host: a name and its data."""

    def __init__(self, data):
        self.name = "db-1"
        self.data = data


def load(data):
    host = FakeHost(data)
    return settings.of_host(host, "postgres"), settings.of_host(host, "db")


def problems(data):
    text = []
    for block, raw in (("postgres", data.get("postgres")), ("db", gather_db(data))):
        try:
            settings.load(block, "db-1", raw)
        except SettingsError as exc:
            text.append(str(exc))
    text = "\n".join(text)
    assert text, "no problem reported"
    assert SECRET not in text
    assert all(line.startswith("host 'db-1': ") for line in text.splitlines())
    return text


def test_lab_shape_is_accepted(pwfile):
    pg, db = load(lab_like(pwfile))
    assert pg.target == PgTarget("docker", container="qt-postgres", user="postgres")
    assert [r.name for r in db.roles] == ["quant_user"]
    assert db.roles[0].password == SecretSource(file=pwfile)
    assert SECRET not in repr(pg) + repr(db)
    assert db.grant_databases() == ["quant"]
    assert db.logins() == {"quant_user": SecretSource(file=pwfile)}
    assert db.login_database("quant_user", pg.target.database) == "quant"
    assert db.login_database("nobody", pg.target.database) == "postgres"
    kinds = [(type(g).__name__, g.on) for g in db.grant_specs()]
    assert kinds == [("GrantSpec", "database"), ("GrantSpec", "schema"), ("GrantSpec", "tables"),
                     ("DefaultPrivilegeSpec", "tables")]
    assert db.grant_specs()[2].privileges == frozenset({"SELECT", "INSERT"})


def test_of_host_parses_once_and_defaults_manage_nothing():
    host = FakeHost({"postgres": {"container": "pg"}})
    db = settings.of_host(host, "db")
    assert settings.of_host(host, "db") is db
    assert (db.roles, db.databases, db.grants, db.default_privileges) == ((), (), (), ())
    assert (db.exclusive, db.verify) == (False, True)
    assert db.grant_databases() == [] and db.logins() == {}


def test_role_operation_keywords(pwfile):
    _, db = load(lab_like(pwfile, db_roles=[
        {"name": "quant_user", "password": {"file": pwfile}, "login": True, "member_of": ["readers"],
         "connection_limit": 20, "valid_until": "infinity"}]))
    kwargs = db.roles[0].operation_kwargs()
    assert kwargs["role"] == "quant_user" and kwargs["member_of"] == ["readers"]
    assert kwargs["password"] == SecretSource(file=pwfile)
    assert (kwargs["login"], kwargs["connection_limit"], kwargs["createdb"]) == (True, 20, None)


def test_only_roles_keeps_their_grants_and_is_never_exclusive(pwfile):
    data = lab_like(pwfile, db_exclusive=True)
    data["db_roles"].append({"name": "other", "login": False})
    data["db_grants"].append({"role": "other", "database": "quant", "privileges": ["CONNECT"]})
    _, db = load(data)
    limited = db.only_roles(["quant_user"])
    assert [r.name for r in limited.roles] == ["quant_user"] and not limited.exclusive
    assert {g.grantee for g in limited.grant_specs()} == {"quant_user"}
    assert len(db.grants) == 4  # the original is untouched


def test_psql_access_uses_host_port_and_password_file_source(pwfile):
    data = lab_like(pwfile)
    data["postgres"]["access"] = "psql"
    pg, _ = load(data)
    t = pg.target
    assert t.mode == "psql" and t.host == "127.0.0.1" and t.port == 15501
    assert t.password_source == SecretSource(file=pwfile) and t.container is None


def test_access_defaults_to_docker_with_a_container_else_psql(pwfile):
    data = lab_like(pwfile)
    del data["postgres"]["access"]
    assert load(data)[0].target.mode == "docker"
    del data["postgres"]["container"]
    assert load(data)[0].target.mode == "psql"


def test_unknown_keys_are_named_with_host_and_key(pwfile):
    data = lab_like(pwfile, db_role=[])  # typo of db_roles
    data["postgres"]["acess"] = "psql"
    data["db_roles"][0]["passwd"] = {"env": "X"}
    data["db_grants"][0]["privilege"] = ["CONNECT"]
    text = problems(data)
    assert "db_role: unknown setting; did you mean 'db_roles'?" in text
    assert "postgres.acess: unknown setting; did you mean 'access'?" in text
    assert "db_roles[0].passwd: unknown setting; did you mean 'password'?" in text
    assert "db_grants[0].privilege: unknown setting; did you mean 'privileges'?" in text


def test_plaintext_passwords_are_refused_without_echoing_them(pwfile):
    data = lab_like(pwfile)
    data["db_roles"][0]["password"] = SECRET
    data["postgres"]["access"] = "psql"
    data["postgres"]["superuser_password"] = SECRET
    text = problems(data)
    assert "db_roles[0].password: a plaintext password in host data is refused" in text
    assert "postgres.superuser_password: a plaintext password" in text


@pytest.mark.parametrize("source, expected", [
    ({"env": "QUANT_PW"}, "environment variable QUANT_PW is not set on the controller"),
    ({"file": "/nonexistent/pw"}, "cannot read /nonexistent/pw"),
    ({"vault": "x"}, 'must be {"env": "VARIABLE"} or {"file": "/path/on/controller"}'),
    # Not a variable name: perhaps the password itself, pasted; the error does not show it.
    ({"env": "1BAD"}, "env '***' is not a variable name"),
])
def test_password_sources_are_checked_up_front(pwfile, source, expected):
    data = lab_like(pwfile)
    data["db_roles"][0]["password"] = source
    assert f"db_roles[0].password: {expected}" in problems(data)


def test_env_source_read_from_the_environment(pwfile, monkeypatch):
    data = lab_like(pwfile)
    data["db_roles"][0]["password"] = {"env": "QUANT_PW"}
    monkeypatch.setenv("QUANT_PW", SECRET)
    assert load(data)[1].roles[0].password == SecretSource(env="QUANT_PW")


@pytest.mark.parametrize("role, expected", [
    ("", "identifier must not be empty"),
    ("pg_admin", "reserved by PostgreSQL"),
    ("x" * 64, "longer than 63 bytes"),
])
def test_bad_role_names(pwfile, role, expected):
    data = lab_like(pwfile)
    data["db_roles"][0]["name"] = role
    assert expected in problems(data)


def test_names_needing_quotes_are_fine(pwfile):
    data = lab_like(pwfile)
    data["db_roles"].append({"name": 'quant-user"; DROP ROLE x; --', "login": False})
    assert load(data)[1].roles[1].name == 'quant-user"; DROP ROLE x; --'


def test_bad_grants(pwfile):
    data = lab_like(pwfile)
    data["db_grants"] += [
        {"role": "quant_user", "database": "quant", "privileges": ["SELECT"]},
        {"role": "quant_user", "database": "quant", "on": "tables", "privileges": ["SELECT"]},
        {"role": "quant_user", "database": "quant", "schema": "public", "privileges": "USAGE"},
        {"role": "quant_user", "database": "quant", "schema": "public", "on": "database",
         "privileges": ["CONNECT"]},
    ]
    data["db_default_privileges"][0]["on"] = "schema"
    text = problems(data)
    assert "db_grants[3]: privilege 'SELECT' does not apply to database" in text
    assert "db_grants[4]: a grant on tables needs a schema" in text
    assert "db_grants[5].privileges: expected a list" in text
    assert "db_grants[6]: a database grant takes no schema" in text
    assert "db_default_privileges[0]: default privileges apply to tables, sequences or functions" in text


def test_duplicate_roles_and_bad_flags(pwfile):
    data = lab_like(pwfile)
    data["db_roles"].append({"name": "quant_user"})
    assert "db_roles[1]: role 'quant_user' is listed twice" in problems(data)
    data = lab_like(pwfile, db_exclusive="yes")  # not read as true: booleans are strict
    data["db_roles"].append({"name": "other", "login": "yes"})
    data["db_roles"].append({"name": "limited", "connection_limit": -5})
    data["db_roles"].append({"name": "huge", "connection_limit": 10**12})  # not an int4: refused here,
    data["db_roles"].append({"name": "PUBLIC"})  # not at execution (with the verifier in the log)
    text = problems(data)
    assert "db_roles[1].login: is not true/false" in text
    assert "db_roles[2].connection_limit: must be >= -1" in text
    assert "db_roles[3].connection_limit: must be <= 2147483647" in text
    assert "db_roles[4]: role name 'PUBLIC' would read as the PUBLIC pseudo-role in grants" in text
    assert "db_exclusive: is not true/false" in text


def test_connection_settings(pwfile):
    data = lab_like(pwfile)
    data["postgres"]["access"] = "ssh"
    assert "postgres.access: must be one of docker, psql" in problems(data)
    data["postgres"] = {"access": "docker"}
    assert "postgres.container: docker access needs the database container's name" in problems(data)
    data["postgres"] = {"access": "psql"}
    assert "postgres.host: psql access needs" in problems(data)
    data["postgres"] = {"access": "psql", "port": 99999, "host": "db"}
    assert "postgres.port: must be <= 65535" in problems(data)
    data["postgres"] = {"access": "psql", "host": "db; rm -rf /"}
    assert "postgres.host: 'db; rm -rf /' is not valid" in problems(data)
    data["postgres"] = {"container": "pg", "os_user": "-u"}
    assert "postgres.os_user: '-u' is not valid" in problems(data)


def test_every_problem_is_reported_at_once(pwfile):
    data = lab_like(pwfile, db_verify=3)
    data["db_roles"][0]["password"] = SECRET
    data["db_databases"][0]["name"] = ""
    text = problems(data)
    assert len(text.splitlines()) == 3


# --- password status from the server's digest (the verifier never leaves the server) ---------

def _server_digest(stored: str) -> str:
    """What tasks.facts.postgres.password_digest_query computes in SQL, in Python."""
    if stored.startswith("SCRAM-SHA-256$"):
        head, params, keys = stored.split("$")
        return f"{head}${params}${hashlib.sha256(keys.encode()).hexdigest()}"
    return "md5$" + hashlib.sha256(stored.encode()).hexdigest()


@pytest.mark.parametrize("stored, password, expected", [
    (None, "pw", "absent"),
    (scram_verifier("pw", salt=b"0123456789abcdef"), "pw", "match"),
    (scram_verifier("pw", iterations=10000), "pw", "match"),
    (scram_verifier("pw"), "other", "mismatch"),
    (md5_verifier("pw", "quant_user"), "pw", "md5-match-upgrade"),
    (md5_verifier("pw", "someone_else"), "pw", "mismatch"),
])
def test_status_from_digest_agrees_with_the_verifier_check(stored, password, expected):
    digest = None if stored is None else _server_digest(stored)
    status = password_status_from_digest(digest, password, "quant_user")
    assert status == expected == password_status(stored, password, "quant_user")
    # the stand-in the planner sees is judged the same way
    assert password_status(stand_in(status, password, "quant_user"), password, "quant_user") == status


def test_unknown_formats_and_garbage_digests_are_mismatches():
    assert password_status_from_digest("other", "pw", "u") == "mismatch"
    bad_salt = "SCRAM-SHA-256$4096:!!!$" + "0" * 64
    assert password_status_from_digest(bad_salt, "pw", "u") == "mismatch"


def test_grant_specs_are_the_pg_sql_types(pwfile):
    specs = load(lab_like(pwfile))[1].grant_specs()
    assert isinstance(specs[0], GrantSpec) and isinstance(specs[-1], DefaultPrivilegeSpec)


def test_password_files_are_read_whole_minus_one_newline(pwfile, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    two_lines = tmp_path / "two"
    two_lines.write_text(SECRET + "\nsecond\n")
    data = lab_like(pwfile)
    data["db_roles"].append({"name": "a", "password": {"file": str(empty)}})
    data["db_roles"].append({"name": "b", "password": {"file": str(two_lines)}})
    text = problems(data)
    assert f"db_roles[1].password: file {empty} is empty" in text
    assert f"db_roles[2].password: the value from file {two_lines} spans lines" in text
    assert load(lab_like(pwfile))[1].roles[0].password.read() == SECRET

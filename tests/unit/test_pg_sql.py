"""Quoting, catalog parsing and minimal-change plans for roles, databases and grants."""

from dataclasses import replace
from pathlib import Path

import pytest

from tasks.core.pg_catalog import (
    Catalog,
    DatabaseState,
    DefaultAclState,
    ObjectState,
    RoleState,
    SchemaState,
    catalog_query,
    parse_catalog_json,
)
from tasks.core.pg_grants import DefaultPrivilegeSpec, GrantSpec, plan_grants
from tasks.core.pg_roles import (
    QUIET_LOGGING,
    DatabaseSpec,
    RoleSpec,
    SchemaSpec,
    plan_database,
    plan_memberships,
    plan_role,
    plan_schema,
)
from tasks.core.pg_sql import (
    PUBLIC,
    Plan,
    SqlInputError,
    Statement,
    normalize_privileges,
    quote_ident,
    quote_literal,
    render_script,
)
from tasks.core.scram import md5_verifier, scram_verifier, verifier_matches

FIXTURE = Path(__file__).parent / "data" / "pg15_catalog_quant_db.json"


def unquote_ident(sql: str) -> str:
    """Read back a quoted identifier the way PostgreSQL's lexer does; fails if it is not one."""
    assert sql[0] == '"' and sql[-1] == '"'
    body = sql[1:-1]
    assert '"' not in body.replace('""', ""), "a lone quote would end the identifier early"
    return body.replace('""', '"')


def unquote_literal(sql: str) -> str:
    escaped = sql.startswith("E'")
    body = sql[2:-1] if escaped else sql[1:-1]
    assert sql[-1] == "'" and "'" not in body.replace("''", "")
    body = body.replace("''", "'")
    return body.replace("\\\\", "\\") if escaped else body


# --- quoting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,quoted",
    [
        ("quant-user", '"quant-user"'),
        ('a"b', '"a""b"'),
        ("O'Reilly", '"O\'Reilly"'),
        ("x; DROP TABLE users", '"x; DROP TABLE users"'),
        ('x"; DROP TABLE users; --', '"x""; DROP TABLE users; --"'),
        ("Quant_User", '"Quant_User"'),  # case preserved, not folded
        ("select", '"select"'),  # keywords are fine quoted
    ],
)
def test_quote_ident(name, quoted):
    assert quote_ident(name) == quoted
    assert unquote_ident(quoted) == name


def test_quote_ident_length_is_counted_in_bytes():
    assert quote_ident("a" * 63)
    with pytest.raises(SqlInputError, match="63 bytes"):
        quote_ident("a" * 64)
    with pytest.raises(SqlInputError, match="63 bytes"):
        quote_ident("\u00e9" * 32)  # 32 characters, 64 bytes


@pytest.mark.parametrize("bad", ["", "a\x00b", None, 5])
def test_quote_ident_rejects(bad):
    with pytest.raises(SqlInputError):
        quote_ident(bad)


@pytest.mark.parametrize(
    "value,quoted",
    [
        ("O'Reilly", "'O''Reilly'"),
        ("'; DROP TABLE users; --", "'''; DROP TABLE users; --'"),
        ("plain", "'plain'"),
        ("a\\b", "E'a\\\\b'"),  # E'' form is right whatever standard_conforming_strings says
        ("\\'; DROP TABLE users; --", "E'\\\\''; DROP TABLE users; --'"),
    ],
)
def test_quote_literal(value, quoted):
    assert quote_literal(value) == quoted
    assert unquote_literal(quoted) == value


def test_quote_literal_rejects_nul():
    with pytest.raises(SqlInputError, match="NUL"):
        quote_literal("a\x00b")


# --- helpers ---------------------------------------------------------------------------------


def role_state(name="quant-user", **kw) -> RoleState:
    kw.setdefault("password_known", True)
    return RoleState(name=name, **kw)


def catalog(**kw) -> Catalog:
    base = dict(
        database="quant",
        server_version_num=150018,
        is_superuser=True,
        roles={},
        databases={},
        schemas={},
        objects=(),
        default_acls={},
    )
    base.update(kw)
    return Catalog(**base)


def sqls(plan: Plan) -> list[str]:
    return [s.sql for s in plan.statements]


# --- roles -----------------------------------------------------------------------------------


def test_create_role_with_attributes_and_password():
    spec = RoleSpec("quant-user", login=True, connection_limit=20, valid_until="2030-01-01",
                    password="S3cr3t'pw", member_of=["readers"])  # fmt: skip
    plan = plan_role(spec, None)
    create, quiet, st = plan.statements  # the verifier in a statement of its own, logging off
    assert not create.secret and not quiet.secret and st.secret
    assert create.sql == (
        "CREATE ROLE \"quant-user\" WITH LOGIN CONNECTION LIMIT 20 "
        "VALID UNTIL '2030-01-01T00:00:00+00:00'"
    )
    assert quiet.sql == QUIET_LOGGING
    assert st.sql.startswith("ALTER ROLE \"quant-user\" WITH PASSWORD 'SCRAM-SHA-256$4096:")
    verifier = st.sql.split("PASSWORD ")[1].strip("'")
    assert verifier_matches(verifier, "S3cr3t'pw")
    assert "S3cr3t" not in st.sql  # only the verifier travels
    assert plan.changes == [
        'role "quant-user": create (login on, connection limit 20, '
        "valid until 2030-01-01T00:00:00+00:00, password set)"
    ]


def test_role_no_change_when_everything_matches():
    verifier = scram_verifier("pw")
    observed = role_state(login=True, connection_limit=20, valid_until="2030-01-01T01:00:00+01:00",
                          password=verifier)  # fmt: skip
    spec = RoleSpec("quant-user", login=True, connection_limit=20, valid_until="2030-01-01T00:00:00Z",
                    password="pw")  # fmt: skip
    plan = plan_role(spec, observed)
    assert plan.statements == [] and plan.changes == [] and not plan.changed


def test_role_unmanaged_attributes_are_left_alone():
    observed = role_state(login=True, createdb=True, connection_limit=5)
    assert not plan_role(RoleSpec("quant-user"), observed).changed


@pytest.mark.parametrize(
    "attr,on,off",
    [("login", "LOGIN", "NOLOGIN"), ("createdb", "CREATEDB", "NOCREATEDB"),
     ("inherit", "INHERIT", "NOINHERIT"), ("superuser", "SUPERUSER", "NOSUPERUSER")],
)  # fmt: skip
def test_role_flags_both_ways(attr, on, off):
    plan = plan_role(RoleSpec("r", **{attr: True}), role_state("r", **{attr: False}))
    assert sqls(plan) == [f'ALTER ROLE "r" WITH {on}']
    assert plan.changes == [f'role "r": {attr} off -> on']
    plan = plan_role(RoleSpec("r", **{attr: False}), role_state("r", **{attr: True}))
    assert sqls(plan) == [f'ALTER ROLE "r" WITH {off}']
    assert plan.changes == [f'role "r": {attr} on -> off']


def test_role_only_differing_attributes_in_one_alter():
    observed = role_state(login=True, connection_limit=20, valid_until=None)
    spec = RoleSpec("quant-user", login=True, connection_limit=-1, valid_until="2031-05-06T07:08:09+02:00")
    plan = plan_role(spec, observed)
    assert sqls(plan) == [
        "ALTER ROLE \"quant-user\" WITH CONNECTION LIMIT -1 VALID UNTIL '2031-05-06T07:08:09+02:00'"
    ]
    assert plan.changes == [
        'role "quant-user": connection limit 20 -> -1, '
        "valid until infinity -> 2031-05-06T07:08:09+02:00"
    ]


def test_valid_until_infinity_matches_null_and_infinity():
    spec = RoleSpec("r", valid_until="infinity")
    assert not plan_role(spec, role_state("r", valid_until=None)).changed
    assert not plan_role(spec, role_state("r", valid_until="infinity")).changed
    plan = plan_role(spec, role_state("r", valid_until="2030-01-01T00:00:00+00:00"))
    assert sqls(plan) == ["ALTER ROLE \"r\" WITH VALID UNTIL 'infinity'"]


@pytest.mark.parametrize(
    "stored,change",
    [
        (None, "password set"),
        ("SCRAM", "password changed"),
        ("MD5-SAME", "password upgraded md5 -> SCRAM-SHA-256"),
        ("MD5-OTHER", "password changed"),
    ],
)
def test_role_password_changes(stored, change):
    password = "n3w-Pa55'word"
    stored = {
        None: None,
        "SCRAM": scram_verifier("old password"),
        "MD5-SAME": md5_verifier(password, "quant-user"),
        "MD5-OTHER": md5_verifier("old", "quant-user"),
    }[stored]
    plan = plan_role(RoleSpec("quant-user", password=password), role_state(password=stored))
    assert plan.changes == [f'role "quant-user": {change}']
    assert sqls(plan)[0] == QUIET_LOGGING
    st = plan.statements[1]
    assert st.secret and st.sql.startswith("ALTER ROLE \"quant-user\" WITH PASSWORD 'SCRAM-SHA-256$")
    assert verifier_matches(st.sql.split("PASSWORD ")[1].strip("'"), password)


def test_same_password_again_is_no_change():
    stored = scram_verifier("rotated")
    assert not plan_role(RoleSpec("quant-user", password="rotated"), role_state(password=stored)).changed


def test_password_unverifiable_without_superuser_is_a_clear_error():
    observed = role_state(password=None, password_known=False)
    with pytest.raises(SqlInputError, match="superuser"):
        plan_role(RoleSpec("quant-user", password="pw"), observed)


def test_no_secret_in_descriptions_or_reprs():
    password = "Very$ecret'Pa55"
    plans = [
        plan_role(RoleSpec("quant-user", login=True, password=password), None),
        plan_role(RoleSpec("quant-user", password=password), role_state(password=scram_verifier("x"))),
        plan_role(RoleSpec("quant-user", password=password),
                  role_state(password=md5_verifier(password, "quant-user"))),  # fmt: skip
    ]
    for plan in plans:
        verifier = plan.statements[-1].sql.split("PASSWORD ")[1].strip("'")
        salt = verifier.split("$")[1].split(":")[1]
        shown = " ".join(plan.changes) + repr(plan) + repr(plan.statements) + str(plan.statements)
        for secret in (password, verifier, salt, verifier.split("$")[2]):
            assert secret not in shown
    spec = RoleSpec("quant-user", password=password)
    assert password not in repr(spec)
    assert "hidden" in repr(Statement("ALTER ROLE x PASSWORD 'v'", secret=True))


def test_drop_role_only_when_present():
    assert sqls(plan_role(RoleSpec("old", present=False), role_state("old"))) == ['DROP ROLE "old"']
    assert not plan_role(RoleSpec("old", present=False), None).changed


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="public"), "reserved"),
        (dict(name="pg_monitor2"), "reserved"),
        (dict(name=""), "empty"),
        (dict(name="PUBLIC"), "PUBLIC pseudo-role"),
        (dict(name="r", connection_limit=-2), "connection_limit"),
        (dict(name="r", connection_limit=2**31), "connection_limit must be a whole number from -1"),
        (dict(name="r", connection_limit=10**12), "connection_limit"),
        (dict(name="r", connection_limit="10"), "connection_limit"),
        (dict(name="r", valid_until="next year"), "valid_until"),
        (dict(name="r", login="yes"), "login"),
        (dict(name="r", password=""), "password"),
        (dict(name="r", member_of="readers"), "list"),
        (dict(name="r", member_of=["r"]), "itself"),
    ],
)
def test_role_spec_validation(kwargs, match):
    with pytest.raises(SqlInputError, match=match):
        RoleSpec(**kwargs)


# --- memberships -----------------------------------------------------------------------------


def test_memberships_grant_missing_and_revoke_only_when_exclusive():
    spec = RoleSpec("quant-user", member_of=["readers", "pg_read_all_stats"])
    observed = role_state(member_of=frozenset({"readers", "writers"}))
    plan = plan_memberships(spec, observed)
    assert sqls(plan) == ['GRANT "pg_read_all_stats" TO "quant-user"']
    plan = plan_memberships(spec, observed, exclusive=True)
    assert sqls(plan) == ['GRANT "pg_read_all_stats" TO "quant-user"', 'REVOKE "writers" FROM "quant-user"']
    assert plan.changes[1] == 'role "quant-user": leave "writers"'


def test_memberships_no_change_and_unmanaged():
    observed = role_state(member_of=frozenset({"readers"}))
    assert not plan_memberships(RoleSpec("quant-user", member_of=["readers"]), observed, exclusive=True).changed
    assert not plan_memberships(RoleSpec("quant-user"), observed, exclusive=True).changed


# --- databases and schemas -------------------------------------------------------------------


def test_database_create_is_outside_a_transaction():
    plan = plan_database(DatabaseSpec("quant-db", owner="app_owner"), None)
    assert sqls(plan) == ['CREATE DATABASE "quant-db" OWNER "app_owner"']
    assert plan.statements[0].transactional is False
    script = render_script(plan_role(RoleSpec("app_owner"), None).statements + plan.statements)
    assert script == (
        "SET lock_timeout = '10s';\nBEGIN;\nCREATE ROLE \"app_owner\";\nCOMMIT;\n"
        'CREATE DATABASE "quant-db" OWNER "app_owner";\n'
    )


def test_database_owner_change_and_no_op():
    observed = DatabaseState("quant-db", "postgres")
    plan = plan_database(DatabaseSpec("quant-db", owner="app_owner"), observed)
    assert sqls(plan) == ['ALTER DATABASE "quant-db" OWNER TO "app_owner"']
    assert plan.changes == ['database "quant-db": owner "postgres" -> "app_owner"']
    assert not plan_database(DatabaseSpec("quant-db", owner="postgres"), observed).changed
    assert not plan_database(DatabaseSpec("quant-db"), observed).changed


def test_schema_create_and_owner():
    assert sqls(plan_schema(SchemaSpec("quant", "app", "o"), None)) == ['CREATE SCHEMA "app" AUTHORIZATION "o"']
    assert sqls(plan_schema(SchemaSpec("quant", "app", "o"), SchemaState("app", "x"))) == [
        'ALTER SCHEMA "app" OWNER TO "o"'
    ]
    assert not plan_schema(SchemaSpec("quant", "app", "o"), SchemaState("app", "o")).changed


# --- grants ----------------------------------------------------------------------------------


def fs(*p):
    return frozenset(p)


DB_CAT = catalog(
    databases={
        "quant": DatabaseState(
            "quant", "app_owner",
            {"app_owner": fs("CREATE", "CONNECT", "TEMPORARY"), PUBLIC: fs("CONNECT", "TEMPORARY"),
             "quant-user": fs("CONNECT"), "intruder": fs("CONNECT", "CREATE")},
        )
    }
)  # fmt: skip


def test_database_grant_missing_privileges_only():
    plan = plan_grants([GrantSpec("database", "quant", "quant-user", ["CONNECT", "temp"])], DB_CAT)
    assert sqls(plan) == ['GRANT TEMPORARY ON DATABASE "quant" TO "quant-user"']
    assert plan.changes == ['database "quant": grant TEMPORARY to "quant-user"']


def test_database_grant_no_op_when_held():
    assert not plan_grants([GrantSpec("database", "quant", "quant-user", ["CONNECT"])], DB_CAT, exclusive=False).changed


def test_exclusive_revokes_extras_but_never_owner_and_public_only_when_listed():
    grants = [GrantSpec("database", "quant", "quant-user", ["CONNECT"])]
    plan = plan_grants(grants, DB_CAT, exclusive=True)
    assert sqls(plan) == ['REVOKE CREATE, CONNECT ON DATABASE "quant" FROM "intruder"']
    grants.append(GrantSpec("database", "quant", "PUBLIC", []))
    plan = plan_grants(grants, DB_CAT, exclusive=True)
    assert sqls(plan) == [
        'REVOKE CREATE, CONNECT ON DATABASE "quant" FROM "intruder"',
        'REVOKE CONNECT, TEMPORARY ON DATABASE "quant" FROM PUBLIC',
    ]


@pytest.mark.parametrize("written", ["PUBLIC", "public"])
def test_public_is_public_only_as_written(written):
    assert GrantSpec("database", "quant", written, ["CONNECT"]).grantee == PUBLIC
    plan = plan_grants([GrantSpec("database", "quant", written, ["CREATE"])], DB_CAT)
    assert sqls(plan) == ['GRANT CREATE ON DATABASE "quant" TO PUBLIC']


@pytest.mark.parametrize("name", ["Public", "pUBLIC", "PUBLIc", "Public "])
def test_a_role_spelled_like_public_is_that_role(name):
    spec = GrantSpec("database", "quant", name, ["CONNECT"])
    assert spec.grantee == name
    assert sqls(plan_grants([spec], catalog())) == [f'GRANT CONNECT ON DATABASE "quant" TO "{name}"']
    assert RoleSpec(name).name == name  # PostgreSQL reserves only "public" itself
    default = DefaultPrivilegeSpec("quant", "app_owner", "app", "tables", name, ["SELECT"])
    assert default.grantee == name


def _protected_catalog(**kw):
    roles = {"admin": role_state("admin", superuser=True), "deployer": role_state("deployer"),
             "intruder": role_state("intruder")}
    return catalog(roles=roles, current_user="deployer", **kw)


def test_exclusive_never_revokes_from_superusers_or_the_connecting_role():
    acl = {"app_owner": fs("CREATE", "CONNECT", "TEMPORARY"), "admin": fs("CONNECT", "CREATE"),
           "deployer": fs("CONNECT", "CREATE"), "intruder": fs("CONNECT")}
    cat = _protected_catalog(databases={"quant": DatabaseState("quant", "app_owner", acl)})
    plan = plan_grants([GrantSpec("database", "quant", "quant-user", [])], cat, exclusive=True)
    assert sqls(plan) == ['REVOKE CONNECT ON DATABASE "quant" FROM "intruder"']
    assert plan.notes == [
        'kept what "admin" holds beyond the settings: it is a superuser, and exclusive mode never '
        "revokes from one",
        'kept what "deployer" holds beyond the settings: it is the role this deploy connects as, '
        "and exclusive mode never revokes from one",
    ]
    # Even when the settings list them with nothing: they keep it, and a note says so.
    grants = [GrantSpec("database", "quant", name, []) for name in ("admin", "deployer")]
    assert sqls(plan_grants(grants, cat, exclusive=True)) == ['REVOKE CONNECT ON DATABASE "quant" FROM "intruder"']
    # The connecting role named by the operation counts too (a catalog read by another role).
    plan = plan_grants([GrantSpec("database", "quant", "quant-user", [])],
                       replace(cat, current_user=None), exclusive=True, connecting_role="deployer")
    assert "deployer" not in " ".join(sqls(plan))


def test_exclusive_protection_covers_objects_in_a_schema_and_default_privileges():
    objs = (obj("table", "t1", {**OWNER_ALL, "admin": fs("SELECT"), "deployer": fs("INSERT"),
                                "intruder": fs("SELECT")}),)
    defaults = {("app_owner", "app", "tables"): DefaultAclState(
        "app_owner", "app", "tables", {"admin": fs("SELECT"), "deployer": fs("SELECT"), "intruder": fs("SELECT")})}
    cat = _protected_catalog(objects=objs, default_acls=defaults)
    grants = [GrantSpec("tables", "quant", "quant-user", [], schema="app"),
              DefaultPrivilegeSpec("quant", "app_owner", "app", "tables", "quant-user", [])]
    plan = plan_grants(grants, cat, exclusive=True)
    assert sqls(plan) == [
        'REVOKE SELECT ON TABLE app.t1 FROM "intruder"',
        'ALTER DEFAULT PRIVILEGES FOR ROLE "app_owner" IN SCHEMA "app" REVOKE SELECT ON TABLES FROM "intruder"',
    ]
    assert len(plan.notes) == 2  # one per protected role, however many objects


def test_exclusive_memberships_are_kept_for_protected_roles():
    observed = role_state("admin", superuser=True, member_of=frozenset({"readers"}))
    plan = plan_memberships(RoleSpec("admin", member_of=[]), observed, exclusive=True,
                            protected={"admin": "a superuser"})
    assert not plan.changed and plan.notes == [
        "kept \"admin\"'s other memberships: it is a superuser, and exclusive mode never revokes from one"]
    plan = plan_memberships(RoleSpec("admin", member_of=[]), observed, exclusive=True)
    assert sqls(plan) == ['REVOKE "readers" FROM "admin"']


def test_grants_for_other_databases_are_ignored():
    assert not plan_grants([GrantSpec("database", "elsewhere", "x", ["CONNECT"])], DB_CAT).changed


def test_grant_on_a_database_not_yet_created_plans_from_empty():
    plan = plan_grants([GrantSpec("database", "quant", "quant-user", ["CONNECT"])], catalog())
    assert sqls(plan) == ['GRANT CONNECT ON DATABASE "quant" TO "quant-user"']


def obj(kind, name, acl, owner="app_owner", schema="app"):
    ref = f"{schema}.{name}" + ("()" if kind in ("function", "procedure") else "")
    return ObjectState(kind, schema, name, owner, ref, acl)


OWNER_ALL = {"app_owner": fs("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")}
TABLES_CAT = catalog(
    schemas={"app": SchemaState("app", "app_owner", {"app_owner": fs("USAGE", "CREATE")})},
    objects=(
        obj("table", "t1", {**OWNER_ALL, "quant-user": fs("SELECT")}),
        obj("table", "t2", {**OWNER_ALL, "other": fs("SELECT", "INSERT")}),
        obj("table", "mine", {"quant-user": fs(*OWNER_ALL["app_owner"])}, owner="quant-user"),
        obj("sequence", "s1", {"app_owner": fs("USAGE", "SELECT", "UPDATE")}),
        obj("function", "f", {"app_owner": fs("EXECUTE"), PUBLIC: fs("EXECUTE")}),
        obj("procedure", "p", {"app_owner": fs("EXECUTE"), "other": fs("EXECUTE")}),
        obj("table", "elsewhere", {**OWNER_ALL, "other": fs("SELECT")}, schema="other_schema"),
    ),
)


def test_all_tables_in_schema_grants_the_missing_union_once():
    plan = plan_grants(
        [GrantSpec("schema", "quant", "quant-user", ["USAGE"], schema="app"),
         GrantSpec("tables", "quant", "quant-user", ["SELECT"], schema="app"),
         GrantSpec("sequences", "quant", "quant-user", ["USAGE", "SELECT"], schema="app")],
        TABLES_CAT,
    )  # fmt: skip
    assert sqls(plan) == [
        'GRANT USAGE ON SCHEMA "app" TO "quant-user"',
        'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "app" TO "quant-user"',
        'GRANT SELECT ON ALL TABLES IN SCHEMA "app" TO "quant-user"',
    ]
    assert 'tables in schema "app": grant SELECT to "quant-user" (1 of 3 lacked it)' in plan.changes


def test_all_tables_no_op_when_every_table_has_it():
    cat = catalog(objects=(obj("table", "t1", {**OWNER_ALL, "r": fs("SELECT", "INSERT")}),))
    assert not plan_grants([GrantSpec("tables", "quant", "r", ["SELECT"], schema="app")], cat).changed


def test_all_tables_exclusive_revokes_per_object_and_skips_owner_and_other_schemas():
    grants = [GrantSpec("tables", "quant", "quant-user", ["SELECT"], schema="app")]
    plan = plan_grants(grants, TABLES_CAT, exclusive=True)
    assert sqls(plan) == [
        'GRANT SELECT ON ALL TABLES IN SCHEMA "app" TO "quant-user"',
        'REVOKE SELECT, INSERT ON TABLE app.t2 FROM "other"',
    ]


def test_functions_exclude_procedures_and_public_execute_is_kept_unless_listed():
    grants = [GrantSpec("functions", "quant", "quant-user", ["EXECUTE"], schema="app")]
    plan = plan_grants(grants, TABLES_CAT, exclusive=True)
    assert sqls(plan) == ['GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA "app" TO "quant-user"']
    plan = plan_grants(grants + [GrantSpec("functions", "quant", "public", [], schema="app")],
                       TABLES_CAT, exclusive=True)  # fmt: skip
    assert sqls(plan)[1:] == ['REVOKE EXECUTE ON FUNCTION app.f() FROM PUBLIC']


def test_all_privileges_expand_by_server_version():
    grants = [GrantSpec("tables", "quant", "r", ["ALL"], schema="app")]
    cat = catalog(objects=(obj("table", "t1", dict(OWNER_ALL)),))
    assert sqls(plan_grants(grants, cat)) == [
        'GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER '
        'ON ALL TABLES IN SCHEMA "app" TO "r"'
    ]
    cat17 = catalog(server_version_num=170002, objects=cat.objects)
    assert sqls(plan_grants(grants, cat17))[0].endswith(
        'TRIGGER, MAINTAIN ON ALL TABLES IN SCHEMA "app" TO "r"'
    )


def test_default_privileges_grant_no_op_and_exclusive_revoke():
    grant = DefaultPrivilegeSpec("quant", "app_owner", "app", "tables", "quant-user", ["SELECT"])
    plan = plan_grants([grant], catalog())
    assert sqls(plan) == [
        'ALTER DEFAULT PRIVILEGES FOR ROLE "app_owner" IN SCHEMA "app" GRANT SELECT ON TABLES TO "quant-user"'
    ]
    assert plan.changes == [
        'default privileges on tables by "app_owner" in schema "app": grant SELECT to "quant-user"'
    ]
    have = catalog(default_acls={("app_owner", "app", "tables"): DefaultAclState(
        "app_owner", "app", "tables", {"quant-user": fs("SELECT"), "other": fs("SELECT", "DELETE")})})  # fmt: skip
    assert not plan_grants([grant], have).changed
    assert sqls(plan_grants([grant], have, exclusive=True)) == [
        'ALTER DEFAULT PRIVILEGES FOR ROLE "app_owner" IN SCHEMA "app" REVOKE SELECT, DELETE ON TABLES FROM "other"'
    ]


def test_default_privileges_granted_globally_count_as_present():
    glob = catalog(default_acls={("app_owner", None, "tables"): DefaultAclState(
        "app_owner", None, "tables", {"quant-user": fs("SELECT")})})  # fmt: skip
    grant = DefaultPrivilegeSpec("quant", "app_owner", "app", "tables", "quant-user", ["SELECT"])
    assert not plan_grants([grant], glob, exclusive=True).changed
    # with no global entry, functions are executable by PUBLIC by default
    fgrant = DefaultPrivilegeSpec("quant", "app_owner", "app", "functions", "public", ["EXECUTE"])
    assert not plan_grants([fgrant], catalog()).changed


@pytest.mark.parametrize(
    "kind,privs,match",
    [("database", ["SELECT"], "does not apply"), ("schema", ["CONNECT"], "does not apply"),
     ("tables", ["EXECUTE"], "does not apply"), ("tablez", ["SELECT"], "unknown grant kind")],
)  # fmt: skip
def test_bad_privileges_are_clear_errors(kind, privs, match):
    with pytest.raises(SqlInputError, match=match):
        normalize_privileges(kind, privs)


def test_grant_spec_validation():
    with pytest.raises(SqlInputError, match="needs a schema"):
        GrantSpec("tables", "quant", "r", ["SELECT"])
    with pytest.raises(SqlInputError, match="no schema"):
        GrantSpec("database", "quant", "r", ["CONNECT"], schema="app")
    with pytest.raises(SqlInputError, match="63 bytes"):
        GrantSpec("schema", "quant", "r" * 64, ["USAGE"], schema="app")
    assert GrantSpec("database", "quant", "PUBLIC", ["temp", "all privileges"]).privileges == {"TEMPORARY", "ALL"}


def test_injection_through_names_stays_inside_identifiers():
    evil = 'x"; DROP TABLE users; --'
    plan = plan_grants([GrantSpec("schema", "quant", evil, ["USAGE"], schema="O'Reilly")], catalog())
    (sql,) = sqls(plan)
    assert sql == 'GRANT USAGE ON SCHEMA "O\'Reilly" TO "x""; DROP TABLE users; --"'
    assert unquote_ident(sql.split(" TO ")[1]) == evil
    role_sql = sqls(plan_role(RoleSpec(evil, login=True), None))[0]
    assert role_sql == 'CREATE ROLE "x""; DROP TABLE users; --" WITH LOGIN'


# --- catalog query and parsing ---------------------------------------------------------------


def test_catalog_query_reads_pg_authid_only_when_asked():
    q = catalog_query()
    assert "pg_authid" not in q
    for needle in ("json_build_object", "aclexplode", "pg_default_acl", "pg_auth_members",
                   "pg_database", "pg_namespace", "pg_class", "pg_proc", "acldefault"):  # fmt: skip
        assert needle in q
    q = catalog_query(password_roles=["O'Reilly"], schemas=["app"])
    assert "pg_authid" in q and "ARRAY['O''Reilly']::text[]" in q and "ARRAY['app']::text[]" in q


def test_catalog_query_rejects_bad_names():
    with pytest.raises(SqlInputError):
        catalog_query(password_roles=[""])


def test_parse_real_postgres15_catalog():
    cat = parse_catalog_json(FIXTURE.read_text())
    assert cat.database == "quant-db" and cat.server_version_num == 150018 and cat.is_superuser
    qu = cat.roles["quant-user"]
    assert qu.password_known and verifier_matches(qu.password, "rotated")
    assert qu.valid_until == "infinity" and qu.connection_limit == -1 and not qu.login
    assert cat.roles['a"b'].password_known and verifier_matches(cat.roles['a"b'].password, "O'Reilly")
    assert not cat.roles["other"].password_known and cat.roles["other"].member_of == {"readers"}
    assert cat.roles["x; DROP TABLE users"].valid_until == "2031-05-06T05:08:09+00:00"
    assert cat.databases["quant-db"].owner == "app_owner"
    assert PUBLIC not in cat.databases["quant-db"].acl  # revoked in exclusive mode
    assert cat.databases["postgres"].acl[PUBLIC] == {"CONNECT", "TEMPORARY"}
    assert cat.schemas["public"].owner == "pg_database_owner"
    kinds = {(o.kind, o.ref) for o in cat.objects}
    assert kinds == {("table", "app.t1"), ("table", "app.t2"), ("sequence", "app.t1_id_seq"),
                     ("function", "app.f(a integer)"), ("function", "app.g()"), ("procedure", "app.p()")}  # fmt: skip
    assert cat.default_acls[("app_owner", "app", "tables")].acl == {"quant-user": {"SELECT"}}


def test_second_run_against_real_catalog_plans_nothing():
    """The settings the fixture's database was deployed with: re-planning changes nothing."""
    cat = parse_catalog_json(FIXTURE.read_text())
    grants = [
        GrantSpec("database", "quant-db", "quant-user", ["CONNECT", "TEMP"]),
        GrantSpec("database", "quant-db", "public", []),
        GrantSpec("schema", "quant-db", "quant-user", ["USAGE"], schema="app"),
        GrantSpec("tables", "quant-db", "quant-user", ["SELECT"], schema="app"),
        GrantSpec("sequences", "quant-db", "quant-user", ["USAGE", "SELECT"], schema="app"),
        GrantSpec("functions", "quant-db", "quant-user", ["EXECUTE"], schema="app"),
        DefaultPrivilegeSpec("quant-db", "app_owner", "app", "tables", "quant-user", ["SELECT"]),
        DefaultPrivilegeSpec("quant-db", "app_owner", "app", "functions", "quant-user", ["EXECUTE"]),
    ]
    assert plan_grants(grants, cat, exclusive=True).statements == []
    role = RoleSpec("quant-user", login=False, connection_limit=-1, valid_until="infinity",
                    password="rotated", member_of=[])  # fmt: skip
    assert not plan_role(role, cat.roles["quant-user"]).changed
    assert not plan_memberships(role, cat.roles["quant-user"], exclusive=True).changed
    assert not plan_database(DatabaseSpec("quant-db", "app_owner"), cat.databases["quant-db"]).changed
    # and a rotation changes exactly one thing
    rotated = plan_role(RoleSpec("quant-user", password="next"), cat.roles["quant-user"])
    assert rotated.changes == ['role "quant-user": password changed']


def test_parse_errors_never_echo_the_text():
    secret = '{"roles": [{"password": "SCRAM-SHA-256$4096:c2FsdA==$x:y"}]}'
    with pytest.raises(ValueError) as err:
        parse_catalog_json(secret)
    assert "SCRAM" not in str(err.value)
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_catalog_json("ERROR: permission denied SCRAM-SHA-256$")


# --- the SQL a role runs as itself to prove its grants ------------------------------------------


def test_usage_sql_reads_granted_tables_and_asks_every_privilege_of_each_named_kind():
    import re

    from tasks.core.pg_grants import usage_sql

    cat = parse_catalog_json(FIXTURE.read_text())
    grants = [GrantSpec("database", "quant-db", "quant-user", frozenset({"CONNECT"})),
              GrantSpec("tables", "quant-db", "quant-user", frozenset({"SELECT"}), schema="app")]
    sql, uses = usage_sql(grants, cat)
    # real reads of every granted table (a SELECT privilege that does not work fails here)
    assert uses == ["SELECT 1 FROM app.t1 LIMIT 0", "SELECT 1 FROM app.t2 LIMIT 0"]
    final = sql.split("; ")[-1]
    assert final.startswith("SELECT json_agg(x) FROM (VALUES ")
    # one row per privilege the kind has: granted ones wanted, the others checked as absent
    labels = [m.replace("''", "'") for m in re.findall(r"json_build_object\('what', '((?:[^']|'')*)'", final)]
    assert labels == ['CREATE on database "quant-db"', 'CONNECT on database "quant-db"',
                      'TEMPORARY on database "quant-db"',
                      *[f'{p} on all tables in schema "app"' for p in
                        ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")]]
    assert "'want', true" in final and final.count("'want', true") == 2

#!/bin/sh
# First start: initdb with the superuser password from POSTGRES_PASSWORD_FILE or POSTGRES_PASSWORD
# (as the official image does), scram-sha-256 for every TCP client, peer on the local socket.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        cat "$POSTGRES_PASSWORD_FILE" > "$pwfile"
    else
        printf '%s' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE must be set}" > "$pwfile"
    fi
    initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] %q%u@%d '
CONF
    echo "quantlab-postgres: initialised $PGDATA (scram-sha-256 on TCP, peer on the socket)"
fi
exec "$@"

#!/bin/sh
# sshd in the foreground as PID 1, logging to stderr (docker logs). A host key is made only when
# none was given (tests copy theirs in before start, so clients can check it strictly).
set -e
mkdir -p /run/sshd
chmod 0755 /run/sshd
if ! ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
    ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
fi
exec /usr/sbin/sshd -D -e

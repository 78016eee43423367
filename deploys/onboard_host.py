"""
Onboard fresh Debian hosts: deploy user with key and narrow sudo, Docker from Debian's packages
with container log rotation, the stack's directories and compose file, then verification.

    pyinfra -y inventories/production.py deploys/onboard_host.py

Settings: the host's `onboard` block (tasks/settings/onboard.py: defaults and rules), validated
before any change. A host that cannot be onboarded as asked (no apt-get, no systemd for engine
"local", ...) fails alone with the reasons, unchanged; the others proceed. A second run reports no changes.
"""
from tasks.operations import recap
from tasks.operations.onboard import onboard
from tasks.operations.refusals import quiet_refusals

quiet_refusals()
recap.install()  # the recap and QUANT_REPORT's run document at the end of the run

onboard()

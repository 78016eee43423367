"""The remediation runner's operations, facts and their pure cores (see the README).

Importing it changes nothing: deploy files call ``tasks.operations.refusals.quiet_refusals()``.
"""

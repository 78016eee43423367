"""LabHandle.up brings a lab up again on a new port base when a published port was taken between
picking the base and binding it (seen in a suite run, when the bases lay in Linux's ephemeral
range with the clients' ports; now they lie below it, and another worker's lab can still take
one); any other failure is raised at once. The `scripts/lab` calls are scripted here: what is
tested is the decision, not the engine."""

from __future__ import annotations

import subprocess

import pytest

from tasks.lab import harness

TAKEN = ("lab: Error starting userland proxy: listen tcp4 127.0.0.1:19774: bind: address already in use",
         "lab: Bind for 127.0.0.1:19775 failed: port is already allocated")


class ScriptedLab(harness.LabHandle):
    def __init__(self, answers: list[tuple[int, str]]):
        super().__init__(prefix="qtunit", port_base=19770)
        self.answers = answers
        self.calls: list[tuple[int, tuple[str, ...]]] = []

    def cli(self, *args, check=True, timeout=900):
        self.calls.append((self.port_base, args))
        if args[0] == "down":
            return subprocess.CompletedProcess(args, 0, "", "")
        code, err = self.answers.pop(0)
        return subprocess.CompletedProcess(args, code, "", err)


@pytest.mark.parametrize("message", TAKEN)
def test_a_taken_port_takes_the_half_made_lab_down_and_retries_on_a_new_base(message):
    lab = ScriptedLab([(1, message), (0, "")])
    lab.up("incident")
    ups = [(base, args) for base, args in lab.calls if args[0] == "up"]
    assert [args[0] for _, args in lab.calls] == ["up", "down", "up"]
    assert ups[0][0] == 19770 and ups[1][0] != 19770
    assert ups[1][1] == ("up", "--scenario", "incident")


def test_another_failure_is_raised_at_once_with_the_labs_output():
    lab = ScriptedLab([(1, "lab: image quantlab/mlflow2 missing")])
    with pytest.raises(AssertionError, match="image quantlab/mlflow2 missing"):
        lab.up("healthy")
    assert [args[0] for _, args in lab.calls] == ["up"]


def test_a_port_taken_every_time_gives_up_after_the_last_attempt():
    lab = ScriptedLab([(1, TAKEN[0])] * harness.PORT_ATTEMPTS)
    with pytest.raises(AssertionError, match="address already in use"):
        lab.up("healthy", style="compose")
    assert [args[0] for _, args in lab.calls].count("up") == harness.PORT_ATTEMPTS


def test_the_retry_never_picks_the_base_whose_port_was_taken(monkeypatch):
    # The base just found taken looks free again once its half-made lab is down (a suite run
    # drew it again, 1 in 200): the next draw is taken instead.
    draws = iter([77, 77, 78])
    monkeypatch.setattr(harness.random, "randrange", lambda *_: next(draws))
    lab = ScriptedLab([(1, TAKEN[0]), (0, "")])
    lab.up("incident")
    assert [base for base, args in lab.calls if args[0] == "up"] == [19770, 19780]


def test_a_base_is_never_drawn_in_the_ephemeral_ports(monkeypatch):
    # A client connection there could take a port between the check and the engine's bind.
    monkeypatch.setattr(harness, "ephemeral_ports", lambda: (32768, 60999))
    with pytest.raises(RuntimeError, match="outside the ephemeral ports 32768-60999"):
        harness.free_port_base(38000)
    assert all(harness.free_port_base(32000, span=10) + 9 < 32768 for _ in range(20))

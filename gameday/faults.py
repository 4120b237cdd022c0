"""The operator's faults, one after the other on a timeline: each records when it began and ended.

A fault's window runs from its first action to the moment the fleet is whole again as the operator sees
it (the switch to the new key, HAProxy marking the restarted instance up, the replica promoted, the node
resumed); requests are attributed to a window afterwards (run.blamed_windows)."""

import dataclasses
import time

from .fleet import GamedayError, http_get, wait_until


@dataclasses.dataclass
class Fault:
    name: str
    at: float  # seconds after the players started: not before
    began: float | None = None  # monotonic
    ended: float | None = None
    details: dict = dataclasses.field(default_factory=dict)
    error: str | None = None

    @property
    def happened(self):
        return self.began is not None and self.ended is not None and self.error is None


class Operator:
    """Carry out the faults on the fleet."""

    def __init__(self, cluster, services, balancer, keys, settings, failover_mode, hang_s):
        self.cluster = cluster
        self.services = services
        self.balancer = balancer
        self.keys = keys
        self.settings = settings  # the service's: ttl, leeway, propagation, reload
        self.failover_mode = failover_mode
        self.hang_s = hang_s
        self.touched: set[int] = set()  # Redis nodes an earlier fault involved
        self.prune_due_wall: float | None = None
        self.retired_kid: str | None = None
        self.metrics_before_restart: str | None = None

    @property
    def view_lag_s(self):
        """Return how late an instance may act on the key directory: propagation + reload."""
        return self.settings["keys_propagation_s"] + self.settings["keys_reload_s"]

    # --- the signing key ---------------------------------------------------------------------------

    def rotate(self, fault):
        """Run `keys rotate` (with --force only if refused): the next key signs from the switch on."""
        old = self.keys.kid("active")
        fault.began = time.monotonic()
        status, out = self.keys.run("rotate")
        fault.details["forced"] = status != 0
        if status != 0:
            status, out = self.keys.run("rotate", "--force")
        if status != 0:
            raise GamedayError(f"keys rotate failed: {out}")
        listing = {key["kid"]: key for key in self.keys.listing()}
        new = next(kid for kid, key in listing.items() if key["state"] == "active")
        switch_wall = listing[new]["times"]["active"]
        switch = time.monotonic() + (switch_wall - time.time())  # the manifest's wall time, on our clock
        fault.ended = max(switch, time.monotonic()) + 1.0  # every instance signs with the new key by then
        self.retired_kid = old
        # Rule 5 of docs/operations.md: the old key stays until switch + token lifetime + leeway + view lag.
        token_s = self.settings["session_ttl_s"] + self.settings["token_leeway_s"]
        self.prune_due_wall = switch_wall + token_s + self.view_lag_s
        fault.details.update(old_kid=old, new_kid=new, switch=switch, output=out.splitlines())

    def prune(self, fault):
        """Run `keys prune` once the old key's time has come; wait until it leaves every instance's JWKS."""
        retired = self.retired_kid
        if self.prune_due_wall is None or retired is None:
            raise GamedayError("no rotation to prune after")
        time.sleep(max(0.0, self.prune_due_wall + 0.5 - time.time()))
        fault.began = time.monotonic()
        deadline = fault.began + 30
        while True:
            status, out = self.keys.run("prune")
            if status == 0 and f"{retired} is retired" in out:
                break
            if time.monotonic() > deadline:
                raise GamedayError(f"keys prune did not retire {retired}: {out}")
            time.sleep(1.0)
        fault.details["output"] = out.splitlines()
        fault.details["retired_kid"] = retired

        def gone_everywhere():
            for service in self.services:
                status, body = http_get(service.port, "/.well-known/jwks.json")
                if status != 200 or retired.encode() in body:
                    return False
            return True

        wait_until(gone_everywhere, self.view_lag_s + 5, "the retired key to leave every JWKS", 0.1)
        fault.details["jwks_without_it_after_s"] = round(time.monotonic() - fault.began, 2)
        fault.ended = max(time.monotonic(), fault.began + self.view_lag_s)

    # --- an instance -------------------------------------------------------------------------------

    def restart(self, fault):
        """SIGTERM one instance; once HAProxy marks it down, start a new one on its port; wait until up."""
        service = self.services[-1]
        self.metrics_before_restart = service.metrics()
        fault.began = time.monotonic()
        status, took = service.terminate()
        fault.details.update(instance=service.name, exit_status=status, exited_after_s=round(took, 2))
        # A replacement takes a while to come up: HAProxy's checks take the instance out meanwhile.
        wait_until(lambda: self.balancer.states().get(service.name) == "DOWN", 10, "HAProxy to mark it down")
        fault.details["down_after_s"] = round(time.monotonic() - fault.began, 2)
        service.start()
        fault.details["ready_after_s"] = round(time.monotonic() - fault.began, 2)
        wait_until(lambda: self.balancer.states().get(service.name) == "UP", 30, "HAProxy to mark it up")
        fault.ended = time.monotonic()

    # --- Redis -------------------------------------------------------------------------------------

    def failover(self, fault):
        """Fail one master over to its replica: SIGKILL it (`kill`) or CLUSTER FAILOVER (`manual`)."""
        topology = self.cluster.topology()
        victim = next((m for m in sorted(topology) if topology[m]), None)
        if victim is None:
            raise GamedayError(f"no master has a replica: {topology}")
        replica = topology[victim][0]
        self.touched |= {victim, replica}
        fault.details.update(mode=self.failover_mode, master=victim, replica=replica)
        fault.began = time.monotonic()
        if self.failover_mode == "kill":
            self.cluster.kill(victim)
        else:
            self.cluster.client(replica).execute_command("CLUSTER FAILOVER")

        def promoted():
            return self.cluster.role(replica) == "master" and self.cluster.state_ok(replica)

        wait_until(promoted, 30, f"the replica on port {replica} to take over", 0.05)
        fault.ended = time.monotonic()
        fault.details["promoted_after_s"] = round(fault.ended - fault.began, 2)
        if self.failover_mode == "kill":
            # The operator brings the dead node back: empty, it rejoins as the new master's replica.
            self.cluster.restart(victim)
            wait_until(lambda: self.cluster.linked(victim), 30, "the old master to rejoin as a replica", 0.1)
            fault.details["rejoined_after_s"] = round(time.monotonic() - fault.began, 2)
        else:
            wait_until(lambda: self.cluster.linked(victim), 30, "the old master to follow", 0.1)

    def hang(self, fault):
        """SIGSTOP a master (one no earlier fault touched) for `hang_s`, then SIGCONT."""
        topology = self.cluster.topology()
        victim = next((m for m in sorted(topology) if m not in self.touched), min(topology))
        self.touched.add(victim)
        fault.details.update(master=victim, seconds=self.hang_s)
        fault.began = time.monotonic()
        self.cluster.pause(victim)
        try:
            time.sleep(self.hang_s)
        finally:
            self.cluster.resume(victim)
        fault.ended = time.monotonic()
        time.sleep(1.0)
        fault.details["still_master"] = self.cluster.role(victim) == "master"

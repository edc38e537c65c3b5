"""Which backups and restores may run together (pure rules of reconcile.concurrency)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from citus_backup.reconcile.concurrency import Activity, blocker, conflicts

T = datetime(2026, 11, 27, tzinfo=UTC)
SERVER = ("coordinator", 5432)


def act(
    kind: str,
    name: str,
    *,
    at: int = 0,
    holding: bool = False,
    policy: str | None = "p",
    server: tuple[str, int] | None = SERVER,
    databases: set[str] | None = None,
) -> Activity:
    return Activity(
        kind=kind,
        name=name,
        created=T + timedelta(seconds=at),
        holding=holding,
        policy=policy,
        server=server,
        databases=frozenset(databases) if databases is not None else None,
    )


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (act("CitusBackup", "a"), act("CitusBackup", "b"), True),
        (act("CitusBackup", "a"), act("CitusBackup", "b", policy="q"), False),
        (act("CitusBackup", "a"), act("CitusRestore", "r", policy="q", databases={"x"}), True),
        (
            act("CitusBackup", "a", databases={"app1"}),
            act("CitusRestore", "r", policy="q", databases={"app2"}),
            False,
        ),
        (
            act("CitusRestore", "r1", databases={"app1"}),
            act("CitusRestore", "r2", databases={"app1"}),
            True,
        ),
        (
            act("CitusRestore", "r1", databases={"app1"}),
            act("CitusRestore", "r2", databases={"app2"}),
            False,
        ),
        (act("CitusRestore", "r1"), act("CitusRestore", "r2", databases={"app2"}), True),
        (
            act("CitusRestore", "r1", databases={"app1"}),
            act("CitusRestore", "r2", databases={"app1"}, server=("other", 5432)),
            False,
        ),
    ],
)
def test_conflicts(a: Activity, b: Activity, expected: bool) -> None:
    assert conflicts(a, b) is expected
    assert conflicts(b, a) is expected


def test_a_holder_blocks_even_a_newer_one() -> None:
    me = act("CitusBackup", "old", at=0)
    holder = act("CitusBackup", "new", at=10, holding=True)
    assert blocker(me, [me, holder]) == holder


def test_among_waiters_the_oldest_goes_first_and_never_both() -> None:
    a = act("CitusBackup", "a", at=0)
    b = act("CitusBackup", "b", at=1)
    assert blocker(a, [a, b]) is None
    assert blocker(b, [a, b]) == a


def test_a_tie_is_broken_by_kind_and_name() -> None:
    backup = act("CitusBackup", "z", at=0)
    restore = act("CitusRestore", "a", at=0)
    assert blocker(backup, [backup, restore]) is None
    assert blocker(restore, [backup, restore]) == backup


def test_nothing_to_wait_for() -> None:
    me = act("CitusRestore", "r", databases={"app1"})
    assert blocker(me, [me, act("CitusRestore", "s", databases={"app2"}, holding=True)]) is None


def test_a_verification_waits_for_a_backup_of_its_policy_and_for_a_twin_only() -> None:
    """A verification touches its scratch databases only (restore_activity)."""
    from citus_backup.api.backup import CitusBackup  # noqa: PLC0415
    from citus_backup.api.restore import CitusRestore  # noqa: PLC0415
    from citus_backup.reconcile.concurrency import restore_activity  # noqa: PLC0415

    backup = CitusBackup.model_validate(
        {
            "metadata": {"name": "b1", "namespace": "ns"},
            "spec": {"policyName": "p"},
            "status": {"phase": "Succeeded", "databases": {"app1": 1, "app2": 2}},
        }
    )

    def verify(name: str) -> Activity:
        restore = CitusRestore.model_validate(
            {
                "metadata": {"name": name, "namespace": "ns", "creationTimestamp": T.isoformat()},
                "spec": {"backupName": "b1", "verify": True},
            }
        )
        # The policy is resolved from the backup in activities(); here by hand.
        return dataclasses.replace(
            restore_activity(restore, None, backup), policy="p", server=SERVER
        )

    v1, v2 = verify("v1"), verify("v2")
    assert v1.databases is not None
    assert all(db.startswith("citus_backup_verify_") for db in v1.databases)
    assert conflicts(v1, act("CitusBackup", "next", policy="p"))  # the same policy's backup
    assert conflicts(v1, v2)  # the same scratch databases
    real = act("CitusRestore", "r", policy="q", databases={"app1"})
    assert not conflicts(v1, real)  # never a real database's restore

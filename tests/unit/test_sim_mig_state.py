"""The sim's MIG state file: it survives a daemon restart, is written atomically, and rejects corruption."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vgpud._private.backend import SIM_STATE_FILE, make_backend
from vgpud._private.backend.base import BackendError
from vgpud._private.backend.sim import SimBackend

SPEC = "h100-80gb,a30-24gb,l4-24gb"


def started(path: Path) -> tuple[SimBackend, str, str]:
    backend = SimBackend(SPEC, "node-a", state_path=path)
    h100, a30, _l4 = (g.uuid for g in backend.discover())
    return backend, h100, a30


def test_instances_and_uuids_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    first, h100, a30 = started(path)
    first.set_mig_mode(h100, True)
    first.set_mig_mode(a30, True)
    made = [first.create_mig_instance(h100, 9, 4), first.create_mig_instance(h100, 19, 1)]
    small = first.create_mig_instance(a30, 14, 3)
    first.close()

    again, _, _ = started(path)
    assert again.mig_instances(h100) == sorted(made, key=lambda i: i.start)
    assert again.mig_instances(a30) == [small]
    assert [g.mig_enabled for g in again.discover()] == [True, True, False]
    # The restored instances behave like the originals: occupied, owned, destroyable.
    with pytest.raises(BackendError, match=r"no room for 3g\.40gb at slot 4"):
        again.create_mig_instance(h100, 9, 4)
    again.destroy_mig_instance(h100, made[0].gpu_instance_id, owned={made[0].mig_uuid or ""})
    assert started(path)[0].mig_instances(h100) == [made[1]]


def test_a_new_instance_after_restart_gets_a_fresh_uuid_and_id(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    first, h100, _ = started(path)
    first.set_mig_mode(h100, True)
    kept = first.create_mig_instance(h100, 19, 0)
    again, _, _ = started(path)
    new = again.create_mig_instance(h100, 19, 1)
    assert new.gpu_instance_id != kept.gpu_instance_id
    assert new.mig_uuid != kept.mig_uuid


def test_file_is_replaced_atomically_on_each_change(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    backend, h100, _ = started(path)
    assert not path.exists()  # nothing changed yet
    backend.set_mig_mode(h100, True)
    assert json.loads(path.read_text())["gpus"][h100]["current"] is True
    made = backend.create_mig_instance(h100, 0, 0)
    saved = json.loads(path.read_text())["gpus"][h100]["gpu_instances"]
    assert saved == [
        {
            "id": 0,
            "profile_id": 0,
            "start": 0,
            "compute_instances": [{"id": 0, "profile_id": 4, "start": 0, "uuid": made.mig_uuid}],
        }
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp files left


def test_mode_pending_a_reset_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    backend = SimBackend("a100-40gb", "n", state_path=path)
    uuid = backend.discover()[0].uuid
    backend.sim.gpus[0].mig.reset_impossible = True
    with pytest.raises(BackendError, match="pending on"):
        backend.set_mig_mode(uuid, True)
    again = SimBackend("a100-40gb", "n", state_path=path)
    assert again.sim.nvmlDeviceGetMigMode(again.sim.nvmlDeviceGetHandleByIndex(0)) == [0, 1]


def test_gpus_the_spec_no_longer_has_are_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    first, h100, _ = started(path)
    first.set_mig_mode(h100, True)
    first.create_mig_instance(h100, 19, 0)
    other = SimBackend("a30-24gb", "node-a", state_path=path)  # index 0 is now another model: another UUID
    assert other.mig_instances(other.discover()[0].uuid) == []


def good_state(h100: str) -> dict[str, Any]:
    return {
        "format": 1,
        "gpus": {
            h100: {
                "current": True,
                "pending": True,
                "gpu_instances": [
                    {
                        "id": 1,
                        "profile_id": 9,
                        "start": 0,
                        "compute_instances": [
                            {"id": 0, "profile_id": 2, "start": 0, "uuid": "MIG-11111111-2222-3333-4444-555555555555"}
                        ],
                    }
                ],
            }
        },
    }


def test_a_hand_written_good_state_loads(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    h100 = SimBackend(SPEC, "node-a").discover()[0].uuid
    path.write_text(json.dumps(good_state(h100)))
    (instance,) = started(path)[0].mig_instances(h100)
    assert (instance.profile_name, instance.start, instance.mig_uuid) == (
        "3g.40gb",
        0,
        "MIG-11111111-2222-3333-4444-555555555555",
    )


def _set(data: dict[str, Any], h100: str, change: str) -> None:
    gi = data["gpus"][h100]["gpu_instances"][0]
    if change == "overlap":
        data["gpus"][h100]["gpu_instances"].append({**gi, "id": 2, "start": 0, "compute_instances": []})
    elif change == "mig-off":
        data["gpus"][h100]["current"] = False
    elif change == "bad-start":
        gi["start"] = 2
    elif change == "unknown-profile":
        gi["profile_id"] = 77
    elif change == "repeated-uuid":
        data["gpus"][h100]["gpu_instances"].append(
            {**gi, "id": 2, "start": 4, "compute_instances": gi["compute_instances"]}
        )
    elif change == "bad-uuid":
        gi["compute_instances"][0]["uuid"] = "GPU-1"
    elif change == "string-id":
        gi["id"] = "1"
    elif change == "bool-start":
        gi["start"] = False
    elif change == "format":
        data["format"] = 2
    elif change == "missing":
        del gi["compute_instances"]


@pytest.mark.parametrize(
    "change",
    [
        "overlap",
        "mig-off",
        "bad-start",
        "unknown-profile",
        "repeated-uuid",
        "bad-uuid",
        "string-id",
        "bool-start",
        "format",
        "missing",
    ],
)
def test_corrupted_state_is_a_clear_error(tmp_path: Path, change: str) -> None:
    path = tmp_path / "state.json"
    h100 = SimBackend(SPEC, "node-a").discover()[0].uuid
    data = good_state(h100)
    _set(data, h100, change)
    path.write_text(json.dumps(data))
    with pytest.raises(BackendError, match=r"MIG state file .*state\.json is corrupted .*delete it to start"):
        started(path)


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe", b"[]", b'{"format": 1, "gpus": []}'])
def test_unreadable_json_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(BackendError, match="is corrupted"):
        started(path)


def test_a_state_file_that_cannot_be_read_or_written_is_a_clear_error(tmp_path: Path) -> None:
    where = tmp_path / "state-dir"
    backend, h100, _ = started(where / "state.json")
    where.write_text("")  # the directory is now a file
    with pytest.raises(BackendError, match=r"cannot save the simulated GPUs' MIG state to .*state\.json"):
        backend.set_mig_mode(h100, True)
    with pytest.raises(BackendError, match=r"cannot read the simulated GPUs' MIG state from .*Not a directory"):
        started(where / "state.json")


def test_make_backend_keeps_sim_state_in_the_state_dir(tmp_path: Path) -> None:
    backend = make_backend("sim", "h100-80gb", "n", state_dir=tmp_path)
    uuid = backend.discover()[0].uuid
    backend.set_mig_mode(uuid, True)
    made = backend.create_mig_instance(uuid, 15, 6)
    assert (tmp_path / SIM_STATE_FILE).exists()
    assert make_backend("sim", "h100-80gb", "n", state_dir=tmp_path).mig_instances(uuid) == [made]
    assert make_backend("sim", "h100-80gb", "n").mig_instances(uuid) == []  # no state dir: fresh GPUs

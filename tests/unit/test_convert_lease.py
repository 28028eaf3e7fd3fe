"""convert.lease: the per-node environments of a lease, which node `env` is for, and where the token goes."""

from __future__ import annotations

import dataclasses

from vgpu.api.v1 import types_pb2
from vgpud._private.core.lease_record import LeaseRecord, SliceRecord
from vgpud._private.core.model import Isolation, LeaseState, Owner, ShapeRequest
from vgpud._private.services import convert

GiB = 1024**3
TOKEN = "lease-0123456789ab.s3cret"
LOCAL = "unix:///run/vgpu/n1.sock"
ENDPOINTS = {"n1": "unix:///listed/n1.sock", "n2": "unix:///run/vgpu/n2.sock", "n3": "unix:///run/vgpu/n3.sock"}


def record(*slices: SliceRecord, state: LeaseState = LeaseState.GRANTED) -> LeaseRecord:
    return LeaseRecord(
        id="lease-0123456789ab",
        token_sha256="ab" * 32,
        state=state,
        node="n1",
        project="vision",
        priority="train",
        owner=Owner("ada", "host", 42, "job"),
        request=ShapeRequest(Isolation.SHARED, 10 * GiB, 300, len(slices) or 1),
        slices=slices,
        created_at=1_700_000_000.0,
        ttl_seconds=30,
        liveness_lease=77,
    )


def piece(node: str, uuid: str, memory: int = 10 * GiB, compute: int = 300) -> SliceRecord:
    return SliceRecord(node, uuid, 0, "h100-80gb", Isolation.SHARED, memory, compute)


GANG = record(piece("n2", "GPU-b1"), piece("n1", "GPU-a1", 20 * GiB, 500), piece("n2", "GPU-b2"), piece("n3", "GPU-c1"))


def envs(msg: types_pb2.Lease) -> dict[str, dict[str, str]]:
    return {entry.node: dict(entry.env) for entry in msg.node_environments}


def test_one_environment_per_node_with_that_nodes_gpus_and_endpoint() -> None:
    msg = convert.lease(GANG, node="n1", endpoint=LOCAL, endpoints=ENDPOINTS)
    assert [entry.node for entry in msg.node_environments] == ["n1", "n2", "n3"]
    by_node = envs(msg)
    assert by_node["n1"]["CUDA_VISIBLE_DEVICES"] == "GPU-a1"
    assert by_node["n2"]["CUDA_VISIBLE_DEVICES"] == "GPU-b1,GPU-b2"
    assert by_node["n3"]["CUDA_VISIBLE_DEVICES"] == "GPU-c1"
    assert by_node["n1"]["VGPU_ENDPOINT"] == LOCAL  # the answering daemon's own endpoint wins
    assert by_node["n2"]["VGPU_ENDPOINT"] == "unix:///run/vgpu/n2.sock"
    assert by_node["n1"]["VGPU_MEMORY_LIMIT"] == str(20 * GiB)
    assert by_node["n2"]["VGPU_COMPUTE_MILLI"] == "300"
    assert {env["VGPU_LEASE_ID"] for env in by_node.values()} == {GANG.id}
    assert dict(msg.env) == by_node["n1"]


def test_env_is_the_first_node_when_the_answering_daemon_holds_no_slice() -> None:
    msg = convert.lease(GANG, node="n9", endpoint="unix:///run/vgpu/n9.sock", endpoints=ENDPOINTS)
    assert dict(msg.env) == envs(msg)["n1"]
    assert msg.env["CUDA_VISIBLE_DEVICES"] == "GPU-a1"
    assert msg.env["VGPU_ENDPOINT"] == "unix:///listed/n1.sock"  # n1's own, not the answering daemon's


def test_env_of_the_answering_node_when_it_holds_slices() -> None:
    msg = convert.lease(GANG, node="n2", endpoint="unix:///run/vgpu/n2-local.sock", endpoints=ENDPOINTS)
    assert msg.env["CUDA_VISIBLE_DEVICES"] == "GPU-b1,GPU-b2"
    assert msg.env["VGPU_ENDPOINT"] == "unix:///run/vgpu/n2-local.sock"


def test_unknown_endpoints_are_left_empty_so_clients_use_the_default_socket() -> None:
    msg = convert.lease(GANG, node="n1", endpoint=LOCAL)
    assert envs(msg)["n2"]["VGPU_ENDPOINT"] == ""
    assert envs(msg)["n1"]["VGPU_ENDPOINT"] == LOCAL


def test_token_only_in_the_acquire_answer() -> None:
    listed = convert.lease(GANG, node="n1", endpoint=LOCAL, endpoints=ENDPOINTS)
    assert listed.token == ""
    assert "VGPU_LEASE" not in listed.env
    assert all("VGPU_LEASE" not in env for env in envs(listed).values())
    answer = convert.lease(GANG, node="n1", endpoint=LOCAL, token=TOKEN, endpoints=ENDPOINTS)
    assert answer.token == TOKEN
    assert answer.env["VGPU_LEASE"] == TOKEN
    assert {env["VGPU_LEASE"] for env in envs(answer).values()} == {TOKEN}


def test_a_lease_without_slices_gets_the_answering_nodes_env_and_no_node_environments() -> None:
    msg = convert.lease(record(), node="n1", endpoint=LOCAL)
    assert list(msg.node_environments) == []
    assert msg.env["CUDA_VISIBLE_DEVICES"] == ""
    assert msg.env["VGPU_ENDPOINT"] == LOCAL
    assert "VGPU_MEMORY_LIMIT" not in msg.env


def test_an_ended_lease_has_no_environments() -> None:
    ended = dataclasses.replace(GANG, state=LeaseState.RELEASED, ended_at=1_700_000_100.0)
    msg = convert.lease(ended, node="n1", endpoint=LOCAL, token=TOKEN, endpoints=ENDPOINTS)
    assert dict(msg.env) == {}
    assert list(msg.node_environments) == []
    assert msg.ended_at.seconds == 1_700_000_100
    assert [s.node for s in msg.slices] == ["n2", "n1", "n2", "n3"]


def test_the_request_shows_how_the_lease_was_to_be_placed() -> None:
    spread = convert.lease(
        dataclasses.replace(GANG, any_node=True, gang=True), node="n1", endpoint=LOCAL, endpoints=ENDPOINTS
    )
    assert (spread.request.node, spread.request.any_node, spread.request.gang) == ("", True, True)
    named = convert.lease(dataclasses.replace(GANG, target_node="n2"), node="n1", endpoint=LOCAL, endpoints=ENDPOINTS)
    assert (named.request.node, named.request.any_node, named.request.gang) == ("n2", False, False)

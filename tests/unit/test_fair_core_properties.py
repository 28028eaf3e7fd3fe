"""Property tests of the fair-sharing core: queue_order.decide / serving_order and reclaim.plan.

Random small pools (1-3 nodes x 1-4 H100-like GPUs) carry random running leases (shared slices, whole GPUs,
elastic ones, several priorities, preemptible or not, past their minimum runtime or not, some already
preempting); random projects have quotas (deserved, over-quota weight, limit) and random queues wait.
Everything here is pure: state in, decisions out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgpu._private.units import MILLI_PER_GPU
from vgpud._private.core.fair_share import Capacity
from vgpud._private.core.model import Claim, GpuRecord, GpuState, Isolation, ShapeRequest
from vgpud._private.core.placement import GpuView, Placement
from vgpud._private.core.projects import Quota, Usage, default_quota
from vgpud._private.core.queue_order import (
    Admit,
    Decision,
    Fairness,
    Hold,
    Waiting,
    asked,
    decide,
    place_request,
    placed_use,
    serving_order,
)
from vgpud._private.core.reclaim import MAX_PLANS_PER_PASS, Action, Preempt, Resize, Running, plan

GiB = 1024**3
GPU_MEMORY = 80 * GiB
PROJECTS = ("a", "b", "c")
PRIORITIES = (0, 100, 200)
NOW = 1000.0

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------------------------------------
# The pool model the tests keep: GPU records, claims per GPU, running leases, quotas.


def record(node: str, index: int) -> GpuRecord:
    return GpuRecord(
        uuid=f"GPU-{node}-{index}",
        node=node,
        index=index,
        model="h100-80gb",
        name="H100",
        memory_bytes=GPU_MEMORY,
        sm_count=132,
        mig_capable=False,
        mig_enabled=False,
        backend="sim",
    )


@dataclass
class Pool:
    """A mutable pool: the tests apply decisions and actions to it."""

    records: dict[str, list[GpuRecord]]
    claims: dict[str, list[Claim]]
    """By GPU uuid."""
    running: dict[str, Running]
    quotas: dict[str, Quota]
    started: dict[str, float] = field(default_factory=dict)
    """Grant time of leases admitted during a simulation (their runnable_for grows with the clock)."""

    @property
    def gpu_count(self) -> int:
        return sum(len(gpus) for gpus in self.records.values())

    def views(self) -> dict[str, list[GpuView]]:
        return {
            node: [GpuView(r, GpuState(claims=tuple(self.claims[r.uuid]))) for r in gpus]
            for node, gpus in self.records.items()
        }

    def used(self) -> dict[str, Usage]:
        """What each project holds (preempting leases included, as usage_by_project counts them)."""
        out: dict[str, Usage] = {}
        for lease in self.running.values():
            out[lease.project] = out.get(lease.project, Usage()) + lease.use
        return out

    def capacity(self) -> Capacity:
        return Capacity(MILLI_PER_GPU * self.gpu_count, GPU_MEMORY * self.gpu_count)

    def fairness(self, now: float = NOW) -> Fairness:
        return Fairness(self.quotas, self.used(), self.capacity(), now)

    def running_at(self, now: float) -> list[Running]:
        return [
            replace(r, runnable_for=now - self.started[r.lease_id]) if r.lease_id in self.started else r
            for r in self.running.values()
        ]

    def claims_of(self, lease_id: str) -> list[Claim]:
        return [c for claims in self.claims.values() for c in claims if c.lease_id == lease_id]


def quota_of(quotas: Mapping[str, Quota], project: str) -> Quota:
    return quotas.get(project) or default_quota(project)


def apply_placement(claims: dict[str, list[Claim]], placement: Placement) -> None:
    for view, claim in placement.assignments:
        claims[view.record.uuid].append(claim)


def apply_actions(pool: Pool, actions: Iterable[Action]) -> None:
    """Shrinks take effect at once; preemptions free their capacity at once (the lease is gone)."""
    for action in actions:
        if isinstance(action, Resize):
            lease = pool.running[action.lease_id]
            freed = 0
            for uuid, claims in pool.claims.items():
                for i, c in enumerate(claims):
                    if c.lease_id == action.lease_id and c.isolation is Isolation.SHARED:
                        smaller = min(c.compute_milli, action.compute_milli)
                        freed += c.compute_milli - smaller
                        claims[i] = replace(c, compute_milli=smaller)
                pool.claims[uuid] = claims
            pool.running[action.lease_id] = replace(lease, use=lease.use - Usage(freed, 0), min_compute=0)
        else:
            for uuid, claims in pool.claims.items():
                pool.claims[uuid] = [c for c in claims if c.lease_id != action.lease_id]
            pool.running.pop(action.lease_id, None)


def views_after(
    pool: Pool, running: Sequence[Running], actions: Iterable[Action], *, shrink_all_for: str | None = None
) -> dict[str, list[GpuView]]:
    """The pool's views with preempting leases gone and `actions` applied (or every elastic lease at its minimum)."""
    preempting = {r.lease_id for r in running if r.preempting}
    gone = preempting | {a.lease_id for a in actions if isinstance(a, Preempt)}
    shrink = {a.lease_id: a.compute_milli for a in actions if isinstance(a, Resize)}
    if shrink_all_for is not None:
        shrink = {
            r.lease_id: r.min_compute
            for r in running
            if r.min_compute and r.lease_id not in preempting and r.lease_id != shrink_all_for
        }
    out: dict[str, list[GpuView]] = {}
    for node, gpus in pool.records.items():
        out[node] = []
        for r in gpus:
            claims = tuple(
                replace(c, compute_milli=min(c.compute_milli, shrink[c.lease_id]))
                if c.lease_id in shrink and c.isolation is Isolation.SHARED
                else c
                for c in pool.claims[r.uuid]
                if c.lease_id not in gone
            )
            out[node].append(GpuView(r, GpuState(claims=claims)))
    return out


def fits(entry: Waiting, views: Mapping[str, Sequence[GpuView]]) -> bool:
    candidates = {n: views[n] for n in ([entry.target_node] if entry.target_node else sorted(views))}
    return isinstance(place_request(entry.request, candidates, entry.lease_id, span=entry.span), Placement)


# ---------------------------------------------------------------------------------------------------------------
# Strategies.

memories = st.sampled_from([5 * GiB, 10 * GiB, 20 * GiB, 40 * GiB, 80 * GiB])
computes = st.integers(1, 20).map(lambda k: 50 * k)
ages = st.sampled_from([0.0, 10.0, 30.0, 59.0, 61.0, 300.0, NOW])
"""How long a request has waited: younger than the backfill bound (60 s) lets later ones backfill."""


@st.composite
def quotas(draw: st.DrawFn) -> dict[str, Quota]:
    out = {}
    for project in PROJECTS:
        deserved = draw(st.integers(0, 16)) * 250
        weight = draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]))
        limit = draw(st.sampled_from([0, 0, 1])) * max(250, deserved + 250 * draw(st.integers(0, 8)))
        out[project] = Quota(project, deserved_milli=deserved, over_quota_weight=weight, limit_milli=limit)
    return out  # the "default" project has no quota record: deserved 0, weight 1, no limit


@dataclass(frozen=True)
class LeaseSpec:
    project: str
    priority: int
    preemptible: bool
    whole: bool
    count: int
    memory: int
    compute: int
    min_compute: int
    min_runtime_s: float
    runnable_for: float
    progress_at: float
    idle: bool
    preempting: bool


@st.composite
def lease_specs(draw: st.DrawFn, projects: Sequence[str] = (*PROJECTS, "default")) -> LeaseSpec:
    whole = draw(st.booleans())
    compute = 1000 if whole else draw(computes)
    elastic = not whole and compute > 50 and draw(st.booleans())
    return LeaseSpec(
        project=draw(st.sampled_from(projects)),
        priority=draw(st.sampled_from(PRIORITIES)),
        preemptible=draw(st.booleans()),
        whole=whole,
        count=draw(st.integers(1, 2)),
        memory=GPU_MEMORY if whole else draw(memories),
        compute=compute,
        min_compute=draw(st.integers(1, compute // 50 - 1)) * 50 if elastic else 0,
        min_runtime_s=draw(st.sampled_from([0.0, 60.0])),
        runnable_for=draw(st.sampled_from([0.0, 30.0, 120.0])),
        progress_at=float(draw(st.integers(0, int(NOW)))),
        idle=draw(st.booleans()),
        preempting=draw(st.integers(0, 4)) == 0,
    )


def room(claims: Sequence[Claim], spec: LeaseSpec) -> bool:
    if spec.whole:
        return not claims
    if any(c.isolation is Isolation.WHOLE for c in claims):
        return False
    memory = sum(c.memory_bytes for c in claims) + spec.memory
    compute = sum(c.compute_milli for c in claims) + spec.compute
    return memory <= GPU_MEMORY and compute <= MILLI_PER_GPU


@st.composite
def pools(draw: st.DrawFn, max_leases: int = 8) -> Pool:
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    records = {f"n{i}": [record(f"n{i}", j) for j in range(size)] for i, size in enumerate(sizes)}
    flat = [r for gpus in records.values() for r in gpus]
    claims: dict[str, list[Claim]] = {r.uuid: [] for r in flat}
    running: dict[str, Running] = {}
    for i, spec in enumerate(draw(st.lists(lease_specs(), max_size=max_leases))):
        count = min(spec.count, len(flat))
        where = draw(st.lists(st.sampled_from(range(len(flat))), min_size=count, max_size=count, unique=True))
        if not all(room(claims[flat[k].uuid], spec) for k in where):
            continue
        lease_id = f"r{i}"
        isolation = Isolation.WHOLE if spec.whole else Isolation.SHARED
        for k in where:
            claims[flat[k].uuid].append(Claim(lease_id, spec.memory, spec.compute, isolation))
        running[lease_id] = Running(
            lease_id,
            spec.project,
            spec.priority,
            spec.preemptible,
            Usage(spec.compute * count, spec.memory * count),
            progress_at=spec.progress_at,
            runnable_for=spec.runnable_for,
            min_runtime_s=spec.min_runtime_s,
            idle=spec.idle,
            preempting=spec.preempting,
            min_compute=spec.min_compute,
        )
    return Pool(records, claims, running, draw(quotas()))


@st.composite
def requests(draw: st.DrawFn, max_count: int = 3) -> ShapeRequest:
    count = draw(st.integers(1, max_count))
    count_max = draw(st.sampled_from([0, 0, count + 1]))
    if draw(st.booleans()):
        return ShapeRequest(Isolation.WHOLE, 0, 1000, count, count_max=count_max)
    compute = draw(computes)
    compute_max = draw(st.sampled_from([0, 0, min(1000, compute + 250)]))
    return ShapeRequest(
        Isolation.SHARED, draw(memories), compute, count, compute_milli_max=compute_max, count_max=count_max
    )


@st.composite
def queues(draw: st.DrawFn, nodes: Sequence[str], max_size: int = 6, min_size: int = 0) -> list[Waiting]:
    out = []
    for i in range(draw(st.integers(min_size, max_size))):
        request = draw(requests())
        target = draw(st.sampled_from(["", "", "", *nodes]))
        out.append(
            Waiting(
                f"q{i}",
                request,
                target,
                span=request.count > 1 and not target and draw(st.booleans()),
                wait=draw(st.integers(0, 4)) > 0,
                project=draw(st.sampled_from((*PROJECTS, "default"))),
                priority=draw(st.sampled_from(PRIORITIES)),
                since=NOW - draw(ages),
                in_quota_only=draw(st.integers(0, 3)) == 0,
            )
        )
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Pool, list[Waiting]]:
    pool = draw(pools())
    return pool, draw(queues(sorted(pool.records)))


@st.composite
def full_pools(draw: st.DrawFn, *, all_victims: bool) -> Pool:
    """Every GPU held by projects b, c and default, which borrow (b may deserve some); a deserves some and waits.

    With `all_victims`, every lease is preemptible and past its minimum runtime, and nobody but a deserves any.
    """
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    records = {f"n{i}": [record(f"n{i}", j) for j in range(size)] for i, size in enumerate(sizes)}
    claims: dict[str, list[Claim]] = {}
    running: dict[str, Running] = {}
    for gpus in records.values():
        for r in gpus:
            claims[r.uuid] = []
            pieces = [1000] if draw(st.booleans()) else draw(st.sampled_from([[500, 500], [250, 750], [400, 300, 300]]))
            for compute in pieces:
                lease_id = f"r{len(running)}"
                whole = pieces == [1000] and draw(st.booleans())
                memory = GPU_MEMORY if whole else draw(st.sampled_from([10 * GiB, 20 * GiB]))
                isolation = Isolation.WHOLE if whole else Isolation.SHARED
                claims[r.uuid].append(Claim(lease_id, memory, compute, isolation))
                elastic = not whole and compute > 250 and draw(st.booleans())
                running[lease_id] = Running(
                    lease_id,
                    draw(st.sampled_from(["b", "c", "default"])),
                    draw(st.sampled_from(PRIORITIES)),
                    preemptible=all_victims or draw(st.integers(0, 3)) > 0,
                    use=Usage(compute, memory),
                    progress_at=float(draw(st.integers(0, int(NOW)))),
                    runnable_for=draw(st.sampled_from([60.0, 600.0] if all_victims else [0.0, 60.0, 600.0])),
                    min_runtime_s=60.0,
                    idle=draw(st.booleans()),
                    min_compute=250 if elastic else 0,
                )
    weights = st.sampled_from([0.5, 1.0, 3.0])
    quotas = {
        "a": Quota("a", deserved_milli=draw(st.integers(1, 8)) * 250, over_quota_weight=draw(weights)),
        "b": Quota(
            "b", deserved_milli=0 if all_victims else draw(st.integers(0, 8)) * 250, over_quota_weight=draw(weights)
        ),
        "c": Quota("c", over_quota_weight=draw(weights), limit_milli=draw(st.sampled_from([0, 4000]))),
    }
    return Pool(records, claims, running, quotas)


@st.composite
def contended_scenarios(draw: st.DrawFn) -> tuple[Pool, list[Waiting]]:
    """A full pool and a queue where project a asks for more than it deserves, in several requests."""
    pool = draw(full_pools(all_victims=False))
    queue = draw(queues(sorted(pool.records), max_size=5))
    mine = [
        replace(e, lease_id=f"a{i}", project="a", wait=True)
        for i, e in enumerate(draw(queues(sorted(pool.records), max_size=4)))
    ]
    return pool, draw(st.permutations([*queue, *mine]))


def admits(decisions: Iterable[Decision]) -> list[Admit]:
    return [d for d in decisions if isinstance(d, Admit)]


# ---------------------------------------------------------------------------------------------------------------
# 1. No over-commit.


def assert_not_overcommitted(claims: Mapping[str, Sequence[Claim]]) -> None:
    for uuid, on_gpu in claims.items():
        assert sum(c.memory_bytes for c in on_gpu) <= GPU_MEMORY, uuid
        assert sum(c.compute_milli for c in on_gpu) <= MILLI_PER_GPU, uuid
        if any(c.isolation is Isolation.WHOLE for c in on_gpu):
            assert len(on_gpu) == 1, f"a whole-GPU claim shares {uuid}: {on_gpu}"


@PROPERTY
@given(scenarios(), st.booleans())
def test_admits_never_overcommit_a_gpu(scenario: tuple[Pool, list[Waiting]], fair: bool) -> None:
    pool, queue = scenario
    decisions = decide(queue, pool.views(), fairness=pool.fairness() if fair else None)
    assert sorted(d.lease_id for d in decisions) == sorted(e.lease_id for e in queue)
    claims = {uuid: list(c) for uuid, c in pool.claims.items()}
    for admit in admits(decisions):
        apply_placement(claims, admit.placement)
    assert_not_overcommitted(claims)


# ---------------------------------------------------------------------------------------------------------------
# 2. Gang atomicity.


@PROPERTY
@given(scenarios(), st.booleans())
def test_an_admit_places_the_whole_gang_on_distinct_gpus(scenario: tuple[Pool, list[Waiting]], fair: bool) -> None:
    pool, queue = scenario
    by_id = {e.lease_id: e for e in queue}
    for admit in admits(decide(queue, pool.views(), fairness=pool.fairness() if fair else None)):
        entry = by_id[admit.lease_id]
        request = entry.request
        assignments = admit.placement.assignments
        counts = {request.count, max(request.count, request.count_max)}
        assert len(assignments) in counts
        uuids = [view.record.uuid for view, _ in assignments]
        assert len(set(uuids)) == len(uuids)
        nodes = {view.record.node for view, _ in assignments}
        if not entry.span:
            assert len(nodes) == 1, "only a spanning gang spreads over nodes"
        if entry.target_node:
            assert nodes == {entry.target_node}
        for _, claim in assignments:
            assert claim.lease_id == entry.lease_id
            if request.isolation is Isolation.WHOLE:
                assert claim.isolation is Isolation.WHOLE
            else:
                assert claim.memory_bytes == request.memory_bytes
                assert (
                    request.compute_milli
                    <= claim.compute_milli
                    <= max(request.compute_milli_max, request.compute_milli)
                )


# ---------------------------------------------------------------------------------------------------------------
# 3. Limits and in-quota-only classes.


@PROPERTY
@given(scenarios())
def test_admits_respect_limits_and_in_quota_only_classes(scenario: tuple[Pool, list[Waiting]]) -> None:
    pool, queue = scenario
    fairness = pool.fairness()
    by_id = {e.lease_id: e for e in queue}
    held = dict(fairness.used)
    for admit in admits(decide(queue, pool.views(), fairness=fairness)):  # decisions come in serving order
        entry = by_id[admit.lease_id]
        quota = quota_of(pool.quotas, entry.project)
        held[entry.project] = held.get(entry.project, Usage()) + placed_use(admit.placement)
        if quota.limit_milli:
            assert held[entry.project].milli <= quota.limit_milli, (entry, quota)
        if entry.in_quota_only:
            assert held[entry.project].within(quota), (entry, quota)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 4),
    st.integers(1, 3).map(lambda k: 250 * k),
    st.integers(1, 3).map(lambda k: 250 * k),
    st.booleans(),
    st.booleans(),
)
def test_an_elastic_request_falls_back_to_its_minimum_under_a_quota(
    gpus: int, compute: int, extra: int, by_count: bool, in_quota_only: bool
) -> None:
    """Growth is optional: when the grown placement would pass the limit or deserved quota, the minimum is granted."""
    pool = Pool({"n0": [record("n0", i) for i in range(gpus)]}, {f"GPU-n0-{i}": [] for i in range(gpus)}, {}, {})
    if by_count:
        request = ShapeRequest(Isolation.WHOLE, 0, 1000, 1, count_max=gpus)
        minimum = 1000
    else:
        request = ShapeRequest(Isolation.SHARED, 10 * GiB, compute, 1, compute_milli_max=min(1000, compute + extra))
        minimum = compute
    if in_quota_only:
        pool.quotas["a"] = Quota("a", deserved_milli=minimum)
    else:
        pool.quotas["a"] = Quota("a", limit_milli=minimum)
    entry = Waiting("q", request, "", span=False, wait=True, project="a", in_quota_only=in_quota_only)
    [decision] = decide([entry], pool.views(), fairness=pool.fairness())
    assert isinstance(decision, Admit), decision
    assert placed_use(decision.placement).milli == minimum
    free = replace(entry, in_quota_only=False)
    [grown] = decide([free], pool.views(), fairness=replace(pool.fairness(), quotas={}))
    assert isinstance(grown, Admit)
    assert placed_use(grown.placement).milli > minimum, "without a quota it grows"


# ---------------------------------------------------------------------------------------------------------------
# Reclaim: 4. invariant 3, 5. shrink before preempt, 6. every preemption is needed.


def reclaim_case(pool: Pool, queue: Sequence[Waiting]) -> tuple[list[Waiting], list[Running], list[Action]]:
    """Plan for the queue in serving order, as the leader's pass would (all waiting entries as held)."""
    held = [e for e in serving_order(queue, pool.fairness()) if e.wait]
    running = list(pool.running.values())
    actions = plan(held, pool.views(), running, pool.quotas, pool.used())
    return held, running, actions


@st.composite
def reclaim_scenarios(draw: st.DrawFn) -> tuple[Pool, list[Waiting]]:
    if draw(st.booleans()):
        return draw(contended_scenarios())
    pool = draw(pools(max_leases=10))
    return pool, draw(queues(sorted(pool.records), max_size=4))


@PROPERTY
@given(reclaim_scenarios())
def test_reclaim_never_preempts_protected_leases_nor_deserved_capacity(scenario: tuple[Pool, list[Waiting]]) -> None:
    pool, queue = scenario
    held, running, actions = reclaim_case(pool, queue)
    by_id = {r.lease_id: r for r in running}
    entries = {e.lease_id: e for e in held}
    used = pool.used()
    preempts = [a for a in actions if isinstance(a, Preempt)]
    assert len({p.lease_id for p in preempts}) == len(preempts), "a lease is preempted once"
    cross: dict[str, Usage] = {}
    own_lost: dict[str, Usage] = {}
    for p in preempts:
        victim, entry = by_id[p.lease_id], entries[p.for_lease]
        assert victim.preemptible
        assert not victim.preempting
        assert victim.runnable_for >= victim.min_runtime_s
        own_lost[victim.project] = own_lost.get(victim.project, Usage()) + victim.use
        if victim.project == entry.project:
            assert victim.priority < entry.priority, "within a project only a higher class preempts"
        else:
            cross[victim.project] = cross.get(victim.project, Usage()) + victim.use
    for s in (a for a in actions if isinstance(a, Resize)):
        assert 0 < by_id[s.lease_id].min_compute == s.compute_milli
    held_now = dict(used)
    for r in running:
        if r.preempting:
            held_now[r.project] = held_now[r.project] - r.use
    # Invariant 3: another project only takes what the victim's project borrowed beyond its deserved quota.
    for project, taken in cross.items():
        left = held_now.get(project, Usage()) - taken
        assert left.milli >= quota_of(pool.quotas, project).deserved_milli, (project, left)
    # ... and only a project that stays within its own deserved quota reclaims (its planned requests counted).
    reclaimed_for: dict[str, Usage] = {}
    for entry in held:
        mine = [p for p in preempts if p.for_lease == entry.lease_id]
        if not mine:
            continue
        reclaimed_for[entry.project] = reclaimed_for.get(entry.project, Usage()) + asked(entry.request)
        if all(by_id[p.lease_id].project == entry.project for p in mine):
            continue
        quota = quota_of(pool.quotas, entry.project)
        after = held_now.get(entry.project, Usage()) - own_lost.get(entry.project, Usage())
        after += reclaimed_for[entry.project]
        assert quota.deserved_milli > 0
        assert after.within(quota), (entry, after, quota)


def borrowed(layout: Mapping[str, int], idle: Iterable[str] = (), quotas: Iterable[Quota] = ()) -> Pool:
    """Every GPU of `layout` (node -> GPUs) held whole by project b, lease b<k> on the k-th GPU."""
    records = {node: [record(node, i) for i in range(n)] for node, n in layout.items()}
    flat = [r for gpus in records.values() for r in gpus]
    claims = {r.uuid: [Claim(f"b{k}", GPU_MEMORY, 1000, Isolation.WHOLE)] for k, r in enumerate(flat)}
    running = {
        f"b{k}": Running(f"b{k}", "b", 0, True, Usage(1000, GPU_MEMORY), 0.0, 600.0, 60.0, idle=f"b{k}" in idle)
        for k in range(len(flat))
    }
    return Pool(records, claims, running, {q.project: q for q in quotas})


def preempted(pool: Pool, held: Sequence[Waiting]) -> list[tuple[str, str]]:
    actions = plan(held, pool.views(), list(pool.running.values()), pool.quotas, pool.used())
    return [(a.lease_id, a.for_lease) for a in actions if isinstance(a, Preempt)]


def test_reclaim_counts_the_requests_it_already_planned_for_toward_the_quota() -> None:
    """a deserves one GPU: two waiting one-GPU requests of a reclaim one GPU, not two."""
    pool = borrowed({"n0": 2}, quotas=[Quota("a", deserved_milli=1000)])
    held = [Waiting(f"q{i}", ShapeRequest(Isolation.WHOLE, 0, 1000), "", False, True, project="a") for i in (1, 2)]
    assert preempted(pool, held) == [("b0", "q1")]


def test_reclaim_looks_for_victims_node_by_node() -> None:
    """b deserves one GPU and holds three. a's gang of two fits only n0: b's idle lease on n1 must not use up
    what b may lose (nor be preempted for nothing); a targeted request likewise only weighs its node's leases.
    """
    quotas = [Quota("a", deserved_milli=2000), Quota("b", deserved_milli=1000)]
    pool = borrowed({"n0": 2, "n1": 1}, idle=["b2"], quotas=quotas)
    gang = Waiting("q", ShapeRequest(Isolation.WHOLE, 0, 1000, 2), "", False, True, project="a")
    assert preempted(pool, [gang]) == [("b0", "q"), ("b1", "q")]
    pool = borrowed({"n0": 1, "n1": 1}, idle=["b1"], quotas=quotas)
    targeted = Waiting("q", ShapeRequest(Isolation.WHOLE, 0, 1000), "n0", False, True, project="a")
    assert preempted(pool, [targeted]) == [("b0", "q")]


def first_planned(held: Sequence[Waiting], pool: Pool) -> Waiting | None:
    """The first held entry plan() works on (it skips fail-fast ones and unknown target nodes)."""
    for entry in held[:MAX_PLANS_PER_PASS]:
        if entry.wait and (not entry.target_node or entry.target_node in pool.records):
            return entry
    return None


@PROPERTY
@given(reclaim_scenarios())
def test_shrinking_elastic_leases_comes_before_any_preemption(scenario: tuple[Pool, list[Waiting]]) -> None:
    pool, queue = scenario
    held, running, actions = reclaim_case(pool, queue)
    entry = first_planned(held, pool)
    if entry is None:
        assert actions == []
        return
    if fits(entry, views_after(pool, running, [])):
        assert not [a for a in actions if isinstance(a, Preempt) and a.for_lease == entry.lease_id]
        if len(held) == 1:
            assert actions == [], "it fits already: nothing to do"
    elif fits(entry, views_after(pool, running, [], shrink_all_for=entry.lease_id)):
        assert not [a for a in actions if isinstance(a, Preempt) and a.for_lease == entry.lease_id], actions
        assert any(isinstance(a, Resize) for a in actions)


@PROPERTY
@given(reclaim_scenarios())
def test_every_preemption_lets_its_request_fit(scenario: tuple[Pool, list[Waiting]]) -> None:
    """After all shrinks and preemptions, each request something was preempted for fits.

    Placement is monotone in free capacity (shared and whole slices only), so the request fits on the pool with
    every action applied and without the other held requests' reservations, whatever order they are placed in.
    """
    pool, queue = scenario
    held, running, actions = reclaim_case(pool, queue)
    freed = views_after(pool, running, actions)
    for entry in held:
        if any(isinstance(a, Preempt) and a.for_lease == entry.lease_id for a in actions):
            assert fits(entry, freed), entry


@PROPERTY
@given(st.one_of(pools(max_leases=10), full_pools(all_victims=False), full_pools(all_victims=True)), st.data())
def test_no_preemption_of_a_single_plan_is_superfluous(pool: Pool, data: st.DataObject) -> None:
    """With one held request: every preempted lease is needed (all elastic leases at their minimum, the rest kept)."""
    [entry] = data.draw(queues(sorted(pool.records), max_size=1, min_size=1))
    entry = replace(entry, wait=True, project=data.draw(st.sampled_from(["a", "a", "a", "b", "default"])))
    running = list(pool.running.values())
    actions = plan([entry], pool.views(), running, pool.quotas, pool.used())
    preempts = [a for a in actions if isinstance(a, Preempt)]
    if not preempts:
        return
    shrunk = views_after(pool, running, [], shrink_all_for=entry.lease_id)
    everything = views_after(pool, running, actions)
    assert fits(entry, everything)
    for p in preempts:
        others = [q for q in preempts if q is not p]
        gone = {q.lease_id for q in others}
        views = {
            n: [
                replace(v, state=GpuState(claims=tuple(c for c in v.state.claims if c.lease_id not in gone)))
                for v in vs
            ]
            for n, vs in shrunk.items()
        }
        assert not fits(entry, views), f"{p.lease_id} need not be preempted"


# ---------------------------------------------------------------------------------------------------------------
# 7. No starvation below the deserved quota.


@st.composite
def starvation_cases(draw: st.DrawFn) -> tuple[Pool, Waiting, list[Waiting]]:
    """Project a (below its deserved quota) waits; b, c and default borrow every GPU with preemptible leases.

    When a node X can hold a's request alone, b and c may deserve up to what they hold outside X: all they hold
    on X is borrowed, so preempting it is allowed (a request spanning nodes meets b and c deserving nothing).
    """
    pool = draw(full_pools(all_victims=True))
    records = pool.records
    sizes = [len(gpus) for gpus in records.values()]
    largest = max(sizes)
    span = draw(st.booleans()) and len(sizes) > 1
    request = draw(requests(max_count=sum(sizes) if span else largest))
    request = replace(request, count_max=0) if request.count_max > (sum(sizes) if span else largest) else request
    target = (
        "" if span else draw(st.sampled_from(["", *[n for n, gpus in records.items() if len(gpus) >= request.count]]))
    )
    able = [n for n, gpus in records.items() if len(gpus) >= request.count]
    x = target or (draw(st.sampled_from(able)) if able else "")
    on_x = {c.lease_id for r in records.get(x, []) for c in pool.claims[r.uuid]}
    for project in ("b", "c"):
        outside = sum(r.use.milli for r in pool.running.values() if r.project == project and r.lease_id not in on_x)
        deserved_milli = draw(st.integers(0, outside // 250)) * 250 if x else 0
        pool.quotas[project] = replace(pool.quotas[project], deserved_milli=deserved_milli)
    deserved = asked(request).milli + draw(st.sampled_from([0, 0, 250, 1000, 2000]))
    limit = draw(st.sampled_from([0, deserved, deserved + 1000]))
    pool.quotas["a"] = replace(pool.quotas["a"], deserved_milli=deserved, limit_milli=limit)
    entry = Waiting(
        "mine",
        request,
        target,
        span=span and request.count > 1,
        wait=True,
        project="a",
        priority=draw(st.sampled_from(PRIORITIES)),
        since=float(draw(st.integers(0, int(NOW)))),
        in_quota_only=draw(st.booleans()),
    )
    others = [  # priority 0: none preempts its own project's leases
        replace(e, project=draw(st.sampled_from(["b", "c", "default"])), priority=0)
        for e in draw(queues(sorted(records), max_size=5))
    ]
    return pool, entry, others


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(starvation_cases())
def test_a_project_below_its_deserved_quota_is_not_starved(case: tuple[Pool, Waiting, list[Waiting]]) -> None:
    """Rounds of decide + plan (as the leader's pass runs them; preemptions free at once) admit it soon."""
    pool, mine, others = case
    queue = [mine, *others]
    now = NOW
    for _ in range(4):
        fairness = pool.fairness(now)
        nodes = pool.views()
        decisions = decide(queue, nodes, fairness=fairness)
        by_id = {e.lease_id: e for e in queue}
        for admit in admits(decisions):
            entry = by_id[admit.lease_id]
            if entry is mine:
                return
            apply_placement(pool.claims, admit.placement)
            pool.running[entry.lease_id] = Running(
                entry.lease_id,
                entry.project,
                entry.priority,
                preemptible=True,
                use=placed_use(admit.placement),
                progress_at=now,
                runnable_for=0.0,
                min_runtime_s=60.0,
            )
            pool.started[entry.lease_id] = now
        mine_decision = next(d for d in decisions if d.lease_id == mine.lease_id)
        assert isinstance(mine_decision, Hold), mine_decision
        assert not mine_decision.quota, mine_decision
        done = {d.lease_id for d in decisions if not isinstance(d, Hold)}
        queue = [e for e in queue if e.lease_id not in done]
        held = [by_id[d.lease_id] for d in decisions if isinstance(d, Hold) and not d.quota]
        apply_actions(pool, plan(held, nodes, pool.running_at(now), fairness.quotas, fairness.used))
        assert_not_overcommitted(pool.claims)
        now += 30.0
    raise AssertionError(f"{mine} was not admitted within 4 rounds")


# ---------------------------------------------------------------------------------------------------------------
# 8. Fair order.


@PROPERTY
@given(scenarios())
def test_projects_below_deserved_are_served_before_projects_above(scenario: tuple[Pool, list[Waiting]]) -> None:
    """A project whose every waiting request stays within its deserved quota goes before one at or past its own.

    (serving_order is static: it ranks each project by what it holds now plus its next request.)
    """
    pool, queue = scenario
    fairness = pool.fairness()
    order = serving_order(queue, fairness)
    assert sorted(e.lease_id for e in order) == sorted(e.lease_id for e in queue)
    position = {e.lease_id: i for i, e in enumerate(order)}

    def below(project: str) -> bool:
        quota = quota_of(pool.quotas, project)
        held = fairness.used.get(project, Usage())
        mine = [e for e in queue if e.project == project]
        return quota.deserved_milli > 0 and all((held + asked(e.request)).within(quota) for e in mine)

    def above(project: str) -> bool:
        return fairness.used.get(project, Usage()).milli >= quota_of(pool.quotas, project).deserved_milli

    for e in queue:
        for f in queue:
            if e.project != f.project and below(e.project) and above(f.project):
                assert position[e.lease_id] < position[f.lease_id], (e, f)
            if e.project == f.project and (e.priority, -e.since) > (f.priority, -f.since):
                assert position[e.lease_id] < position[f.lease_id], "within a project: priority, then age"

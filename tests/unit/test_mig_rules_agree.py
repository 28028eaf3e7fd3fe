"""The placement core and the simulated GPU apply the same MIG occupancy rules.

Both are written from the reference's geometry, independently; if they drift apart the scheduler would
pick placements the (simulated) hardware refuses, or leave room unused. Random create/destroy sequences
drive the sim through the backend API, and at every step `fits` must name exactly the starts the sim takes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vgpud._private.backend import BackendError, SimBackend, geometry
from vgpud._private.backend import MigInstance as HardwareInstance
from vgpud._private.core.mig_placement import MigGpu, MigInstance, fits

MODELS = ("h100-80gb", "a30-24gb", "a100-40gb")


def starts_the_sim_takes(backend: SimBackend, uuid: str, profile: geometry.MigProfile) -> tuple[int, ...]:
    """Try every allowed start; keep those the sim creates (each is destroyed again at once)."""
    owned: set[str] = set()
    taken = []
    for start in profile.allowed_starts:
        try:
            made = backend.create_mig_instance(uuid, profile.id, start)
        except BackendError:
            continue
        assert made.mig_uuid is not None
        owned.add(made.mig_uuid)
        backend.destroy_mig_instance(uuid, made.gpu_instance_id, owned=owned)
        taken.append(start)
    return tuple(taken)


@settings(max_examples=25, deadline=None)
@given(
    model_key=st.sampled_from(MODELS),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=12),
)
def test_fits_names_exactly_the_starts_the_sim_accepts(model_key: str, steps: list[tuple[bool, int, int]]) -> None:
    backend = SimBackend(f"{model_key}:1", "agree")
    try:
        model = geometry.lookup_model(model_key)
        uuid = backend.discover()[0].uuid
        backend.set_mig_mode(uuid, enabled=True)
        owned: set[str] = set()
        for create, pick, where in steps:
            live = backend.mig_instances(uuid)
            if create or not live:
                profile = model.mig_profiles[pick % len(model.mig_profiles)]
                with_room = fits(MigGpu(uuid, model, True, _placed(live)), profile)
                assert with_room == starts_the_sim_takes(backend, uuid, profile), profile.name
                if with_room:
                    made = backend.create_mig_instance(uuid, profile.id, with_room[where % len(with_room)])
                    assert made.mig_uuid is not None
                    owned.add(made.mig_uuid)
            else:
                victim = live[pick % len(live)]
                backend.destroy_mig_instance(uuid, victim.gpu_instance_id, owned=owned)
    finally:
        backend.close()


def _placed(live: list[HardwareInstance]) -> tuple[MigInstance, ...]:
    return tuple(MigInstance(i.profile_id, i.start, i.size) for i in live)

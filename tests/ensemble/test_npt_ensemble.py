"""NPT ensembles: replicas with their own Monte Carlo barostats equal their own NPT runs."""

import dataclasses

import numpy as np
import pytest

import diffmd
from diffmd import ensemble
from diffmd.data import alanine_dipeptide_explicit, water_box

# the bundled watbox216.crd box line is read as a skewed cell; its waters fill this cube
WATER_EDGE = 1.8774349
KW = dict(nonbonded="cutoff", cutoff=0.8, precision="double", pressure=1.0, barostat_frequency=2)
STEPS = 120
PRESSURES = [1.0, 1.0, 2000.0]  # [bar], one per replica


@pytest.fixture(scope="module")
def water():
    system = diffmd.load_amber(*water_box())
    return dataclasses.replace(system, box=np.eye(3) * WATER_EDGE)


@pytest.fixture(scope="module")
def npt_ensemble(water):
    ens = ensemble.prepare(water, replicas=3, temperature=[300.0, 330.0, 360.0], seed=11,
                           **dict(KW, pressure=PRESSURES))
    return ens, ensemble.simulate(ens, STEPS, report_every=40, progress=False)


def test_batched_npt_equals_separate_npt_runs(water, npt_ensemble):
    """Each member (own seed, temperature, pressure, box, acceptance counts and step size) follows the run
    of diffmd.simulate(pressure=...) with its seed: positions, boxes, volumes and barostat counts."""
    ens, res = npt_ensemble
    final = res.ensemble.carry
    assert res.volume.shape == (4, 3)
    for m, member in enumerate(ens.members):
        single = diffmd.simulate(water, STEPS, temperature=member.temperature, seed=member.seed, report_every=40,
                                 progress=False, **dict(KW, pressure=PRESSURES[m]))
        baro = single.carry.barostat
        assert int(final.barostat.total_attempts[m]) == int(baro.total_attempts) == STEPS // 2
        assert int(final.barostat.total_accepted[m]) == int(baro.total_accepted) >= 5
        np.testing.assert_array_equal(np.asarray(final.barostat.accepted[m]), np.asarray(baro.accepted))
        np.testing.assert_allclose(np.asarray(final.barostat.box[m]), np.asarray(baro.box), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(final.barostat.dv_max[m]), np.asarray(baro.dv_max), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(final.state.positions[m]), single.positions, atol=1e-10)
        np.testing.assert_allclose(res.volume[:, m], single.volume, rtol=1e-10)
        np.testing.assert_allclose(res.potential_energy[:, m], single.potential_energy, rtol=1e-9)
    # every member's box moved, each its own way
    volumes = res.volume[-1]
    assert np.all(volumes != WATER_EDGE**3) and len(np.unique(volumes)) == 3


def test_npt_needs_replicas_of_one_periodic_system(water):
    with pytest.raises(diffmd.UnsupportedError, match="replicas of one system"):
        ensemble.prepare([water, diffmd.load_amber(*alanine_dipeptide_explicit())], **KW)
    with pytest.raises(diffmd.InputError, match="pressure has 2 entries"):
        ensemble.prepare(water, replicas=3, **dict(KW, pressure=[1.0, 2.0]))
    with pytest.raises(diffmd.InputError, match="finite"):
        ensemble.prepare(water, replicas=2, **dict(KW, pressure=[1.0, float("nan")]))
    with pytest.raises(diffmd.InputError, match="thermostat"):
        ensemble.prepare(water, replicas=2, integrator="verlet", **KW)


@pytest.mark.slow  # 25-110 s on 2 cores: CI's slow stage runs it (default suite < 15 min)
def test_overflow_under_npt_is_reallocated_at_each_members_current_box(npt_ensemble):
    """From the end of the NPT run (every box moved away from the start), tables far too small are
    re-allocated at each member's barostat box and the chunk replayed: the same run as with ample tables."""
    _, res = npt_ensemble
    ample = res.ensemble
    boxes = np.asarray(ample.current_box)
    assert not np.allclose(boxes, np.asarray(ample.box))
    x = np.asarray(ample.carry.state.positions)
    tiny = ensemble.stack([ample.energy_fn.neighbor_list(x[m], boxes[m], capacity=4) for m in range(ample.size)])
    small = dataclasses.replace(ample, carry=dataclasses.replace(ample.carry, neighbors=tiny))
    a = ensemble.simulate(ample, 20, report_every=20, progress=False)
    b = ensemble.simulate(small, 20, report_every=20, progress=False)
    assert a.reallocations == 0 and b.reallocations >= 1 and int(b.ensemble.carry.neighbors.capacity) > 4
    np.testing.assert_allclose(np.asarray(b.ensemble.current_box), np.asarray(a.ensemble.current_box), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(b.ensemble.carry.state.positions),
                               np.asarray(a.ensemble.carry.state.positions), atol=1e-10)
    np.testing.assert_array_equal(np.asarray(b.ensemble.carry.barostat.total_accepted),
                                  np.asarray(a.ensemble.carry.barostat.total_accepted))

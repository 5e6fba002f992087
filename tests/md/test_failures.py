"""When a run has failed and why: the checks of ``diffmd.md`` (failures) on made-up chunk observables."""

import numpy as np
import pytest

from diffmd import InputError
from diffmd.md._failures import (LARGE_START_FORCE, POSITION_LIMIT_NM, RunFacts, advice, check_max_temperature_factor,
                              first_failure, likely_causes, model_energy_at, position_failure,
                              reference_temperature, start_facts)
from diffmd.kernels.constants import BOLTZMANN


def _kinetic(temperature_k, n_dof):
    return 0.5 * n_dof * BOLTZMANN * np.asarray(temperature_k, np.float64)


def test_first_failure_names_the_first_bad_step_and_member():
    n_dof = 51
    pot = np.full(10, -100.0)
    temps = np.full(10, 300.0)
    assert first_failure(pot, _kinetic(temps, n_dof), n_dof, 40, max_temperature_factor=5.0,
                         reference_temperature=300.0) is None
    temps[6:] = [1400.0, 1600.0, 16000.0, 20000.0]  # finite energies, hotter and hotter
    pot[8] = np.nan  # ... then NaN
    f = first_failure(pot, _kinetic(temps, n_dof), n_dof, 40, max_temperature_factor=5.0, reference_temperature=300.0)
    assert f.kind == "temperature" and f.step == 48 and f.member is None
    assert "1,600 K" in f.what and "1,500 K" in f.what and "5 x the reference 300 K" in f.what
    assert "NaN at step 49" in f.what
    # without the limit, the NaN is the failure
    f = first_failure(pot, _kinetic(temps, n_dof), n_dof, 40)
    assert f.kind == "nonfinite" and f.step == 49
    # an ensemble: (steps, members), per-member degrees of freedom and references
    t = np.full((5, 3), 300.0)
    t[3, 2] = 2500.0  # member 2 at its step 44: 2500 K > 5 x 400 K
    t[4, 1] = 1450.0  # member 1 later, and below 5 x 300 K
    dofs = np.array([51, 51, 400])
    f = first_failure(np.zeros((5, 3)), _kinetic(t, dofs), dofs, 40, max_temperature_factor=5.0,
                      reference_temperature=np.array([300.0, 300.0, 400.0]))
    assert (f.kind, f.step, f.member) == ("temperature", 44, 2)


def test_position_failure_ignores_padding_atoms():
    x = np.zeros((2, 4, 3))
    x[:, 3] = 5.0e4  # padding atoms, parked far away
    origin, radius = np.zeros((2, 3)), np.array([0.5, 0.5])
    assert position_failure(x, origin, radius, 100, n_real=[3, 3]) is None
    x[1, 1, 0] = POSITION_LIMIT_NM + 1.0
    f = position_failure(x, origin, radius, 100, n_real=[3, 3])
    assert (f.kind, f.member, f.step) == ("position", 1, 100) and "atom 1" in f.what
    assert position_failure(x[0, :3], origin[0], 0.5, 7) is None
    assert position_failure(np.full((3, 3), np.nan), origin[0], 0.5, 7).kind == "position"


def test_likely_causes_come_from_the_settings():
    causes = likely_causes(RunFacts(dt_ps=0.002, constraints="none"))
    assert len(causes) == 1 and "constraints='hbonds'" in causes[0] and "2 fs" in causes[0]
    causes = likely_causes(RunFacts(dt_ps=0.004, constraints="hbonds"))
    assert len(causes) == 1 and "hydrogen mass repartitioning" in causes[0]
    assert likely_causes(RunFacts(dt_ps=0.004, constraints="hbonds", hydrogen_mass=1.5)) == []
    assert likely_causes(RunFacts(dt_ps=0.002, constraints="hbonds")) == []
    assert likely_causes(RunFacts(dt_ps=0.004, constraints="openmm-system")) == []  # its own constraints, masses
    strained = start_facts(np.array([[0.0, 0.0, 10.0], [3.0e4, 4.0e4, 0.0]]), dt_ps=0.002, constraints="hbonds",
                           minimized=False)
    assert strained.start_max_force == pytest.approx(5.0e4) and strained.start_max_force_atom == 1
    causes = likely_causes(strained)
    assert len(causes) == 1 and "not minimized" in causes[0] and "atom 1" in causes[0]
    assert likely_causes(RunFacts(dt_ps=0.002, constraints="hbonds", minimized=True,
                                  start_max_force=2 * LARGE_START_FORCE)) == []
    # a neural model far from its training data is named first
    causes = likely_causes(RunFacts(dt_ps=0.002, constraints="hbonds"), model_energy=(-120.0, (0.9, 12.6)))
    assert len(causes) == 1 and "outside its training data" in causes[0] and "-120" in causes[0]
    assert likely_causes(None, model_energy=(5.0, (0.9, 12.6))) == []
    # nothing to blame: say what was ruled out
    text = advice(RunFacts(dt_ps=0.002, constraints="hbonds", minimized=True, start_max_force=300.0))
    assert text.startswith("None of the settings explains it") and "2 fs" in text and "minimized" in text
    assert advice(strained).startswith("Likely cause: the starting structure was not minimized")


def test_model_energy_of_a_model_or_of_a_part_of_a_sum():
    class Model:
        training_energy_range = (1.0, 2.0)

    class Sum:
        parts = (object(), Model())

    failure = first_failure(np.array([np.nan]), np.array([1.0]), 6, 0)
    assert failure.kind == "nonfinite"
    hot = first_failure(np.array([-220.0]), _kinetic([9000.0], 6), 6, 0, max_temperature_factor=5.0,
                        reference_temperature=300.0)
    assert model_energy_at(hot, Model(), 22) == (-10.0, (1.0, 2.0))
    assert model_energy_at(hot, object(), 22) is None
    assert model_energy_at(hot, Sum(), 22, evaluate=lambda i: 110.0) == (5.0, (1.0, 2.0))
    assert model_energy_at(hot, Sum(), 22, evaluate=lambda i: 33.0) is None  # within the range


def test_options():
    assert check_max_temperature_factor(None) is None and check_max_temperature_factor(3) == 3.0
    for bad in (1.0, 0.5, float("nan"), "5", True):
        with pytest.raises(InputError, match="max_temperature_factor"):
            check_max_temperature_factor(bad)
    assert reference_temperature("langevin", 300.0, 900.0) == 300.0
    assert reference_temperature("verlet", 300.0, 900.0) == 900.0
    assert reference_temperature("verlet", 300.0, 10.0) == 300.0

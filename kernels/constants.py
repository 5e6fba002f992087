"""Physical constants in diffmd's unit system (nm, ps, amu, kJ/mol, e, K).

One CODATA edition (2018), the values OpenMM uses, so energies agree with the
reference bit for bit where the formulas agree. 1 kJ/mol = 1 amu nm^2 ps^-2, so
integrators need no conversion factors.
"""

#: Coulomb constant 1/(4 pi eps0) [kJ mol^-1 nm e^-2], CODATA 2018, the unrounded value
#: OpenMM 8 uses for ONE_4PI_EPS0 (the rounded 138.935456 is off by 1.2e-8 relative).
COULOMB = 138.93545764438198
#: Boltzmann constant [kJ mol^-1 K^-1] (CODATA 2018 k_B * N_A).
BOLTZMANN = 0.008314462618
#: Avogadro constant [mol^-1].
AVOGADRO = 6.02214076e23

# io-boundary conversions (used only when reading or writing files)
#: 1 angstrom in nm.
ANGSTROM = 0.1
#: 1 kcal in kJ (thermochemical calorie).
KCAL = 4.184
#: Amber's internal charge unit: q[e] = q[prmtop] / AMBER_CHARGE_SCALE.
AMBER_CHARGE_SCALE = 18.2223
#: 1 bar * 1 nm^3 in kJ/mol (pressure-volume work).
BAR_NM3 = 0.06022140760
#: 1 eV in kJ/mol (for ASE).
EV = 96.48533212331002

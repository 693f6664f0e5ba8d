"""The named settings of evaluation: the paper's eps grids and the radius the diagnoses use."""

import numpy as np
import pytest

from tfp_advbnn.evaluation.protocols import default_eps_grid, diagnosis_eps


def test_default_eps_grids_are_the_papers():
    cifar = default_eps_grid("cifar10")
    assert len(cifar) == 15 and cifar[0] == 0.0 and cifar[-1] == pytest.approx(0.07)
    np.testing.assert_allclose(np.diff(cifar), 0.005, atol=1e-9)
    assert default_eps_grid("stl10") == cifar
    imagenet = default_eps_grid("folder")
    assert len(imagenet) == 11 and imagenet[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(np.diff(imagenet), 0.002, atol=1e-9)
    with pytest.raises(ValueError, match="mnist"):
        default_eps_grid("mnist")


def test_diagnosis_eps_is_the_middle_nonzero_radius():
    assert diagnosis_eps(default_eps_grid("cifar10")) == pytest.approx(0.035)
    assert diagnosis_eps([0.0, 0.01, 0.03]) == 0.01
    assert diagnosis_eps([0.0]) is None

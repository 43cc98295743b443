"""Sparsing-Law fits recover known parameters from synthetic data."""

import numpy as np
import pytest

from actsparse.metrics.functional.laws import fit_activation_law
from actsparse.report import plot_activation_laws


def test_relu_law_recovers_its_parameters():
    d = np.geomspace(1e5, 1e8, 60)
    c, alpha, b, a0 = 2e-3, 0.5, -1.0, 0.12
    a = np.exp(-c * d**alpha + b) + a0
    law = fit_activation_law(d, a + np.random.default_rng(0).normal(0, 1e-4, d.size), kind="relu")
    assert law.A0 == pytest.approx(a0, abs=2e-3)
    assert law.alpha == pytest.approx(alpha, rel=0.05)
    assert law.c == pytest.approx(c, rel=0.3)
    assert law.r2 > 0.999
    assert np.allclose(law(d), a, atol=1e-3)


def test_silu_law_recovers_its_parameters_and_increases():
    d = np.geomspace(1e5, 1e8, 60)
    a = -5.0 / d**0.4 + 0.35
    law = fit_activation_law(d, a + np.random.default_rng(1).normal(0, 1e-4, d.size), kind="silu")
    assert law.A0 == pytest.approx(0.35, abs=2e-3)
    assert law.alpha == pytest.approx(0.4, rel=0.05)
    assert law.c == pytest.approx(5.0, rel=0.3)
    assert law(1e9) > law(1e6)


def test_fit_errors_and_plot(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        fit_activation_law([1, 2, 3, 4, 5], [1, 1, 1, 1, 1], kind="gelu")
    with pytest.raises(ValueError, match="more than 4 points"):
        fit_activation_law([1, 2, 3], [1, 1, 1])
    d = np.geomspace(1e3, 1e6, 20)
    law = fit_activation_law(d, -1 / d**0.5 + 0.3, kind="silu")
    path = plot_activation_laws({"silu": (d, -1 / d**0.5 + 0.3, law)}, tmp_path / "laws.png")
    assert path.stat().st_size > 1000


@pytest.mark.parametrize("kind", ["relu", "silu"])
def test_c_in_billions_of_tokens_is_the_same_curve(kind):
    from actsparse.metrics.functional.laws import ActivationLaw

    law = ActivationLaw(kind, c=3e-4 if kind == "relu" else 40.0, alpha=0.45, A0=0.2, r2=1.0, b=-0.5)
    d = np.geomspace(1e6, 1e11, 7)
    billions = d / 1e9
    c_b = law.c_billions
    # the paper's formulas with D in billions, written out independently
    direct = (np.exp(-c_b * billions**0.45 - 0.5) + 0.2) if kind == "relu" else (-c_b / billions**0.45 + 0.2)
    assert np.allclose(law(d), direct, rtol=1e-12)
    assert law.c_in(1.0) == law.c
    assert c_b == pytest.approx(law.c * 1e9**0.45 if kind == "relu" else law.c / 1e9**0.45, rel=1e-12)

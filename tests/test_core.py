"""The core contract: options, grids, preconditioning identities, views and the driver."""

from __future__ import annotations

import math

import pytest
import torch

import physgen
from physgen.core.precond import edm_coefficients
from physgen.core.process import karras_sigmas, option_docs
from physgen.errors import ConfigError
from physgen.sampling import sample


def test_karras_grid_endpoints_and_shape():
    s = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert s.dtype == torch.float64 and s.shape == (19,)
    assert s[0] == pytest.approx(80.0) and s[17] == pytest.approx(0.002) and s[18] == 0
    assert bool((s[:-1] > s[1:]).all())
    # rho = 1 is the uniform grid, an independent closed form
    lin = karras_sigmas(5, 1.0, 5.0, rho=1.0, zero=False)
    assert torch.allclose(lin, torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))


def test_edm_coefficients_table1_values():
    c = edm_coefficients(torch.tensor([0.5]), sigma_data=0.5)  # σ = σ_d
    assert c.c_skip.item() == pytest.approx(0.5)
    assert c.c_out.item() == pytest.approx(0.5 / math.sqrt(2))
    assert c.c_in.item() == pytest.approx(1 / (0.5 * math.sqrt(2)))
    assert c.c_noise.item() == pytest.approx(math.log(0.5) / 4)


def test_edm_loss_is_one_for_gaussian_data_and_zero_network():
    """EDM's weighting makes the loss of F ≡ 0 exactly 1 per dimension for data N(0, σ_d²)
    at every σ (Karras et al. 2022, App. B.6: unit-variance training target)."""
    process = physgen.get_process("edm", sigma_data=0.7)

    def zero_net(x, noise_label, class_labels=None):
        return torch.zeros_like(x)

    g = torch.Generator().manual_seed(0)
    y = 0.7 * torch.randn(200_000, 3, generator=g)
    loss = process.loss(zero_net, y, generator=g)
    assert loss.shape == (200_000,)
    assert loss.mean().item() == pytest.approx(1.0, abs=0.02)


def test_options_parse_strings_and_reject_bad_values():
    p = physgen.get_process("edm", sigma_max="20", rho="5")
    assert p.options.sigma_max == 20.0 and p.options.rho == 5.0
    with pytest.raises(ConfigError, match="no option 'nope'"):
        physgen.get_process("edm", nope=1)
    with pytest.raises(ConfigError, match="sigma_max='abc' is not a valid float"):
        physgen.get_process("edm", sigma_max="abc")
    with pytest.raises(ConfigError, match="sigma_min < sigma_max"):
        physgen.get_process("edm", sigma_min=5.0, sigma_max=1.0)


def test_option_docs_read_from_comments():
    docs = option_docs(physgen.get_process("edm").Options)
    assert "ρ" in docs["rho"] and "σ_d" in docs["sigma_data"]


def test_views_and_clear_refusal():
    p = physgen.get_process("edm")
    assert p.views() == ("ode", "denoiser", "score")
    net = physgen.get_network("mlp", (2,))
    with pytest.raises(ConfigError, match="has no 'consistency' view"):
        p.view("consistency", net)


def test_samples_do_not_depend_on_batch_size_and_report_nfe():
    torch.manual_seed(0)  # only the network init; sampling uses its own generators
    p = physgen.get_process("edm", sigma_max=10.0)
    net = physgen.get_network("mlp", (2,))
    a = sample(p, net, (2,), n=10, sampler="heun", steps=6, seed=3, batch_size=10)
    b = sample(p, net, (2,), n=10, sampler="heun", steps=6, seed=3, batch_size=3)
    assert torch.equal(a.x, b.x)
    assert a.nfe == 2 * 6 - 1  # EDM Algorithm 1
    c = sample(p, net, (2,), n=10, sampler="heun", steps=6, seed=4, batch_size=10)
    assert not torch.equal(a.x, c.x)


def test_sampler_option_and_mismatch_errors():
    p = physgen.get_process("edm")
    net = physgen.get_network("mlp", (2,))
    with pytest.raises(ConfigError, match="sampler 'heun' has no option 'bogus'"):
        sample(p, net, (2,), n=2, sampler="heun", steps=2, options={"bogus": 1})
    with pytest.raises(ConfigError, match="unknown sampler 'nope'"):
        sample(p, net, (2,), n=2, sampler="nope", steps=2)
    with pytest.raises(ConfigError, match="steps must be ≥ 1"):
        sample(p, net, (2,), n=2, sampler="heun", steps=0)


def test_import_physgen_is_lazy():
    import subprocess
    import sys

    code = "import physgen, physgen.cli, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"

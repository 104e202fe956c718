"""Dead gated latents come back: AuxK's relu(pi_gate) is 0 for a latent whose gate never opens, so
gated SAEs revive through exp(pi_gate) (saelab/sae/gated.py, "dead latents")."""

import torch
from test_architectures import HOOK, D, planted, train_local

from saelab.sae import SaeConfig, build_sae

N_DEAD = 16


def _killed_gated(x: torch.Tensor, aux_coeff: float):
    """A gated SAE trained briefly, then N_DEAD of its latents shut: each gate bias set just below
    the smallest value that would open it on any training row."""
    torch.manual_seed(0)
    sae = build_sae(SaeConfig("gated", d_in=D, d_sae=64, hookpoint=HOOK, sparsity_coeff=0.1, aux_coeff=aux_coeff))
    train_local(sae, x, steps=100)
    killed = torch.arange(N_DEAD)
    with torch.no_grad():
        gate = sae.preacts(sae.encoder_input(x))
        sae.b_enc[killed] -= gate[:, killed].max(0).values + 0.2
    return sae, killed


def _fires(sae, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return sae.encode_raw(x).fire_counts()[latents] > 0


def test_dead_gated_latents_revive_through_the_gate():
    x, held = planted(40_000), planted(4096, seed=1)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:N_DEAD] = True
    revived = {}
    for coeff in (0.0, 1 / 32):
        sae, killed = _killed_gated(x, coeff)
        assert not _fires(sae, x, killed).any()  # shut on every training row
        train_local(sae, x, steps=300, dead=dead, init=False)
        revived[coeff] = int(_fires(sae, held, killed).sum())
    # measured {0.0: 1, 1/32: 16}: without revival only the shared W_enc and b_dec move a shut gate
    assert revived[0.0] <= 2, revived
    assert revived[1 / 32] >= 12, revived

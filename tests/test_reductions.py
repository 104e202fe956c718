"""A dictionary's reductions through its `reductions` object (sae/reductions.py): two latent slices
(train/sharded_saes.py: LatentSplit) or two shares of the rows (train/row_split.py: RowSplit), run
as threads, give one process's reconstruction, losses and gradients with no copy of the forward.
The multi-process runs are tests/test_latent_shard.py and tests/test_distributed.py."""

import threading

import pytest
import torch
from test_batchtopk_select import ThreadComm

import saelab.sae.base as base
from saelab.sae import SaeConfig, build_sae
from saelab.sae.reductions import LOCAL
from saelab.train.latent_shard import latent_slice
from saelab.train.row_split import RowSplit
from saelab.train.sharded_saes import LatentSplit

D, M, N = 16, 64, 48


def run_ranks(fn, world=2):
    results, errors = [None] * world, []

    def rank(r):
        try:
            results[r] = fn(r)
        except Exception as e:  # noqa: BLE001 - reported below, with the rank
            errors.append((r, e))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


def step(sae, x, dead, target):
    out = sae(x, dead=dead, target=target)
    loss = (out.recon - target).pow(2).sum() + out.aux_loss + out.extra_loss
    loss.backward()
    return out


def make(arch):
    torch.manual_seed(0)
    sae = build_sae(
        SaeConfig(
            arch,
            d_in=D,
            d_sae=M,
            hookpoint="h",
            k=4,
            aux_k=6,
            aux_coeff=0.5,
            groups=[16, 16, 32] if arch == "matryoshka" else None,
        )
    ).train()
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(D) * 0.1)
    return sae


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("dead_at", ["spread", "one_slice"])  # one_slice: rank 0 has no dead latent
@pytest.mark.parametrize("dense_up_to", [0, 1000])  # AuxK's sparse gather / dense path
def test_latent_slices_give_the_single_process_step(arch, dead_at, dense_up_to, monkeypatch):
    monkeypatch.setattr(base, "AUXK_DENSE_UP_TO", dense_up_to)
    full = make(arch)
    g = torch.Generator().manual_seed(1)
    x, target = torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)
    dead = torch.zeros(M, dtype=torch.bool)
    dead[torch.arange(3, M, 5) if dead_at == "spread" else torch.arange(40, 52)] = True
    slices = [latent_slice(full, slice(r * M // 2, (r + 1) * M // 2)) for r in range(2)]
    want = step(full, x, dead, target)
    assert want.aux_loss > 0 and (arch != "matryoshka" or want.extra_loss > 0)
    comm = ThreadComm(2)

    def rank(r):
        sae, sl = slices[r], slice(r * M // 2, (r + 1) * M // 2)
        sae.reductions = LatentSplit(comm.rank_view(r), sl.start, M // 2, M)
        return step(sae, x, dead[sl], target)

    got = run_ranks(rank)
    for out in got:  # every rank: the whole reconstruction and losses
        torch.testing.assert_close(out.recon, want.recon, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.aux_loss, want.aux_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.extra_loss, want.extra_loss, rtol=1e-5, atol=1e-6)
    lat = torch.cat([o.latents.to_dense() for o in got], 1)
    torch.testing.assert_close(lat, want.latents.to_dense(), rtol=0, atol=0)
    for name, dim in (("W_enc", 1), ("b_enc", 0), ("W_dec", 0)):  # each slice: its part of the gradient
        g_full = getattr(full, name).grad
        torch.testing.assert_close(
            torch.cat([getattr(s, name).grad for s in slices], dim), g_full, rtol=1e-4, atol=1e-6, msg=name
        )
    torch.testing.assert_close(slices[0].b_dec.grad + slices[1].b_dec.grad, full.b_dec.grad, rtol=1e-4, atol=1e-5)
    if arch != "topk":  # the running inference threshold is the single process's on every rank
        assert all(s.threshold == full.threshold for s in slices)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_row_shares_keep_the_single_process_batch_selection(arch):
    """Each rank holds half of the rows; the batch-wide k x rows selection is the whole batch's."""
    full = make(arch)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, D, generator=g)
    x[::7] *= 5  # rows far denser than the rest: each rank's own k x (its rows) would differ
    want = full.encode(full.encoder_input(x))[0].to_dense()
    shares = [make(arch) for _ in range(2)]
    comm = ThreadComm(2)

    def rank(r):
        sae = shares[r]
        sae.reductions = split = RowSplit(comm.rank_view(r))
        split.total_rows = N
        return sae.encode(sae.encoder_input(x.tensor_split(2)[r]))[0].to_dense()

    got = torch.cat(run_ranks(rank))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert all(s.threshold == full.threshold for s in shares)
    mine = [(want[: N // 2] > 0).sum(), (want[N // 2 :] > 0).sum()]
    assert mine[0] != mine[1]  # the shares really kept different counts (not k x their rows each)


def test_one_process_reductions_are_the_identity():
    sae = build_sae(SaeConfig("topk", d_in=D, d_sae=M, hookpoint="h", k=4))
    assert sae.reductions is LOCAL
    t = torch.randn(3, 4)
    assert LOCAL.latent_sum(t) is t and LOCAL.shared(t) is t and LOCAL.min(t) is t
    assert LOCAL.latent_total(7) == 7 and LOCAL.batch_rows(5) == 5 and LOCAL.any(True) is True

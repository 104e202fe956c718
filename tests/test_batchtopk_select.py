"""BatchTopK's candidate selection (batch_select) keeps exactly what ranking the whole batch keeps,
latent-sharded too; Matryoshka's one-bag-per-(row, group) prefix decodes equal a masked decode per
group, values and gradients. The references are the implementations these replaced, copied here."""

import threading

import pytest
import torch

from saelab.sae import SaeConfig, build_sae
from saelab.sae.batchtopk import batch_select
from saelab.sae.latents import Latents, decode_sparse
from saelab.sae.matryoshka import group_decodes
from saelab.train.sharded_saes import LatentSplit


def full_select(pre, n_keep):
    """The former selection: one topk over every relu'd value, then a nonzero over all of them."""
    d = pre.shape[1]
    flat = pre.relu().reshape(-1)
    top = flat.topk(min(n_keep, flat.numel()), sorted=False).values
    t = top.min() if top.numel() else flat.new_tensor(float("inf"))
    keep = ((flat >= t) & (flat > 0)).nonzero().squeeze(1)
    return keep // d, keep % d, flat[keep]


def counting_top_values():
    calls = []

    def top_values(v, n):
        calls.append(v.numel())
        return v.topk(min(n, v.numel()), sorted=False).values

    return top_values, calls


def batches():
    """(name, pre-activations, k): plain, heavy rows (refinement), ties at the threshold, fewer
    positives than k x rows (t = 0), a single row."""
    g = torch.Generator().manual_seed(0)
    plain = torch.randn(64, 256, generator=g)
    heavy = torch.randn(64, 256, generator=g)
    heavy[::7] *= 6  # these rows hold far more than 2k of the batch's largest values
    ties = (torch.randn(64, 256, generator=g) * 2).round() / 2  # few distinct values: many ties at t
    sparse = torch.randn(64, 256, generator=g) - 3.0  # ~0.1% positive: fewer than k x rows
    return [
        ("plain", plain, 4),
        ("heavy", heavy, 4),
        ("ties", ties, 4),
        ("ties_k1", ties, 1),
        ("sparse", sparse, 8),
        ("one_row", plain[:1], 4),
    ]


@pytest.mark.parametrize("name,pre,k", batches(), ids=[b[0] for b in batches()])
@pytest.mark.parametrize("m_per_k", [1, 2, 4])
def test_candidates_keep_exactly_the_full_batch_selection(name, pre, k, m_per_k):
    want = full_select(pre, k * pre.shape[0])
    top_values, _ = counting_top_values()
    got = batch_select(pre, k * pre.shape[0], m_per_k * k, top_values)
    for a, b in zip(got, want):  # the same entries, in the same (row-major) order, bitwise
        assert torch.equal(a, b), name


def test_refinement_runs_only_when_a_row_may_hold_more_than_its_candidates():
    g = torch.Generator().manual_seed(1)
    even = torch.rand(32, 256, generator=g).argsort(1).float()  # every row the same values: k each above t
    heavy = even.clone()
    heavy[3] += 1000.0  # one row above every other: it holds more than its 2k candidates
    for pre, passes in ((even, 1), (heavy, 2)):
        top_values, calls = counting_top_values()
        got = batch_select(pre, 4 * 32, 8, top_values)
        assert len(calls) == passes
        assert all(c <= 32 * 8 + 256 for c in calls)  # never the whole batch
        for a, b in zip(got, full_select(pre, 4 * 32)):
            assert torch.equal(a, b)
    assert torch.equal(got[0].unique(), torch.tensor([3]))  # row 3 takes all k x rows


def test_every_entry_a_candidate_when_m_covers_the_row_and_bad_m_refused():
    pre = torch.randn(8, 16)
    for a, b in zip(batch_select(pre, 40, 16, counting_top_values()[0]), full_select(pre, 40)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="cannot hold"):
        batch_select(pre, 40, 4, counting_top_values()[0])


class ThreadComm:
    """Two ranks as threads: the collectives of distributed.Comm that LatentSplit uses."""

    def __init__(self, world):
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world, timeout=60)

    def rank_view(self, rank):
        comm = self

        class View:
            def __init__(self):
                self.rank, self.world = rank, comm.world

            def _exchange(self, t):
                comm.slots[rank] = t.clone()
                comm.barrier.wait()
                out = list(comm.slots)
                comm.barrier.wait()
                return out

            def all_gather(self, t, what=""):
                return self._exchange(t)

            def all_reduce(self, t, op=None, what=""):
                vals = torch.stack(self._exchange(t))
                t.copy_(
                    vals.max(0).values if "MAX" in str(op) else vals.min(0).values if "MIN" in str(op) else vals.sum(0)
                )
                return t

        return View()


def test_latent_shards_keep_the_single_process_selection_and_threshold():
    """Two shards of a BatchTopK, each pre-selecting per row on its own half (one shard holds the
    heavy rows, so only it refines): the union of their selections and the running threshold are
    the single process's."""
    torch.manual_seed(2)
    cfg = SaeConfig("batchtopk", d_in=16, d_sae=256, hookpoint="h", k=4)
    full = build_sae(cfg).train()
    x = torch.randn(96, 16)
    with torch.no_grad():
        full.W_enc[:, 128:][:, :10] *= 8  # latents of shard 1 that fire far above the rest on some rows
    lat = full.encode(x)[0]
    want = lat.to_dense()
    comm, results = ThreadComm(2), [None, None]

    def rank(r):
        half = SaeConfig("batchtopk", d_in=16, d_sae=128, hookpoint="h", k=4)
        sae = build_sae(half).train()
        sae.reductions = LatentSplit(comm.rank_view(r), r * 128, 128, 256)
        sl = slice(r * 128, (r + 1) * 128)
        with torch.no_grad():
            sae.W_enc.copy_(full.W_enc[:, sl]), sae.b_enc.copy_(full.b_enc[sl]), sae.b_dec.copy_(full.b_dec)
        results[r] = (sae.encode(x)[0].to_dense(), sae.threshold.clone(), sae.threshold_steps.clone())

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None for r in results), "a rank failed"
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]], 1), want, rtol=0, atol=0)
    for _, thr, steps in results:
        assert thr == full.threshold and steps == full.threshold_steps == 1


# ---------------------------------------------------------------- Matryoshka prefix decodes
def masked_prefix_recons(lat, W_dec, b_dec, bounds):
    """The former prefix_recons: a full decode with group-masked weights per group, accumulated."""
    _, idx, vals = lat.flat()
    group = torch.bucketize(idx, bounds, right=True)
    out, acc = [], b_dec.expand(lat.n_rows, -1)
    for g in range(len(bounds)):
        w = vals * (group == g).to(vals.dtype)
        acc = acc + decode_sparse(
            Latents(w.view_as(lat.values), lat.indices, lat.offsets, lat.n_rows, lat.d_sae), W_dec
        )
        out.append(acc)
    return out


def test_matryoshka_prefixes_and_gradients_equal_masked_decodes():
    torch.manual_seed(3)
    groups = [8, 8, 16, 32]
    sae = build_sae(SaeConfig("matryoshka", d_in=24, d_sae=64, hookpoint="h", k=4, groups=groups)).train()
    x, target = torch.randn(128, 24), torch.randn(128, 24)
    grads = []
    for impl in ("new", "old"):
        sae.zero_grad()
        lat = sae.encode(sae.encoder_input(x))[0]
        if impl == "new":
            prefixes = sae.prefix_recons(lat)
        else:
            prefixes = masked_prefix_recons(lat, sae.W_dec, sae.b_dec, sae.bounds)[:-1]
        assert len(prefixes) == len(groups) - 1
        loss = sum(((p - target) ** 2).sum() * (i + 1) for i, p in enumerate(prefixes))  # every prefix its own weight
        loss.backward()
        grads.append(([p.detach() for p in prefixes], {n: p.grad.clone() for n, p in sae.named_parameters()}))
    (new_p, new_g), (old_p, old_g) = grads
    for a, b in zip(new_p, old_p):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same sums in the same order
    for n in old_g:
        torch.testing.assert_close(new_g[n], old_g[n], rtol=1e-5, atol=1e-5, msg=n)
    assert old_g["W_enc"].abs().sum() > 0 and old_g["W_dec"].abs().sum() > 0


def test_group_decodes_sorts_entries_that_are_not_grouped():
    """Fixed-k latents (TopK order: columns unsorted within a row) and a shard offset."""
    torch.manual_seed(4)
    W = torch.randn(32, 6)
    idx = torch.stack([torch.randperm(32)[:5] for _ in range(10)])
    vals = torch.rand(10, 5)
    lat = Latents(vals, idx, None, 10, 32)
    bounds = torch.tensor([8, 16, 40, 64])  # global ids; this slice is latents 8..39
    got = group_decodes(lat, W, bounds, 3, offset=8)
    group = torch.bucketize(idx + 8, bounds, right=True)
    for g in range(3):
        want = decode_sparse(Latents(vals * (group == g), idx, None, 10, 32), W)
        torch.testing.assert_close(got[:, g], want)
    assert got[:, 0].abs().sum() == 0  # global ids 0..7 are not in this slice

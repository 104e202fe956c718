"""The contract every registered dictionary type keeps, checked from what it declares on its class
(sae/kind.py: Options, capabilities, foreign) and nothing else: no per-type table here.

On the tiny model each type trains a few steps, saves, reopens with identical outputs, evaluates,
exports to SAELens and sparsify or refuses exactly as it declares, writes a latent cache or refuses,
refuses the losses and transcoder sites it does not declare, and trains or refuses under each
`--distributed` mode as it declares (checked where torchrun's checks run, before the process group).
Two toy types defined only in this file pass the same contract by registering themselves: a type is
one room. A toy that declares a SAELens form its tensors do not have fails it (the last test)."""

from __future__ import annotations

import pytest
import torch
from conftest import train_cfg

from saelab.errors import UserError
from saelab.sae import ARCHITECTURES, SaeConfig, SparseCoder, TopKSae, build_sae
from saelab.sae.folder import Provenance, load_sae, save_sae
from saelab.sae.foreign_saelens import export_saelens
from saelab.sae.foreign_sparsify import export_sparsify
from saelab.sae.kind import LOSSES, TORCHRUN_MODES, Capabilities, ForeignNames, NoOptions, check_declared
from saelab.sae.latents import latents_of

SITE = "model.layers.1"


# ---------------------------------------------------------------- toy types, registered only here
class RenamedTopK(TopKSae):
    """TopK under another name: what it declares is its own (inherits no declaration)."""

    Options = NoOptions
    capabilities = Capabilities(uses_k=True)
    foreign = ForeignNames(saelens="topk", sparsify=True)


class DenseReLU(SparseCoder):
    """The smallest dictionary type: a ReLU SAE with an L1 penalty, computed densely."""

    Options = NoOptions
    capabilities = Capabilities()
    foreign = ForeignNames(saelens="standard")

    def encode(self, x_in):
        pre = self.preacts(x_in)
        vals = pre.relu()
        rows, cols = (vals > 0).nonzero(as_tuple=True)
        sparsity = self.cfg.sparsity_coeff * vals.sum(1).mean()
        return latents_of(vals[rows, cols], rows, cols, x_in.shape[0], self.cfg.d_sae), sparsity, pre.detach()


class GainedReLU(DenseReLU):
    """Declares SAELens' `standard` form, but its per-latent gain is no SAELens tensor: export loses it."""

    Options = NoOptions
    capabilities = Capabilities()
    foreign = ForeignNames(saelens="standard")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.gain = torch.nn.Parameter(torch.ones(cfg.d_sae))

    def encode(self, x_in):
        lat, sparsity, pre = super().encode(x_in)
        return lat._replace(values=lat.values * self.gain[lat.indices]), sparsity, pre

    def extra_state_tensors(self):
        return {"gain": self.gain.detach().clone()}

    def load_extra_tensors(self, tensors):
        with torch.no_grad():
            self.gain.copy_(tensors["gain"])


TOYS = {"renamed_topk": RenamedTopK, "dense_relu": DenseReLU}


# ---------------------------------------------------------------- the contract, piece by piece
def _dense(sae: SparseCoder, x: torch.Tensor) -> torch.Tensor:
    rows, idx, vals = sae.encode_raw(x).flat()
    return torch.zeros(x.shape[0], sae.cfg.d_sae).index_put_((rows, idx), vals, accumulate=True)


def same_outputs(a: SparseCoder, b: SparseCoder, x: torch.Tensor, what: str) -> None:
    a, b = a.eval(), b.eval()
    torch.testing.assert_close(
        _dense(b, x), _dense(a, x), rtol=1e-4, atol=1e-4, msg=lambda m: f"{what}: latents differ. {m}"
    )
    torch.testing.assert_close(
        b.reconstruct(x), a.reconstruct(x), rtol=1e-4, atol=1e-4, msg=lambda m: f"{what}: reconstructions differ. {m}"
    )


def check_exports(sae: SparseCoder, tmp_path, x: torch.Tensor) -> None:
    """SAELens and sparsify: exported and read back with the same outputs, or refused, as declared."""
    names = type(sae).foreign
    if names.saelab_only:
        for export, fmt in ((export_saelens, "SAELens"), (export_sparsify, "sparsify")):
            with pytest.raises(UserError, match=f"{fmt} has no"):
                export(sae, tmp_path / fmt)
        return
    folder = export_saelens(sae, tmp_path / "saelens", "tiny", 64)
    same_outputs(sae, load_sae(folder)[0], x, f"SAELens export ({names.saelens})")
    if names.sparsify:
        folder = export_sparsify(sae, tmp_path / "sparsify")
        same_outputs(sae, load_sae(folder)[0], x, "sparsify export")
    else:
        with pytest.raises(UserError, match="sparsify"):
            export_sparsify(sae, tmp_path / "sparsify")


class _ProcessGroupReached(Exception):
    """Distributed accepted the configuration and went on to form its process group."""


def check_torchrun_modes(arch: str, kw: dict, tmp_path, monkeypatch) -> None:
    import saelab.train.distributed as distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "Comm", lambda *a, **k: (_ for _ in ()).throw(_ProcessGroupReached()))
    declared = ARCHITECTURES[arch].capabilities.torchrun
    for mode in TORCHRUN_MODES:
        cfg = train_cfg(tmp_path / "dist", "embedded", "builtin", arch=arch, distributed=mode, **kw)
        if mode in declared:
            with pytest.raises(_ProcessGroupReached):
                distributed.Distributed(cfg)
        else:
            with pytest.raises(UserError):
                distributed.Distributed(cfg)


def check_config_rules(arch: str, kw: dict, tmp_path) -> None:
    """Losses and transcoder sites: accepted or refused before anything loads, as declared."""
    caps = ARCHITECTURES[arch].capabilities
    for loss in LOSSES:
        cfg = train_cfg(tmp_path / "r", "no-such-model", "no-such-corpus", arch=arch, loss=loss, **kw)
        if loss in caps.losses:
            cfg.validate()
        else:
            with pytest.raises(UserError, match="not supported"):
                cfg.validate()
    tc = train_cfg(
        tmp_path / "r",
        "no-such-model",
        "no-such-corpus",
        arch=arch,
        **(kw | {"hookpoints": [f"{SITE}->model.layers.2"]}),
    )
    if caps.transcoder:
        tc.validate()
    else:
        with pytest.raises(UserError, match="transcoder sites"):
            tc.validate()


def training_options(arch: str) -> dict:
    """What the type's capabilities say a run needs: k or a coefficient, one site or several."""
    caps = ARCHITECTURES[arch].capabilities
    kw = dict(latents=128, tokens=1024, batch_tokens=256, context=64, buffer_batches=2, checkpoint_every=10**9)
    kw |= dict(k=[8]) if caps.uses_k else dict(sparsity_coeff=[0.01])
    kw |= dict(hookpoints=["model.layers.{1,2}"]) if caps.multi_site else dict(hookpoints=[SITE])
    if caps.multi_site and caps.transcoder:  # one dictionary from several MLP inputs to their MLP outputs (clt)
        kw["hookpoints"] = ["model.layers.{1,2}.post_attention_layernorm->model.layers.{1,2}.mlp"]
    return kw


def keeps_contract(arch, tmp_path, monkeypatch, tiny_model_dir, text_corpus) -> None:
    import saelab.train.loop as loop
    from saelab.evaluate.run import EvalConfig, evaluate
    from saelab.features.cache_config import LatentCacheConfig
    from saelab.features.latent_cache_writer import write_latent_cache

    cls = ARCHITECTURES[arch]
    check_declared(arch, cls)
    kw = training_options(arch)
    check_config_rules(arch, kw, tmp_path)
    check_torchrun_modes(arch, kw, tmp_path, monkeypatch)

    trained = []
    save = loop.save_sae
    monkeypatch.setattr(loop, "save_sae", lambda sae, *a, **k: trained.append(sae) or save(sae, *a, **k))
    (folder,) = loop.TrainingRun(train_cfg(tmp_path / "run", tiny_model_dir, text_corpus, arch=arch, **kw)).run()
    assert type(trained[0]) is cls
    x = torch.randn(512, trained[0].cfg.d_in) * 3
    reopened = load_sae(folder)[0]
    assert type(reopened) is cls
    same_outputs(trained[0], reopened, x, "save and reopen")

    evaluate(EvalConfig(sae_dirs=[str(folder)], tokens=512, ce_tokens=64), quiet=True)
    assert (folder / "metrics.json").exists()
    check_exports(reopened, tmp_path / "export", x)
    cache = LatentCacheConfig(
        sae_dirs=[str(folder)], tokens=256, out=str(tmp_path / "cache"), batch_rows=4, chunk_rows=8
    )
    if cls.capabilities.latent_cache:
        write_latent_cache(cache, progress=False)
    else:
        with pytest.raises(UserError, match="latent cache"):
            write_latent_cache(cache, progress=False)


# ---------------------------------------------------------------- the tests
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_registered_type_keeps_its_contract(arch, tmp_path, monkeypatch, tiny_model_dir, text_corpus):
    keeps_contract(arch, tmp_path, monkeypatch, tiny_model_dir, text_corpus)


@pytest.mark.parametrize("name", list(TOYS))
def test_a_type_registered_only_here_keeps_the_same_contract(name, tmp_path, monkeypatch, tiny_model_dir, text_corpus):
    monkeypatch.setitem(ARCHITECTURES, name, TOYS[name])  # the one line a new type adds to sae/registry.py
    keeps_contract(name, tmp_path, monkeypatch, tiny_model_dir, text_corpus)


def test_a_type_must_declare_its_own_answers():
    class Inheriting(TopKSae):  # TopK's answers are not a subclass's by default
        pass

    with pytest.raises(TypeError, match="must declare `Options` in its own class body"):
        check_declared("inheriting", Inheriting)


def test_a_wrongly_declared_export_breaks_the_contract(tmp_path, monkeypatch):
    """GainedReLU declares SAELens' `standard` form; SAELens has no gain, so the export loses it and
    the contract's round trip fails, naming the export."""
    monkeypatch.setitem(ARCHITECTURES, "gained_relu", GainedReLU)
    sae = build_sae(SaeConfig("gained_relu", d_in=16, d_sae=32, hookpoint=SITE, sparsity_coeff=0.01))
    with torch.no_grad():
        sae.gain.uniform_(0.5, 2.0)
    folder = save_sae(sae, tmp_path / "sae", Provenance(context=64))
    reopened = load_sae(folder)[0]
    x = torch.randn(64, 16) * 3
    same_outputs(sae, reopened, x, "save and reopen")  # our own folder keeps it ...
    with pytest.raises(AssertionError, match="SAELens export \\(standard\\): latents differ") as e:
        check_exports(reopened, tmp_path / "export", x)  # ... SAELens' standard form cannot
    print(e.value)

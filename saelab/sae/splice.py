"""Put a dictionary into the model's forward pass.

`spliced(model, sae, keep)` replaces the activation at the SAE's output site by its
reconstruction (an SAE) or prediction (a transcoder, which reads its input site during the same
forward). Positions where `keep` is True (sinks, outliers) keep their clean activation. With
`error_term=True` the reconstruction error is added back, so the output is exactly the model's
own until a feature is edited (`edit` gets and returns dense latents) - what steering uses. With
`frozen=(out, recon)` (a recorded run's output and reconstruction) the output is out + (the (edited)
reconstruction - recon): the reconstruction plus the recorded error, bitwise the recorded output while
nothing upstream changed: the local replacement model with frozen errors (circuits/interventions.py).

`clt_spliced(model, clt, input_sites, output_sites)` puts a cross-layer transcoder (sae/clt.py) into the
forward causally: layer l's latents are encoded from its MLP input in this forward, and its MLP output
becomes the sum of the decoders of layers <= l into l (plus the output bias).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch

from ..errors import UserError
from ..models import first_tensor, module_at, patch_activation
from . import SparseCoder
from .latents import from_dense
from .registry import multi_site


@contextmanager
def spliced(
    model,
    sae: SparseCoder,
    keep: torch.Tensor | Callable[[int, torch.device], torch.Tensor] | None = None,
    error_term: bool = False,
    edit: Callable[[torch.Tensor], torch.Tensor] | None = None,
    frozen: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Iterator[None]:
    cfg = sae.cfg
    if multi_site(cfg) and cfg.is_transcoder:
        raise UserError(
            "a cross-layer transcoder replaces every layer's MLP at once: splice it with `clt_spliced` (or "
            "`sae.replacement.replaced` on its replacement folder; `saelab eval REPLACEMENT`), not one site"
        )
    if multi_site(cfg):
        raise UserError(
            "a crosscoder cannot be spliced into one forward (it reads later sites to reconstruct earlier "
            "ones), so it cannot steer; `saelab eval` splices all its sites from a clean forward "
            "(docs/DICTIONARIES.md)"
        )
    captured: dict[str, torch.Tensor] = {}

    def replace(act: torch.Tensor) -> torch.Tensor:
        x = captured.pop("x") if cfg.is_transcoder else act
        shape = act.shape
        flat_x = x.reshape(-1, x.shape[-1]).to(sae.W_enc.dtype)
        if edit is None and not error_term and frozen is None:
            new = sae.reconstruct(flat_x)
        else:
            with torch.no_grad():
                lat = sae.encode_raw(flat_x)
                dense = lat.to_dense()
                if error_term:
                    # act + (edited - clean) decode: bitwise the model's own activation wherever
                    # the edit leaves the latents unchanged (and exactly act when edit is None).
                    new = act.reshape(-1, shape[-1]).to(flat_x.dtype)
                    if edit is not None:
                        edited = edit(dense.view(*shape[:-1], -1).clone()).reshape(-1, cfg.d_sae)
                        new = new + ((edited - dense) @ sae.W_dec) / sae.out_scale
                else:
                    if edit is not None:
                        dense = edit(dense.view(*shape[:-1], -1)).reshape(-1, cfg.d_sae)
                    new = decode_dense(sae, dense, flat_x)
                    if frozen is not None:
                        new = _frozen_error(new, *frozen)
        new = new.reshape(shape).to(act.dtype)
        if callable(keep):  # per sequence position ([T] bool, e.g. features.steer.SinkKeep): [B, T, d] acts
            new = torch.where(keep(shape[-2], act.device)[:, None], act, new)
        elif keep is not None:
            k = keep[..., None] if keep.shape == shape[:-1] else _broadcast_keep(keep, shape)
            new = torch.where(k, act, new)
        return new

    with ExitStack() as stack:
        if cfg.is_transcoder:
            src = module_at(model, cfg.hookpoint)
            if cfg.hookpoint.endswith(":input"):
                h = src.register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0]))
            else:
                h = src.register_forward_hook(lambda m, a, out: captured.__setitem__("x", first_tensor(out)))
            stack.callback(h.remove)
        stack.enter_context(patch_activation(model, cfg.out_hookpoint or cfg.hookpoint, replace))
        yield


@contextmanager
def clt_spliced(
    model,
    clt,
    input_sites: list[str],
    output_sites: list[str],
    keep: torch.Tensor | None = None,
    error_term=False,
    edit: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    frozen: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Iterator[None]:
    """Every MLP output the CLT covers, replaced in one forward through its raw-space API (encode_layer,
    decode_layer, output_bias); `keep` [batch, seq] positions stay clean; `error_term`: the reconstruction
    error added back (the clean output, as `spliced` does). `edit(layer, dense [batch, seq, n]) -> edited`
    changes layer `layer`'s latents (local ids) as they are encoded (steering, features/clt_features.py);
    with `error_term` each MLP output t then gets act_t + sum_{l <= t} decode(edited_l - clean_l -> t), so
    an edit that changes nothing leaves the forward bitwise the model's own, and an edit at layer l writes
    into every MLP output from l on and none before. `frozen` (one (output, reconstruction) per CLT layer, of a
    recorded run; not with `error_term`): each output is the (edited) reconstruction plus the recorded error,
    as `spliced` does."""
    lats: dict[int, object] = {}  # CLT layer -> its latents (or their edit's change) in this forward
    dtype = next(clt.parameters()).dtype

    def capture(layer: int, x: torch.Tensor) -> None:
        if error_term and edit is None:
            return
        flat = x.reshape(-1, x.shape[-1]).to(dtype)
        lat = clt.encode_layer(layer, flat)
        if edit is not None:
            dense = lat.to_dense()  # [rows, n]
            edited = edit(layer, dense.view(*x.shape[:-1], -1).clone()).reshape(dense.shape)
            lat = from_dense(edited - dense) if error_term else from_dense(edited)
        lats[layer] = lat

    def replace(layer: int, act: torch.Tensor) -> torch.Tensor:
        if error_term and edit is None:
            return act  # act + (reconstruction - reconstruction): the clean activation, bitwise
        shape = act.shape
        if error_term:
            changed = [s for s in range(layer + 1) if lats[s].values.numel()]
            if not changed:
                return act
            new = act.reshape(-1, shape[-1]).to(dtype)
            for src in changed:
                new = new + clt.decode_layer(src, lats[src], layer)
        else:
            new = clt_output(clt, lats, layer).to(dtype)
            if frozen is not None:
                new = _frozen_error(new, *frozen[layer])
        new = new.reshape(shape).to(act.dtype)
        if keep is not None:
            k = keep[..., None] if keep.shape == shape[:-1] else _broadcast_keep(keep, shape)
            new = torch.where(k, act, new)
        return new

    with ExitStack() as stack:
        for layer, site in enumerate(input_sites):
            src = module_at(model, site)
            if site.endswith(":input"):
                h = src.register_forward_pre_hook(lambda m, args, layer=layer: capture(layer, args[0]))
            else:
                h = src.register_forward_hook(lambda m, a, out, layer=layer: capture(layer, first_tensor(out)))
            stack.callback(h.remove)
        for layer, site in enumerate(output_sites):
            stack.enter_context(patch_activation(model, site, lambda act, layer=layer: replace(layer, act)))
        yield


def decode_dense(sae: SparseCoder, dense: torch.Tensor, flat_x: torch.Tensor) -> torch.Tensor:
    """[rows, d_out] raw-space output of a one-site dictionary from dense latents [rows, d_sae] of raw inputs
    flat_x (its skip included): what `spliced` writes when it decodes latents itself."""
    return (dense @ sae.W_dec + sae.b_dec) / sae.out_scale + sae.skip_raw(flat_x)


def clt_output(clt, lats: dict | list, layer: int) -> torch.Tensor:
    """[rows, d_site_out] CLT layer `layer`'s raw-space output from the latents of layers <= layer (`lats[l]`)."""
    new = clt.output_bias(layer)
    for src in range(layer + 1):
        new = new + clt.decode_layer(src, lats[src], layer)
    return new


def _frozen_error(new: torch.Tensor, out: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """new + (out - recon), computed as out + (new - recon): exactly `out` when new == recon."""
    return out.reshape(new.shape).to(new.dtype) + (new - recon.reshape(new.shape).to(new.dtype))


def _broadcast_keep(keep: torch.Tensor, shape) -> torch.Tensor:
    """A [batch, seq] mask for a KV-cached step whose activation is [batch, new_seq, d]."""
    return keep[:, -shape[1] :, None]

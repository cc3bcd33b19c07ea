"""DoRA with its weight norm computed once per optimizer step instead of on every forward.

PEFT's DoRA recomputes ||W + s·BA|| on every forward: it dequantizes the whole 4-bit weight, builds BA
through an identity matmul (keeping an unused autograd graph), adds and takes row norms — for every
adapted layer, every micro-batch, and again in gradient-checkpoint recomputation. The norm is detached
(DoRA paper, section 4.3) and depends only on W, A and B, which change only at an optimizer step, so one
computation per step gives the same values. With the guide's 32 accumulation steps that is 1 norm
computation where PEFT does 64. The output also keeps the activation dtype (see `_cached_forward`).
"""

from __future__ import annotations

import logging
import os
import types

import torch
import torch.nn.functional as F
from peft.tuners.lora.dora import DoraLinearLayer
from peft.utils.integrations import dequantize_module_weight
from peft.utils.other import transpose

logger = logging.getLogger(__name__)


def _weight_norm(layer: DoraLinearLayer, base_layer, lora_A, lora_B, scaling: float, dtype: torch.dtype):
    with torch.no_grad():
        weight = dequantize_module_weight(base_layer).to(dtype)
        lora_weight = (lora_B.weight @ lora_A.weight).to(dtype)
        weight = transpose(weight, layer.fan_in_fan_out) + scaling * lora_weight
        return torch.linalg.norm(weight, dim=1).to(weight.dtype)


def _cached_forward(self, x, *, lora_A, lora_B, scaling, base_layer, base_result=None, adapter_name="default"):
    """PEFT's DoraLinearLayer.forward, with the detached weight norm taken from a per-step cache."""
    key = (adapter_name, x.dtype)
    norm = self._vlmpref_norms.get(key)
    if norm is None:
        norm = _weight_norm(self, base_layer, lora_A, lora_B, scaling, x.dtype)
        self._vlmpref_norms[key] = norm
    mag_norm_scale = (self.weight / norm).view(1, -1)
    lora_result = lora_B(lora_A(x))
    if base_result is not None:
        bias = base_layer.bias
        if bias is not None:
            base_result = base_result - bias
    else:
        weight = dequantize_module_weight(base_layer).to(x.dtype)
        base_result = F.linear(x, transpose(weight, self.fan_in_fan_out))
    return _combine_fn(base_result)(mag_norm_scale, scaling, base_result, lora_result)


def combine(mag_norm_scale: torch.Tensor, scaling: float, base_result: torch.Tensor, lora_result: torch.Tensor):
    """DoRA's output from the base and LoRA outputs: (m/||W|| - 1) * base + (m/||W|| * s) * lora.

    The magnitude is float32; PEFT multiplies it into [tokens, features] activations, which promotes the layer's
    output (and the residual stream after it) to float32. The factors are formed in float32 (scale - 1 is small
    and would vanish in bf16) and only then cast, so activations keep their dtype.
    """
    dtype = base_result.dtype
    return (mag_norm_scale - 1).to(dtype) * base_result + (mag_norm_scale * scaling).to(dtype) * lora_result


# ---- one fused kernel for `combine` on a GPU (opt-in: VLMPREF_FUSED_DORA=1)
# Eagerly `combine` is three passes over [tokens, features] tensors forward (two products and a sum) and more in
# backward, in every adapted layer; it was 37% of the GPU time of a language-only step on the 2.2B model
# (benchmarks/RESULTS.md, engine v2 profile). torch.compile fuses each direction into one kernel. Shapes are
# dynamic (token counts change per batch), so one compilation per dtype serves the whole run.
_compiled = {"fn": None, "ok": None}


def _combine_fn(base_result: torch.Tensor):
    if base_result.device.type != "cuda" or _compiled["ok"] is False:
        return combine
    if _compiled["ok"] is None:
        enable_fused_combine(base_result.device)
    return _compiled["fn"] if _compiled["ok"] else combine


def enable_fused_combine(device) -> bool:
    """Compile `combine` and check it, forward and backward, against the eager version on small inputs of both
    stream dtypes; any failure (no compiler, a Triton error) leaves the eager version in place, with a notice."""
    # Off unless asked for: on the H200 its self-check against the eager formula failed at the bf16 tolerance
    # used here (benchmarks/RESULTS.md, engine v2), and there was no device time left to find out why
    if os.environ.get("VLMPREF_FUSED_DORA", "0") != "1" or torch.device(device).type != "cuda":
        _compiled["ok"] = False
        return False
    try:
        fn = torch.compile(combine, dynamic=True, fullgraph=True)
        for dtype in (torch.bfloat16, torch.float32):
            for tokens in (96, 160):  # two sizes: a dynamic graph, not one specialized to the first shape
                generator = torch.Generator(device=device).manual_seed(tokens)
                args = [torch.rand(1, 48, device=device, generator=generator) + 0.5]
                base, lora = (torch.randn(tokens, 48, device=device, generator=generator, dtype=dtype)
                              .requires_grad_() for _ in range(2))
                scale = args[0].clone().requires_grad_()
                eager_scale = args[0].clone().requires_grad_()
                b2, l2 = (t.detach().clone().requires_grad_() for t in (base, lora))
                fn(scale, 0.5, base, lora).float().square().sum().backward()
                combine(eager_scale, 0.5, b2, l2).float().square().sum().backward()
                tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
                for got, want in ((scale.grad, eager_scale.grad), (base.grad, b2.grad), (lora.grad, l2.grad)):
                    torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance)
                with torch.no_grad():  # the reference pass runs it without gradients: a graph of its own
                    torch.testing.assert_close(fn(scale, 0.5, base, lora).float(),
                                               combine(scale, 0.5, base, lora).float(), rtol=tolerance, atol=tolerance)
        _compiled.update(fn=fn, ok=True)
    except Exception as exc:  # the eager version is always correct; compiling is only faster
        logger.warning("DoRA's fused kernel is not available (%s: %s); using the eager version.",
                       type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        _compiled.update(fn=None, ok=False)
    return bool(_compiled["ok"])


def dora_layers(model) -> list[DoraLinearLayer]:
    return [m for m in model.modules() if isinstance(m, DoraLinearLayer) and type(m) is DoraLinearLayer]


def enable_norm_cache(model) -> list[DoraLinearLayer]:
    """Switch every DoRA linear layer of `model` to the cached norm; returns the layers (empty without DoRA)."""
    layers = dora_layers(model)
    for layer in layers:
        layer._vlmpref_norms = {}
        layer.forward = types.MethodType(_cached_forward, layer)
    return layers


def skip_zero_dropout(model) -> int:
    """Replace LoRA dropout modules with p == 0 (TRL disables dropout) by Identity.

    PEFT's DoRA path treats any Dropout module as active: it throws away the base layer's output and
    dequantizes and multiplies the full weight a second time. With p == 0 the two are equal, so Identity
    lets DoRA reuse the base output. Returns how many modules were replaced.
    """
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, dropout in list(dropouts.items()):
                if isinstance(dropout, torch.nn.Dropout) and dropout.p == 0:
                    dropouts[name] = torch.nn.Identity()
                    replaced += 1
    return replaced


def invalidate(layers: list[DoraLinearLayer]) -> None:
    """Forget the norms: call after every change of the adapter weights (each optimizer step)."""
    for layer in layers:
        layer._vlmpref_norms.clear()


def disable_norm_cache(layers: list[DoraLinearLayer]) -> None:
    """Give the layers PEFT's own forward back."""
    for layer in layers:
        if "forward" in layer.__dict__:
            del layer.forward
        layer.__dict__.pop("_vlmpref_norms", None)

"""How much a trained CoA-LoRA adapter depends on the configuration (the diagnosis's first question, #37 factor 1).

For target i under configuration c the correction is ΔW_i(c) = s · B_i (I + U_i(c)) A_i. Over a set of
configurations (the run's training set) this module splits it into the part every configuration shares,
s · B_i (I + Ū_i) A_i with Ū_i the mean of U_i(c), and the configuration-dependent part s · B_i (U_i(c) − Ū_i) A_i,
and reports their Frobenius norms against each other and against the base weight. No forward pass is needed: U_θ is
evaluated on the configurations' features, and ‖B M A‖_F comes from r × r Gram matrices.

If the configuration-dependent part is a small fraction of the shared part, the adapter is in effect one shared LoRA,
whatever the configuration.
"""
from __future__ import annotations

import math

import pandas as pd
import torch

from coa_lora.configs.model_config import ModelConfig
from coa_lora.lora.adapter import CoALoRAModel, config_features


def product_norms(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """‖B M_c A‖_F for each c, without forming the ``(out, in)`` products.

    Shapes: a ``(r, in)``, b ``(out, r)``, m ``(C, r, r)`` -> ``(C,)``. Uses ‖BMA‖² = tr(Mᵀ (BᵀB) M (AAᵀ)).
    """
    ga, gb = a @ a.T, b.T @ b  # (r, r) each
    squared = torch.einsum("cji,jk,ckl,li->c", m, gb, m, ga)
    return squared.clamp_min(0).sqrt()


def correction_spread(coa: CoALoRAModel, configs: list[ModelConfig]) -> pd.DataFrame:
    """One row per target: how much its correction moves with the configuration, over ``configs``.

    Columns: ``target``, ``layer``, ``kind``;
    ``u_mean`` ‖Ū‖_F / ‖I‖_F (how far the mean correction is from the identity);
    ``u_spread`` RMS over c of ‖U(c) − Ū‖_F / ‖I‖_F;
    ``delta_to_weight`` ‖s B (I + Ū) A‖_F / ‖W‖_F (the shared correction against the base weight ``W`` the wrapper holds);
    ``config_share`` RMS over c of ‖s B (U(c) − Ū) A‖_F / ‖s B (I + Ū) A‖_F (the configuration-dependent part
    against the shared part; 0 for a plain LoRA or a fresh U_θ).
    """
    if coa.network is None:
        raise ValueError("This adapter has no U_θ (a plain LoRA): its correction cannot depend on the configuration.")
    if not configs:
        raise ValueError("Pass at least one configuration (the run's training set).")
    r = coa.options.r
    with torch.no_grad():
        us = torch.stack([coa.network(config_features(c, coa.kinds).to(coa.network.out.weight.device))
                          for c in configs], dim=1)  # (targets, C, r, r)
        rows = []
        eye = torch.eye(r, dtype=us.dtype, device=us.device)
        for (name, wrapper), target, u in zip(coa.wrappers.items(), coa.layout.targets, us):
            a, b = wrapper.lora_A.weight.to(u.dtype), wrapper.lora_B.weight.to(u.dtype)
            mean = u.mean(dim=0)
            deviation = u - mean  # (C, r, r)
            shared = float(product_norms(a, b, (eye + mean)[None])[0]) * wrapper.scaling
            moving = product_norms(a, b, deviation) * wrapper.scaling  # (C,)
            weight = float(torch.linalg.matrix_norm(wrapper.base_layer.weight.to(u.dtype)))
            rows.append({
                "target": name, "layer": target.layer, "kind": target.kind,
                "u_mean": float(torch.linalg.matrix_norm(mean)) / math.sqrt(r),
                "u_spread": float(torch.linalg.matrix_norm(deviation).pow(2).mean().sqrt()) / math.sqrt(r),
                "delta_to_weight": shared / weight if weight > 0 else math.nan,
                "config_share": float(moving.pow(2).mean().sqrt()) / shared if shared > 0 else math.nan,
            })
    return pd.DataFrame(rows)


__all__ = ["correction_spread", "product_norms"]

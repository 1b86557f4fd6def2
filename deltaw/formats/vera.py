"""PEFT VeRA adapters: frozen random projections shared by all modules, trained scaling vectors.

ΔW = (Λ_b B[:out, :]) (Λ_d A[:, :in]) (Kopiczko et al. 2024, "VeRA", eq. 2), with A (r, in_max)
and B (out_max, r) shared, Λ_b = diag(``vera_lambda_b``) (out,), Λ_d = diag(``vera_lambda_d``)
(r,), as PEFT's ``get_delta_weight`` computes it; transposed for ``fan_in_fan_out``. A and B are
the saved ``base_model.vera_A`` / ``vera_B`` (``save_projection``) or, as PEFT itself does,
regenerated from ``projection_prng_key``: a CPU ``torch.Generator`` seeded with it draws A then B,
each uniform in ±√(6 / fan_in) (Kaiming uniform, gain √2), with in_max / out_max the largest
in / out features over the adapted modules. A module's ``in`` appears in no adapter tensor, so
the base is required. ΔW is kept factored (rank ≤ r).
"""

from __future__ import annotations

import math
import re

import torch

from deltaw.delta import LowRankDelta
from deltaw.deltas import Deltas, Skipped
from deltaw.formats.names import PEFT_PREFIX, NameMatcher
from deltaw.formats.peft import NOT_IN_BASE, other_tensor_reason
from deltaw.formats.tensors import TensorStore
from deltaw.hub import BaseRequired

_LAMBDA = re.compile(r"^(?P<module>.+)\.(?P<part>vera_lambda_b|vera_lambda_d)(?:\.[^.]+)?$")
_PROJECTION = re.compile(r"^base_model\.vera_(?P<which>A|B)(?:\.[^.]+)?$")


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """PEFT VeRA's ``_kaiming_init``: uniform in ±√3 · √2 / √fan_in, fan_in = shape[1]."""
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def read(store: TensorStore, config: dict, base: TensorStore | None, matcher: NameMatcher | None,
         out: Deltas, require_base: bool = True) -> None:
    """Add every VeRA module of ``store`` to ``out`` (see the module docstring); without a base
    (``require_base=False``, for ``deltaw info``) none, with a note."""
    if base is None:
        if require_base:
            raise BaseRequired(f"{store.source}: a VeRA adapter: its shared projections are cut to each "
                               "module's in_features, which only the base model tells; pass the base (--base)")
        out.notes.append("a VeRA adapter: its modules' shapes (in_features) are known only with the base (--base)")
        return
    lambdas: dict[str, dict[str, str]] = {}
    projections: dict[str, str] = {}
    for key in store.keys():
        if match := _LAMBDA.match(key):
            lambdas.setdefault(match["module"].removeprefix(PEFT_PREFIX), {})[match["part"]] = key
        elif match := _PROJECTION.match(key):
            projections[match["which"]] = key
        else:
            reason = other_tensor_reason(key, config, "a VeRA tensor")
            out.skipped.append(Skipped(key.removeprefix(PEFT_PREFIX), reason))
    transposed = bool(config.get("fan_in_fan_out"))
    modules = {}
    for module, keys in lambdas.items():
        base_key = matcher.match(module + ".weight")
        if base_key is None or len(keys) < 2:
            out.skipped.append(Skipped(module, NOT_IN_BASE if base_key is None
                                       else "has only one of vera_lambda_b / vera_lambda_d"))
            continue
        shape = tuple(base.shape(base_key))
        out_features, in_features = (shape[1], shape[0]) if transposed else shape[:2]
        if store.shape(keys["vera_lambda_b"])[0] != out_features or len(shape) != 2:
            out.skipped.append(Skipped(module, f"vera_lambda_b {list(store.shape(keys['vera_lambda_b']))} "
                                               f"does not fit the base weight {list(shape)}"))
            continue
        modules[module] = (base_key, shape, out_features, in_features, keys)
    if not modules:
        return
    read_A, read_B = _projections(store, config, projections, modules)
    for module, (base_key, shape, out_features, in_features, keys) in modules.items():
        lambda_b, lambda_d = store.reader(keys["vera_lambda_b"]), store.reader(keys["vera_lambda_d"])
        name = base_key.removesuffix(".weight")
        out.deltas[name] = LowRankDelta(
            name=name, shape=shape, read_base=base.reader(base_key), rank=store.shape(keys["vera_lambda_d"])[0],
            scale=1.0, transposed=transposed,
            read_A=lambda lambda_d=lambda_d, n=in_features: lambda_d().float()[:, None] * read_A()[:, :n],
            read_B=lambda lambda_b=lambda_b, m=out_features: lambda_b().float()[:, None] * read_B()[:m, :],
        )


def _projections(store, config, saved, modules):
    """Readers of the shared A (r, in_max) and B (out_max, r): saved, or regenerated as PEFT does."""
    if "A" in saved and "B" in saved:
        return (lambda: store.get(saved["A"]).float()), (lambda: store.get(saved["B"]).float())
    r = config["r"]
    out_max = max(m[2] for m in modules.values())
    in_max = max(m[3] for m in modules.values())
    key = config.get("projection_prng_key", 0)

    def regenerate():
        generator = torch.Generator(device="cpu").manual_seed(key)
        A = kaiming_uniform((r, in_max), generator)
        return A, kaiming_uniform((out_max, r), generator)

    return (lambda: regenerate()[0]), (lambda: regenerate()[1])

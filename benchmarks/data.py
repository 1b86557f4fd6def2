"""Synthetic checkpoints with the shapes of real models, written once to a scratch folder.

- :func:`lora_adapter`: a PEFT LoRA adapter folder (``adapter_config.json`` +
  ``adapter_model.safetensors``) on every linear module of every decoder layer of a Llama-shaped
  model: q, k, v, o, gate, up, down.
- :func:`dense_pair`: a base model and a full fine-tune of it as Hugging Face model folders, one
  safetensors shard per decoder layer plus ``model.safetensors.index.json``; ΔW = W_ft − W_base is
  a low-rank signal plus Gaussian noise. The shards of the largest pair are shared (symlinked)
  by the smaller ones, so 4-, 8- and 16-layer models cost the disk space of the 16-layer one.

Only the decoder layers' linear modules are written (no embeddings, norms or LM head): they are
the matrices the tools being compared spend their time on. Everything is seeded, so the same
arguments give the same bytes; a folder is reused when its ``_spec.json`` matches the request.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

DEFAULT_DATA = Path(__file__).resolve().parent / "_data"


@dataclass(frozen=True)
class ModelShape:
    """The linear-module shapes of a Llama-style decoder (weights stored (out, in))."""

    name: str
    hidden: int
    intermediate: int
    kv: int  # k/v projection output size: num_key_value_heads · head_dim
    layers: int

    def modules(self) -> list[tuple[str, tuple[int, int]]]:
        """(module path inside one layer, (out, in)) for the 7 linear modules."""
        h, i, kv = self.hidden, self.intermediate, self.kv
        return [
            ("self_attn.q_proj", (h, h)),
            ("self_attn.k_proj", (kv, h)),
            ("self_attn.v_proj", (kv, h)),
            ("self_attn.o_proj", (h, h)),
            ("mlp.gate_proj", (i, h)),
            ("mlp.up_proj", (i, h)),
            ("mlp.down_proj", (h, i)),
        ]

    def largest(self) -> int:
        """Elements of the largest matrix."""
        return max(o * n for _, (o, n) in self.modules())


LLAMA2_7B = ModelShape("Llama-2-7B", hidden=4096, intermediate=11008, kv=4096, layers=32)
LLAMA32_1B = ModelShape("Llama-3.2-1B", hidden=2048, intermediate=8192, kv=512, layers=16)
# Seconds-long stand-ins for CI's smoke run: same module structure, tiny sizes.
TINY = ModelShape("tiny", hidden=64, intermediate=160, kv=32, layers=2)


def _spec_matches(folder: Path, spec: dict) -> bool:
    try:
        return json.loads((folder / "_spec.json").read_text()) == spec
    except (OSError, ValueError):
        return False


def _write_spec(folder: Path, spec: dict) -> None:
    (folder / "_spec.json").write_text(json.dumps(spec, indent=1))


def _fresh(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


#: The factors' condition numbers of a trained-like adapter (``lora_adapter(..., trained=True)``):
#: the medians measured on the r = 64 MiniLM adapters of ``deltaw reproduce`` (A: κ₂ 28–89,
#: median 35; B, grown from zero: κ₂ 76–7,263, median 284).
TRAINED_COND = {"A": 35.0, "B": 300.0}


def _conditioned(rows: int, cols: int, cond: float, gen: torch.Generator) -> torch.Tensor:
    """(rows, cols), rows ≥ cols, with singular values log-spaced from 1 to 1/cond in random bases."""
    Q = torch.linalg.qr(torch.randn(rows, cols, generator=gen)).Q
    P = torch.linalg.qr(torch.randn(cols, cols, generator=gen)).Q
    return (Q * torch.logspace(0, -math.log10(cond), cols)) @ P.T


def lora_adapter(folder: Path, shape: ModelShape, *, rank: int = 64, alpha: float = 128.0,
                 layers: int | None = None, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                 trained: bool = False) -> Path:
    """Write (or reuse) a PEFT LoRA adapter on every linear module of ``layers`` decoder layers.

    A is Kaiming-uniform-like (PEFT's initialisation), B Gaussian (a trained B is not zero), both
    stored in ``dtype``: well-conditioned factors (κ₂ ≈ 1.2–1.3). With ``trained``, A and B have
    the condition numbers of trained factors (:data:`TRAINED_COND`), σ log-spaced. Returns the
    adapter folder.
    """
    layers = shape.layers if layers is None else layers
    spec = {"kind": "lora", "shape": asdict(shape), "rank": rank, "alpha": alpha, "layers": layers,
            "dtype": str(dtype), "seed": seed, **({"trained": TRAINED_COND} if trained else {})}
    if _spec_matches(folder, spec):
        return folder
    _fresh(folder)
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        for module, (out, inp) in shape.modules():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            if trained:
                A = _conditioned(inp, rank, TRAINED_COND["A"], gen).T / math.sqrt(rank)  # (r, in)
                B = _conditioned(out, rank, TRAINED_COND["B"], gen) * 0.01  # (out, r)
            else:
                bound = 1 / math.sqrt(inp)
                A = (torch.rand((rank, inp), generator=gen) * 2 - 1) * bound  # (r, in)
                B = torch.randn((out, rank), generator=gen) * 0.01  # (out, r)
            tensors[f"{prefix}.lora_A.weight"] = A.to(dtype).contiguous()
            tensors[f"{prefix}.lora_B.weight"] = B.to(dtype).contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "target_modules": sorted({m.split(".")[-1] for m, _ in shape.modules()}),
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "init_lora_weights": True,
        "base_model_name_or_path": f"synthetic/{shape.name}",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    _write_spec(folder, spec)
    return folder


@dataclass(frozen=True)
class DensePair:
    base: Path
    tuned: Path
    shape: ModelShape
    layers: int


def _dense_layer(shape: ModelShape, layer: int, signal_rank: int, seed: int):
    """The base and fine-tuned tensors of one decoder layer (bf16).

    W_base ~ N(0, 0.02²). ΔW = U diag(σ) Vᵀ + noise with σ_i = 0.5 · 0.85^i (i < signal_rank,
    a decaying low-rank signal) and iid noise of std 2e-4 (a Marchenko–Pastur bulk).
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + layer)
    base, tuned = {}, {}
    for module, (out, inp) in shape.modules():
        key = f"model.layers.{layer}.{module}.weight"
        W = torch.randn((out, inp), generator=gen) * 0.02
        U = torch.linalg.qr(torch.randn((out, signal_rank), generator=gen)).Q  # (out, s)
        V = torch.linalg.qr(torch.randn((inp, signal_rank), generator=gen)).Q  # (in, s)
        sigma = 0.5 * 0.85 ** torch.arange(signal_rank, dtype=torch.float32)
        delta = (U * sigma) @ V.T + torch.randn((out, inp), generator=gen) * 2e-4
        base[key] = W.to(torch.bfloat16)
        tuned[key] = (W + delta).to(torch.bfloat16)
    return base, tuned


def _write_model_folder(folder: Path, shard_dir: Path, layers: int, total: int, keys: list[list[str]]):
    """A model folder whose index lists ``layers`` per-layer shards (symlinks into ``shard_dir``)."""
    _fresh(folder)
    weight_map = {}
    for layer in range(layers):
        name = f"model-{layer + 1:05d}-of-{layers:05d}.safetensors"
        os.symlink(os.path.relpath(shard_dir / f"layer-{layer:03d}.safetensors", folder), folder / name)
        for key in keys[layer]:
            weight_map[key] = name
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": layers}))


def dense_pairs(root: Path, shape: ModelShape, layer_counts: list[int], *, signal_rank: int = 32,
                seed: int = 0) -> dict[int, DensePair]:
    """Write (or reuse) base + fine-tune model folders with each number of layers in ``layer_counts``.

    Returns ``{layers: DensePair}``. Shards live in ``root/shards-{base,tuned}``; each model
    folder ``root/L{layers}/{base,tuned}`` holds symlinks and an index.
    """
    total = max(layer_counts)
    spec = {"kind": "dense", "shape": asdict(shape), "layers": total, "signal_rank": signal_rank,
            "seed": seed, "counts": sorted(layer_counts)}
    pairs = {n: DensePair(root / f"L{n}" / "base", root / f"L{n}" / "tuned", shape, n) for n in layer_counts}
    if _spec_matches(root, spec):
        return pairs
    _fresh(root)
    keys = []
    for side in ("base", "tuned"):
        (root / f"shards-{side}").mkdir()
    for layer in range(total):
        base, tuned = _dense_layer(shape, layer, signal_rank, seed)
        save_file(base, str(root / "shards-base" / f"layer-{layer:03d}.safetensors"), metadata={"format": "pt"})
        save_file(tuned, str(root / "shards-tuned" / f"layer-{layer:03d}.safetensors"), metadata={"format": "pt"})
        keys.append(list(base))
    for n, pair in pairs.items():
        _write_model_folder(pair.base, root / "shards-base", n, total, keys)
        _write_model_folder(pair.tuned, root / "shards-tuned", n, total, keys)
    _write_spec(root, spec)
    return pairs

"""A family of checkpoints of one tiny Llama, made once per test session, with float64 references.

- LoRA adapters (PEFT, ``init_lora_weights=False`` so B ≠ 0) at ranks 2 and 8, seeds 0 and 1, on
  q_proj (64×64), v_proj (32×64, grouped-query) and down_proj (64×96);
- a DoRA adapter; a GPT-2 ``fan_in_fan_out`` adapter with its base;
- a full fine-tune: the base plus a rank-3 update and noise per weight matrix, saved sharded in
  bf16 (``max_shard_size="20KB"``).

References are float64 numpy arrays of ΔW formed from PEFT's own ``merge_and_unload()`` (the
oracle) or from the saved bf16 fine-tune, in the base tensor's layout.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from builders import make_adapter, save_model, tiny_gpt2, tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj"]
RANKS = (2, 8)
SEEDS = (0, 1)


@dataclass
class Checkpoint:
    path: Path
    delta: dict[str, np.ndarray]  # module name → ΔW (float64, base layout)


@dataclass
class Family:
    base: Path
    base_weights: dict[str, np.ndarray]  # module name → W (float64)
    lora: dict[tuple[int, int], Checkpoint]  # (rank, seed) → adapter
    dora: Checkpoint
    full: Checkpoint
    gpt2_base: Path
    gpt2_base_weights: dict[str, np.ndarray]
    gpt2: Checkpoint


def _weights(state: dict) -> dict[str, np.ndarray]:
    return {k.removesuffix(".weight"): v.detach().double().numpy() for k, v in state.items()
            if k.endswith(".weight") and v.dim() == 2}


def _adapter(folder: Path, base: dict[str, np.ndarray], model, seed: int, **options) -> Checkpoint:
    torch.manual_seed(100 + seed)  # after the model's own seeding: the LoRA init draws from here
    merged = _weights(make_adapter(model, folder, **options))
    names = [n for n in merged if any(n.endswith(t) for t in options["target_modules"])]
    return Checkpoint(folder, {n: merged[n] - base[n] for n in names})


def _full_finetune(folder: Path, base_model, base: dict[str, np.ndarray]) -> Checkpoint:
    g = torch.Generator().manual_seed(7)
    tuned = tiny_llama()
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if p.dim() == 2:
                m, n = p.shape
                low = torch.randn(m, 3, generator=g) @ torch.randn(3, n, generator=g)
                p += 0.02 * low / 3 + 3e-3 * torch.randn(m, n, generator=g)
    tuned = tuned.to(torch.bfloat16)
    tuned.save_pretrained(folder, safe_serialization=True, max_shard_size="20KB")
    saved = _weights({k: v.float() for k, v in tuned.state_dict().items()})
    return Checkpoint(folder, {n: saved[n] - base[n] for n in base})


@functools.cache
def family() -> Family:
    root = Path(tempfile.mkdtemp(prefix="deltaw-analysis-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    base_model = tiny_llama()
    save_model(base_model, root / "base")
    base = _weights(base_model.state_dict())
    lora = {(r, s): _adapter(root / f"r{r}-s{s}", base, tiny_llama(), s, target_modules=TARGETS, r=r,
                             lora_alpha=2 * r)
            for r in RANKS for s in SEEDS}
    dora = _adapter(root / "dora", base, tiny_llama(), 0, target_modules=TARGETS, r=4, lora_alpha=8,
                    use_dora=True)
    full = _full_finetune(root / "full", base_model, base)
    gpt2_model = tiny_gpt2()
    save_model(gpt2_model, root / "gpt2-base")
    gpt2_base = _weights(gpt2_model.state_dict())
    gpt2 = _adapter(root / "gpt2", gpt2_base, tiny_gpt2(), 0, target_modules=["c_attn", "c_proj"], r=4,
                    lora_alpha=8, fan_in_fan_out=True)
    return Family(root / "base", base, lora, dora, full, root / "gpt2-base", gpt2_base, gpt2)


def svd64(matrix: np.ndarray):
    """numpy's float64 SVD, the reference."""
    return np.linalg.svd(np.asarray(matrix, dtype=np.float64), full_matrices=False)


def phi_reference(U_a: np.ndarray, U_b: np.ndarray) -> np.ndarray:
    """Eq. 4 entry by entry, straight from the definition."""
    r_a, r_b = U_a.shape[1], U_b.shape[1]
    phi = np.empty((r_a, r_b))
    for i in range(1, r_a + 1):
        for j in range(1, r_b + 1):
            phi[i - 1, j - 1] = np.linalg.norm(U_a[:, :i].T @ U_b[:, :j]) ** 2 / min(i, j)
    return phi


def cuda_or_skip():
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")

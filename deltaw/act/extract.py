"""``extract``: a LoRA from a full fine-tune, ΔW = W_ft − W_base read one module at a time.

With a rank known up front (``--rank R``, or ``--max-rank`` as the bound of ``--energy`` /
``--sv-ratio``) the top triplets come from :func:`top_svd`, which tries two routes in turn:

1. ``"gram-eigh"`` (:mod:`deltaw.linalg.gram_topk`): the top-k eigenpairs of ΔW's smaller Gram
   (``syrk`` + LAPACK ``syevr`` for a subset of eigenpairs), ΔW projected onto their span. No
   iteration, so a spectrum flat around k costs nothing extra. Kept when the estimated loss of
   captured energy from rounding fits in the 0.1 % promise for the error it reached.
2. ``"randomized"``, where it does not (an optimum tail near the rounding of ‖ΔW‖²_F, as with a
   fast-decaying spectrum in float32): the randomized range finder with power iterations (Halko,
   Martinsson & Tropp 2011, Alg. 4.4 + 5.1), a wide sketch (oversampling p = max(10, k/2)),
   repeated until the error has converged, else the full SVD.

Either way the written ΔW' is the projection of ΔW onto the span of its kept left (or right)
vectors, so its error² = ‖ΔW‖²_F − Σ_{i≤k} σᵢ² is exact, and it stays within 0.1 % of the
Eckart–Young optimum even where the spectrum is flat around k (tests/test_act_extract.py
measures both routes against numpy's float64 SVD). ``full=True`` (or a rule needing the whole
spectrum) takes the full SVD instead.

Which modules can carry a LoRA is read from the fine-tune's model class (its ``config.json``, the
model built on the meta device, no weights): ``nn.Linear``, ``nn.Embedding``, ``nn.Conv1d/2d/3d``
and GPT-2's ``Conv1D`` (PEFT ``fan_in_fan_out``). New weights (a classification head) are carried
whole as PEFT ``modules_to_save``.

References
----------
Halko, Martinsson & Tropp 2011, SIAM Review 53(2). Eckart & Young 1936, Psychometrika 1.
Golub & Van Loan 2013, "Matrix Computations", 4th ed., §8.6.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from deltaw._inputs import check_dtype
from deltaw.act.adapter import Plan, Target, check_format, check_outputs, kept_modules, output_dtype, write_adapter
from deltaw.act.cut import TOP_ONLY, cut
from deltaw.act.rules import RankRule
from deltaw.errors import DeltawError
from deltaw.formats import write_kohya
from deltaw.formats.names import PEFT_PREFIX, NameMatcher
from deltaw.formats.tensors import TensorStore
from deltaw.linalg import (check_memory, dense_method, exact_math, one_thread, orthonormal_basis, resolve_device,
                           robust_svd)
from deltaw.linalg.gram_topk import certified_loss, gram_top_svd
from deltaw.linalg.routes import energy as frobenius_energy
from deltaw.naming import module_filter

log = logging.getLogger("deltaw")

#: The randomized SVD stops when the Aitken-extrapolated remaining decrease of its error is below
#: this share of the error, 1/50 of the 0.1 % that extract promises: inside a flat noise bulk the
#: error first decreases in steps far below what remains (2e-4 stopped at +0.39 % on the 1B-shaped
#: MLP modules of benchmarks/act.py; 2e-5 reaches +0.002 %).
TOLERANCE = 2e-5
#: The promise: error within this share of the Eckart–Young optimum.
PROMISE = 1e-3
#: Power iterations at most, before the full SVD takes over (unless the estimate is within PROMISE).
MAX_ITER = 30
# architecture name suffix → PEFT task_type
_TASKS = (("ForSequenceClassification", "SEQ_CLS"), ("ForTokenClassification", "TOKEN_CLS"),
          ("ForQuestionAnswering", "QUESTION_ANS"), ("ForCausalLM", "CAUSAL_LM"), ("LMHeadModel", "CAUSAL_LM"),
          ("ForConditionalGeneration", "SEQ_2_SEQ_LM"), ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"))


def oversample(k: int) -> int:
    """Sketch columns beyond k: max(10, k/2) (Halko et al. §4.2 use p = 5–10 for fast decay;
    slowly decaying spectra converge in fewer power iterations with a wider sketch)."""
    return max(10, k // 2)


def top_svd(M: torch.Tensor, k: int | None, *, energy: float | None = None, full: bool = False,
            gram: bool = True, tolerance: float = TOLERANCE, max_iter: int = MAX_ITER,
            generator: torch.Generator | None = None):
    """(U, S, Vh, method, iterations) of one dense matrix: its top-``k`` triplets.

    First the Gram route (:func:`~deltaw.linalg.gram_topk.gram_top_svd`, ``"gram-eigh"``): the
    top-k eigenpairs of the smaller Gram, ΔW projected onto them. Its error is exact (a
    projection); it is kept when the loss of captured energy it may have suffered
    (:func:`~deltaw.linalg.gram_topk.certified_loss`: the projection's measured shortfall against
    the computed eigenvalues plus the estimated rounding) fits in the 0.1 % promise:
    δ ≤ t²(1 − 1/1.001²), t the error it reached, so that the optimum tail
    t_opt² ≥ t² − δ ≥ (t / 1.001)². Where it does not (an optimum tail near the rounding of
    ‖ΔW‖²_F: a fast-decaying spectrum, an almost low-rank ΔW; eigenvectors lost inside a large
    cluster of equal σ), the randomized route runs:

    the randomized range finder with power iterations (Halko et al. 2011, Alg. 4.4), iterated
    until the error converges rather than a fixed number of times. After each iteration
    B = QᵀM (which the next half-step needs anyway, as Bᵀ = MᵀQ) gives the error of the current
    approximation exactly, tₙ² = ‖M‖²_F − Σ_{i≤k} σᵢ(B)² (Pythagoras: QQᵀM is a projection).
    tₙ decreases to the optimum geometrically; the iteration stops when the remaining decrease,
    extrapolated from the last two steps (Aitken: Δₙ·ρ/(1 − ρ), ρ = Δₙ/Δₙ₋₁), is below
    ``tolerance``·tₙ. A run that has not converged after ``max_iter`` iterations, with the
    extrapolated excess above 0.1 %, takes the full SVD instead (logged).

    Parameters
    ----------
    M : Tensor, (m, n)
    k : int or None
        None (or ``full``): the full SVD.
    energy : float, optional
        ‖M‖²_F (float64), when the caller has it.
    gram : bool
        Try the Gram route first (False: the randomized route directly).

    Returns
    -------
    U : (m, k), S : (k,), Vh : (k, n), method : "gram-eigh", "randomized" or "full",
    iterations : int (power iterations; 0 for the other routes)

    Notes
    -----
    Below float32 resolution (an optimum tail under ~1e-7·‖M‖_F) the error is the rounding of
    the math dtype, not the method's; use ``math_dtype=torch.float64`` there.
    """
    m, n = M.shape
    if full or k is None or dense_method((m, n), k + oversample(k)) == "full":
        U, S, Vh = robust_svd(M)
        return U, S, Vh, "full", 0
    total = float(frobenius_energy(M)) if energy is None else energy
    if gram:
        try:
            U, S, Vh, eigenvalues = gram_top_svd(M, k)
        except (np.linalg.LinAlgError, torch.linalg.LinAlgError) as err:  # the eigensolver failed or gave fewer than k pairs (non-finite ΔW, a large cluster)
            log.warning("%d×%d: Gram route failed (%s); randomized SVD instead", m, n, str(err).splitlines()[0])
        else:
            tail = total - float((S.double() ** 2).sum())
            loss = certified_loss((m, n), S, eigenvalues, total, M.dtype)
            if loss <= tail * (1 - 1 / (1 + PROMISE) ** 2):
                return U, S, Vh, "gram-eigh", 0
            log.debug("%d×%d: the Gram route may have lost %.3g of captured energy, more than the promise allows "
                      "of its tail² %.3g; randomized SVD instead", m, n, loss, tail)
    width = min(k + oversample(k), m, n)
    omega = torch.randn((n, width), generator=generator, dtype=M.dtype, device="cpu").to(M.device)
    Q = orthonormal_basis(M @ omega)  # (m, l)
    tails: list[float] = []
    for iteration in range(1, max_iter + 1):
        B = Q.mT @ M  # (l, n)
        gram = (B.double() @ B.double().mT)  # (l, l): σ(B)² are its eigenvalues
        kept = float(torch.linalg.eigvalsh(gram).flip(0)[:k].clamp(min=0).sum())
        tails.append(math.sqrt(max(total - kept, 0.0)))
        remaining = _remaining(tails)
        if remaining is not None and remaining <= tolerance * tails[-1]:
            break
        Q = orthonormal_basis(M @ orthonormal_basis(B.mT))  # (m, l)
    else:
        B = Q.mT @ M  # Q moved on after the last B: the factors must come from the final Q
        remaining = _remaining(tails)
        if remaining is None or remaining > PROMISE * tails[-1]:
            log.warning("randomized SVD of a %d×%d matrix not converged in %d iterations; taking the full SVD",
                        m, n, max_iter)
            U, S, Vh = robust_svd(M)
            return U, S, Vh, "full", max_iter
    with one_thread(B):
        U_small, S, Vh = robust_svd(B)
    return (Q @ U_small)[:, :k], S[:k], Vh[:k], "randomized", iteration


def residual_norm(M: torch.Tensor, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> float:
    """‖M − U diag(S) Vh‖_F for M (m, n) and the kept triplets U (m, k), S (k,), Vh (k, n), summed
    from the residual itself, a block of rows at a time (no second m × n matrix).

    A top-k SVD's Pythagorean error √(‖M‖²_F − Σ σᵢ²) cancels: each σᵢ² carries a rounding of
    eps·σᵢ², so where the kept share is near 1 the difference loses most of its digits (0.8 %
    of the error at 99.997 % kept, float32). The residual's own entries carry an error of
    about eps·|M|, a far smaller share of a norm that is the error itself.
    """
    total = 0.0
    step = max(1, (1 << 22) // max(1, M.shape[1]))
    for start in range(0, M.shape[0], step):
        block = M[start:start + step] - (U[start:start + step] * S) @ Vh
        total += float(block.double().pow(2).sum())
    return math.sqrt(total)


def _remaining(tails: list[float]) -> float | None:
    """The extrapolated further decrease of a geometrically converging, decreasing sequence;
    None while it cannot be told (fewer than three terms, not yet contracting, or a step that
    was still large: a sketch inside a flat noise bulk can stall for a step and then move on,
    so a stalled step after a large one is not convergence)."""
    if len(tails) < 3:
        return None
    last, before = tails[-2] - tails[-1], tails[-3] - tails[-2]
    if before > TOLERANCE * tails[-1] and last <= 0:
        return None
    if last <= 0:
        return 0.0  # two steps without progress above rounding
    if before <= 0 or last >= before:
        return None
    ratio = last / before
    return last * ratio / (1 - ratio)


def module_kinds(folder: str | os.PathLike) -> tuple[dict[str, str] | None, str | None]:
    """The kind of every module of the model in ``folder`` and its PEFT task type, from config.json.

    Returns
    -------
    kinds : dict of module path → "linear", "embedding", "conv" or "conv1d_t" (GPT-2 Conv1D),
        or None when the folder has no usable config.json or transformers is not installed.
    task_type : str or None
        From the architecture's name (``…ForSequenceClassification`` → ``SEQ_CLS``, …).
    """
    folder = Path(folder)
    if folder.is_file() or not (folder / "config.json").is_file():
        return None, None
    try:
        import transformers
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None, None
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        architecture = (getattr(config, "architectures", None) or [""])[0]
        model_class = getattr(transformers, architecture, None) or transformers.AutoModel
        with torch.device("meta"):
            model = model_class(config) if model_class is not transformers.AutoModel \
                else transformers.AutoModel.from_config(config)
    except Exception as err:  # any failure only loses the module types, which are then guessed
        log.warning("%s: could not build the model from config.json (%s)", folder, str(err).splitlines()[0])
        return None, None
    kinds = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding):
            kinds[name] = "embedding"
        elif isinstance(module, Conv1D):
            kinds[name] = "conv1d_t"
        elif isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            kinds[name] = "conv"
        elif isinstance(module, torch.nn.Linear):
            kinds[name] = "linear"
    task = next((t for suffix, t in _TASKS if architecture.endswith(suffix)), None)
    return kinds, task


def extract(finetuned: str | os.PathLike, base: str | os.PathLike, out: str | os.PathLike, *,
            rank: int | None = None, energy: float | None = None, sv_ratio: float | None = None,
            max_rank: int | None = None, full: bool = False, modules: str | None = None,
            format: str | None = None, dtype: str | None = None, overwrite: bool = False,
            pdf: str | os.PathLike | None = None, device: str = "auto", math_dtype: torch.dtype = torch.float32,
            seed: int = 0, progress: Callable | None = None):
    """Extract a LoRA from a full fine-tune: per module the best rank-k approximation of W_ft − W_base.

    Parameters
    ----------
    finetuned, base : path
        Hugging Face model folders (single or sharded) or single files.
    out : path
    rank, energy, sv_ratio, max_rank
        The rank rule (:class:`~deltaw.act.rules.RankRule`). ``rank`` (or ``max_rank``) bounds
        the top-k SVD; ``energy`` / ``sv_ratio`` without ``max_rank`` need the full spectrum.
    full : bool
        The exact full SVD of every module, whatever the rule.
    modules : str, optional
        Only modules whose name matches this regex (``re.search``).
    format : "peft" (default) or "kohya"
    dtype : "float32", "float16" or "bfloat16", optional
        Default: the fine-tune's dtype.
    seed : int
        Seeds the randomized SVD.
    overwrite, pdf, device, math_dtype, progress
        As :func:`deltaw.act.resize.resize`.

    Returns
    -------
    deltaw.records.resize.Resize
        ``method`` says per module how σ were computed; ``retained`` and ``error`` are those of
        the written ΔW', exact.
    """
    from deltaw.records.resize import Resize, Skipped

    rule = RankRule(rank, energy, sv_ratio, max_rank)
    check_dtype(math_dtype)
    module_filter(modules)  # a bad regular expression is refused before any work
    check_outputs(out, overwrite, pdf, inputs=(finetuned, base))
    fmt = check_format(format, "peft")
    from deltaw.load import check_base, detect_format

    if (kind := detect_format(finetuned)) != "full":
        raise DeltawError(f"{finetuned}: a {kind} LoRA adapter, not a full fine-tune; "
                          "to cut a LoRA's rank use deltaw resize")
    check_base(Path(base))
    tuned_store, base_store = TensorStore.open(finetuned), TensorStore.open(base)
    kinds, task = module_kinds(finetuned)
    plan, targets, pairs, skipped, notes = _plan(tuned_store, base_store, kinds, task, fmt, dtype, modules, base)
    device = resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    k = None if full else rule.top_k
    cuts = []
    for name, shape, tuned_key, base_key in pairs:
        rows = shape[0]
        check_memory(name, (rows, max(1, torch.Size(shape[1:]).numel())), k, math_dtype, device,
                     alternative="--rank K or --max-rank K (a top-k SVD)")
        with exact_math():
            M = (tuned_store.get(tuned_key).to(device, math_dtype)
                 - base_store.get(base_key).to(device, math_dtype)).reshape(rows, -1)
            total = float(frobenius_energy(M))
            if not math.isfinite(total):  # NaN/Inf in either weight: no SVD, no adapter for it
                skipped.append((name, NOT_FINITE))
                notes.append(f"{name}: {NOT_FINITE}")
                continue
            U, S, Vh, method, _ = top_svd(M, k, energy=total, generator=generator)
            kept = cut(name, shape, None, U.cpu(), S.cpu(), Vh.cpu(), total, method, rule, math_dtype)
            if method in TOP_ONLY and kept.new_rank:
                kept.error = residual_norm(M, kept.U.to(M.device), kept.S.to(M.device), kept.Vh.to(M.device))
            del M
        cuts.append(kept)
        if progress is not None:
            progress(len(cuts), len(pairs), name)
    if not cuts:
        why = (f"every module's ΔW holds NaN/Inf ({finetuned} or {base})" if pairs else
               f"no module matching {modules!r} can carry a LoRA" if modules else
               f"no weight matrix has a counterpart of the same name and shape in the base {base}; "
               "is this the base model it was fine-tuned from?")
        raise DeltawError(f"{finetuned}: {why}")
    report = Resize(operation="extract", inputs=[str(finetuned)], weights=[1.0], base=str(base),
                    rule=rule.describe(), output=str(out), format=fmt, dtype=str(plan.dtype).removeprefix("torch."),
                    modules=kept_modules(cuts, targets), skipped=[Skipped(name=n, reason=r) for n, r in skipped],
                    carried=list(plan.carried), notes=notes)
    write_adapter(out, cuts, targets, plan, report, overwrite=overwrite, pdf=pdf)
    return report


#: Why a module with NaN/Inf in its ΔW is left out of an extracted adapter.
NOT_FINITE = "NaN/Inf in the fine-tune or its base weight: not extracted (check the checkpoint)"


def _plan(tuned: TensorStore, base: TensorStore, kinds, task, fmt, dtype, modules, base_path):
    """Pair the fine-tune's weights with the base's and decide how each is written.

    Returns (plan, targets, pairs, skipped, notes); ``pairs`` are (name, shape, tuned key, base key)
    of the modules to extract, named by the fine-tune's module path (the names PEFT matches).
    """
    matcher = NameMatcher(base.keys())
    # The model built from config.json may name modules with another wrapper prefix than the
    # checkpoint (a headless LlamaModel: layers.0…, the checkpoint: model.layers.0…).
    kind_of = NameMatcher(kinds) if kinds is not None else None
    pattern = module_filter(modules)
    targets, pairs, skipped, notes, new_weights = {}, [], [], [], []
    changed_vectors = 0
    found_dtype = None
    for key in tuned.keys():
        shape = tuple(tuned.shape(key))
        base_key = matcher.match(key)
        if base_key is None or tuple(base.shape(base_key)) != shape:
            new_weights.append(key)
            continue
        if len(shape) < 2 or not key.endswith(".weight"):
            changed_vectors += not torch.equal(tuned.get(key), base.get(base_key))
            continue
        name = key.removesuffix(".weight")
        if pattern is not None and not pattern.search(name):
            continue
        kind = "conv" if len(shape) > 2 else "linear"
        if kinds is not None:
            kind = kinds.get(kind_of.match(name))
            if kind is None:
                skipped.append((name, "not a Linear, Embedding or Conv module of the model: PEFT cannot adapt it"))
                continue
        found_dtype = found_dtype or tuned.get(key).dtype
        targets[name] = Target(name if fmt == "peft" else write_kohya.kohya_key(name),
                               transposed=kind in ("embedding", "conv1d_t") and fmt == "peft",
                               embedding=kind == "embedding" and fmt == "peft")
        pairs.append((name, shape, key, base_key))
    kind_at = {n: kinds.get(kind_of.match(n)) for n in targets} if kinds is not None else {}
    fan_in_fan_out = any(k == "conv1d_t" for k in kind_at.values())
    if fan_in_fan_out and fmt == "peft":
        # PEFT's fan_in_fan_out is one flag per adapter; GPT-2-style models use Conv1D throughout.
        for name in [n for n in targets if kind_at[n] == "linear"]:
            skipped.append((name, "nn.Linear in a model whose Conv1D modules need fan_in_fan_out, "
                                  "which PEFT sets once per adapter"))
            del targets[name]
        pairs = [p for p in pairs if p[0] in targets]
    if kinds is None:
        notes.append("module types unknown (no config.json the installed transformers can build): every "
                     "2-D weight is written as a Linear LoRA, 4-D ones as Conv")
    plan = Plan(fmt, output_dtype(dtype, found_dtype), base_model=str(base_path), fan_in_fan_out=fan_in_fan_out)
    if fmt == "peft":
        plan.template = None
        heads = sorted({k.rsplit(".", 1)[0] for k in new_weights if "." in k})
        plan.carried = {PEFT_PREFIX + k: tuned.reader(k) for k in new_weights}
        if heads:
            plan.modules_to_save = heads
        plan.task_type = task
    elif new_weights:
        notes.append(f"{len(new_weights)} weights not in the base (a new head?) not carried: kohya files "
                     "hold LoRA modules only (write --format peft to keep them)")
    if changed_vectors:
        notes.append(f"{changed_vectors} 1-D tensors (biases, norms) of the fine-tune are not in the LoRA: "
                     "LoRA adapts weight matrices only")
    return plan, targets, pairs, skipped, notes

"""Turning truncated modules into a written adapter (PEFT or kohya) and its ``deltaw.resize/1`` report.

Each :class:`~deltaw.act.cut.Cut` becomes one LoRA module whose merged ΔW' is exactly U_k Σ_k V_kᵀ
under the written scale: for PEFT s' = α/r' (α/√r' with rsLoRA) from the written config by PEFT's
own rule, for kohya s' = the input's alpha/r (1 for new adapters); the factors are divided by √s'
(:meth:`Cut.factors`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deltaw.act.cut import Cut
from deltaw.act.output import check_out_folder, staged_folder
from deltaw.errors import DeltawError
from deltaw.formats import write_kohya, write_peft
from deltaw.formats.names import PEFT_PREFIX
from deltaw.formats.peft import scale_for

REPORT_NAME = "deltaw-kept.json"
FORMATS = ("peft", "kohya")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Target:
    """Where and how one module is written.

    Attributes
    ----------
    path : str
        PEFT: the module path in the model; kohya: the module key.
    transposed : bool
        PEFT ``fan_in_fan_out`` or embedding: the base stores (in, out) and ΔW = (s·B@A)ᵀ.
    embedding : bool
        PEFT embedding LoRA (``lora_embedding_A`` / ``lora_embedding_B``).
    scale : float
        kohya: the scale alpha/r to write (kept from the input); PEFT takes it from the config.
    bias : Tensor or None
        The bias update s·b of a PEFT ``lora_bias`` adapter, carried as b' = s·b / s'.
    """

    path: str
    transposed: bool = False
    embedding: bool = False
    scale: float = 1.0
    bias: torch.Tensor | None = None


@dataclass
class Plan:
    """The output adapter's format and everything carried over from the input.

    Attributes
    ----------
    format : "peft" or "kohya"
    dtype : torch.dtype
        Of the written factors.
    template : dict or None
        The input's PEFT config (kept but for ranks and the module list), None for a new one.
    base_model : str or None
        ``base_model_name_or_path`` of a new PEFT adapter.
    fan_in_fan_out : bool
        A new PEFT adapter on a model storing (in, out) weights.
    carried : dict of key → reader
        Tensors copied unchanged (PEFT ``modules_to_save``: a classifier head).
    modules_to_save, task_type : list of str, str, optional
        Of a new PEFT adapter (a template keeps its own).
    """

    format: str
    dtype: torch.dtype
    template: dict | None = None
    base_model: str | None = None
    fan_in_fan_out: bool = False
    carried: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)
    modules_to_save: list[str] | None = None
    task_type: str | None = None


def output_dtype(requested: str | None, found: torch.dtype | None) -> torch.dtype:
    """``--dtype`` if given, else the input's floating dtype (float32 when unknown)."""
    if requested is not None:
        if requested not in DTYPES:
            raise DeltawError(f"unknown --dtype {requested!r}; use {', '.join(DTYPES)}")
        return DTYPES[requested]
    return found if found in DTYPES.values() else torch.float32


def check_format(fmt: str | None, default: str) -> str:
    fmt = fmt or default
    if fmt not in FORMATS:
        raise DeltawError(f"unknown --format {fmt!r}; use peft or kohya")
    return fmt


def adapter_files(cuts: list[Cut], targets: dict[str, Target], plan: Plan):
    """The written tensors and (PEFT) config; each cut's triplets are freed once converted.

    Returns
    -------
    tensors : dict of key → Tensor
    config : dict or None
    """
    kept = [c for c in cuts if c.new_rank > 0]
    tensors: dict[str, torch.Tensor] = {}
    config = None
    if plan.format == "peft":
        config = write_peft.new_config(plan.template, {targets[c.name].path: c.new_rank for c in kept},
                                       base_model=plan.base_model, fan_in_fan_out=plan.fan_in_fan_out,
                                       modules_to_save=plan.modules_to_save, task_type=plan.task_type)
    for c in kept:
        target = targets[c.name]
        if plan.format == "peft":
            scale = scale_for(config, target.path, c.new_rank)
            L, R = c.factors(scale, plan.dtype)
            tensors.update(write_peft.lora_tensors(target.path, L, R, c.shape, transposed=target.transposed,
                                                   embedding=target.embedding))
            if target.bias is not None:
                tensors[f"{PEFT_PREFIX}{target.path}.lora_B.bias"] = (target.bias.double() / scale).to(plan.dtype)
        else:
            L, R = c.factors(target.scale, plan.dtype)
            tensors.update(write_kohya.lora_tensors(target.path, L, R, c.shape, target.scale))
        c.U = c.S = c.Vh = None  # the factors hold them now; frees the float32 copies
    for key, read in plan.carried.items():
        tensors[key] = read().contiguous()
    if plan.format == "kohya":
        config = None
    return tensors, config


def write_adapter(out: str | os.PathLike, cuts: list[Cut], targets: dict[str, Target], plan: Plan, report,
                  *, overwrite: bool = False, pdf: str | os.PathLike | None = None) -> None:
    """Write the adapter, its report (``deltaw-kept.json``) and optionally the PDF figure, all or none.

    Parameters
    ----------
    out : path
        The output folder: new, empty, or replaced with ``overwrite``.
    cuts : list of Cut
        Every module (dropped ones, new_rank 0, are listed in the report only).
    targets : dict of name → Target
    plan : Plan
    report : deltaw.records.resize.Resize
    pdf : path, optional
        A PDF report of the retained energy per module and of each cut on its spectrum.
    """
    if not any(c.new_rank > 0 for c in cuts):
        raise DeltawError(f"{out}: nothing to write: the ΔW of every module ({len(cuts)}) is zero")
    inside = _pdf_inside(out, pdf)
    tensors, config = adapter_files(cuts, targets, plan)
    from deltaw.atomic import staged_outputs

    with contextlib.ExitStack() as stack:
        # A PDF outside the folder is rendered beside its path and renamed onto it only once the
        # folder is in place; one inside the folder is written into the staging folder, so it
        # arrives with the adapter (the folder swap would otherwise remove it).
        pdf_tmp = stack.enter_context(staged_outputs(pdf))[0] if pdf is not None and inside is None else None
        with staged_folder(out, overwrite) as stage:
            if plan.format == "peft":
                write_peft.write_adapter(stage, config, tensors)
            else:
                ranks = {targets[c.name].path: c.new_rank for c in cuts if c.new_rank > 0}
                write_kohya.write_lora(stage / write_kohya.WEIGHTS_NAME, tensors, ranks)
            (stage / REPORT_NAME).write_text(json.dumps(report.to_json(), indent=1, allow_nan=False) + "\n")
            if pdf is not None:
                from deltaw.reports.retained_report import render_retained

                if inside is not None:
                    target = stage / inside
                    if target.exists():
                        raise DeltawError(f"{pdf}: is a file of the written adapter; give the PDF another name")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    render_retained(report, target)
                else:
                    render_retained(report, pdf_tmp)


def _where(path: str | os.PathLike) -> Path:
    """``path`` made absolute with its folder's links resolved, its own name kept (a link named as
    the output is replaced, not followed)."""
    path = Path(path).expanduser()
    return path.parent.resolve() / path.name


def _pdf_inside(out: str | os.PathLike, pdf: str | os.PathLike | None) -> Path | None:
    """The PDF's path inside the output folder, None when it lies outside (or is not asked for).

    Raises
    ------
    DeltawError
        When the PDF is the output folder itself, or one of the adapter's own files.
    """
    if pdf is None:
        return None
    folder, where = _where(out), _where(pdf)
    if where == folder:
        raise DeltawError(f"{pdf}: is also the output folder (--out); give the PDF its own file name, "
                          f"e.g. {Path(out) / 'kept.pdf'}")
    if folder not in where.parents:
        return None
    inside = where.relative_to(folder)
    if str(inside) in _ADAPTER_FILES:
        raise DeltawError(f"{pdf}: is a file of the written adapter; give the PDF another name")
    return inside


_ADAPTER_FILES = {REPORT_NAME, write_peft.WEIGHTS_NAME, write_peft.CONFIG_NAME, write_kohya.WEIGHTS_NAME}


def kept_modules(cuts: list[Cut], targets: dict[str, Target]) -> list:
    """The report's :class:`~deltaw.records.resize.KeptModule` of every cut, in input order.

    ``name`` is deltaw's module name (:func:`deltaw.load.module_name`: the PEFT prefix and an
    encoder's task wrapper dropped), ``written_as`` the module's path or key in the written file.
    """
    from deltaw.load import module_name
    from deltaw.records.resize import KeptModule

    # named as deltaw names modules everywhere (analyze, compare); written_as is the path in the file
    return [KeptModule(name=module_name(c.name), written_as=targets[c.name].path if c.new_rank else "",
                       shape=c.matrix_shape, old_rank=c.old_rank, new_rank=c.new_rank, energy=c.energy,
                       retained=c.retained, error=c.error, method=c.method, sigma=c.sigma, notes=list(c.notes))
            for c in cuts]


def input_conflict(out: str | os.PathLike | None, inputs, pdf: str | os.PathLike | None = None) -> str | None:
    """Why writing the adapter folder ``out`` (or the report ``pdf``) would destroy one of the
    command's ``inputs``, in one line; None when it would not.

    ``out`` is written by replacing the whole folder (with ``--overwrite``), so it may be neither
    an input, nor inside one, nor hold one; the PDF may be neither an input nor inside an input
    folder. Inputs that are not local paths (a Hub id, None) are skipped.
    """
    sources = [(given, Path(os.path.realpath(os.path.expanduser(given))))
               for given in inputs if given is not None and os.path.exists(os.path.expanduser(str(given)))]
    for given, source in sources:
        if out is not None:
            target, entry = _written(out)
            if target == source:
                return (f"{out} is the input {given}: writing the adapter there would replace it; "
                        "give --out another folder")
            if source in target.parents or source in entry.parents:
                return (f"{out} lies inside the input {given}: writing it would alter the input; "
                        "give --out a folder outside it")
            if target in source.parents:
                return (f"{out} holds the input {given}: replacing the folder would delete the input; "
                        "give --out another folder")
        if pdf is not None:
            target, entry = _written(pdf)
            if target == source or source in target.parents or source in entry.parents:
                where = "is the input" if target == source else "lies inside the input"
                return f"{pdf} {where} {given}: writing the report would alter it; give --pdf another path"
    return None


def _written(path: str | os.PathLike) -> tuple[Path, Path]:
    """(where ``path`` leads, symlinks resolved; the directory entry an atomic write replaces: its
    folder resolved, its own name kept, so a link inside an input counts as inside it)."""
    path = Path(os.path.abspath(os.path.expanduser(path)))
    return Path(os.path.realpath(path)), Path(os.path.realpath(path.parent)) / path.name


def check_outputs(out: str | os.PathLike, overwrite: bool, pdf: str | os.PathLike | None, inputs=()) -> Path:
    """All output checks, before any work: :func:`input_conflict` with ``inputs``, then the folder
    and the PDF can be written."""
    from deltaw.atomic import check_writable

    if problem := input_conflict(out, inputs, pdf):
        raise DeltawError(problem)
    folder = check_out_folder(out, overwrite)
    # A PDF inside the output folder is written with the adapter (its folder need not exist yet).
    if pdf is not None and _pdf_inside(out, pdf) is None:
        check_writable(pdf)
    return folder

"""The ΔWs of one checkpoint: an ordered mapping from module name to :class:`~deltaw.delta.Delta`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from deltaw.delta import Delta
from deltaw.records import Skipped  # the record the analysis JSON lists as 'skipped'


@dataclass(eq=False)
class Deltas(Mapping):
    """All ΔW of a checkpoint, by module name, plus what was left out and why.

    Attributes
    ----------
    checkpoint : str
        The path the user gave.
    base : str or None
        The base checkpoint's path, if any.
    format : str
        ``"peft"``, ``"kohya"``, ``"loralib"`` or ``"full"``.
    skipped : list of Skipped
        Tensors not analysed (unmatched names, shape mismatches, 1-D parameters,
        ``modules_to_save`` replacements), each with its reason.
    notes : list of str
        Facts the user must know to read the numbers (e.g. a PiSSA-initialised adapter).
    details : dict
        Format facts for ``deltaw info`` and reports (ranks, scaling, dtype, base expected …).
    """

    checkpoint: str
    base: str | None
    format: str
    deltas: dict[str, Delta] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> Delta:
        return self.deltas[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.deltas)

    def __len__(self) -> int:
        return len(self.deltas)

    def __repr__(self) -> str:
        return (
            f"Deltas({self.format}, {len(self)} modules, {len(self.skipped)} skipped, "
            f"checkpoint={self.checkpoint!r})"
        )

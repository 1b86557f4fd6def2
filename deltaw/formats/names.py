"""Pairing tensor names across checkpoints saved with different wrapper prefixes.

A ``BertForSequenceClassification`` fine-tune stores ``bert.encoder.layer.0…`` while the base,
saved as ``BertModel``, stores ``encoder.layer.0…``; a PEFT adapter stores
``base_model.model.<module>``. Names are paired when one is the other with leading dotted
components removed, and only when that pairing is unique.
"""

from __future__ import annotations

from collections import defaultdict

PEFT_PREFIX = "base_model.model."


def _suffixes(name: str, min_parts: int) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(0, len(parts) - min_parts + 1)]


class NameMatcher:
    """Finds, for a name from one checkpoint, the unique name of another that it stands for.

    Parameters
    ----------
    targets : iterable of str
        The names to match against (e.g. the base checkpoint's tensor names).
    min_parts : int
        The fewest dotted components a shared suffix must have, so ``weight`` alone
        never pairs two tensors.
    """

    def __init__(self, targets, min_parts: int = 2):
        self.min_parts = min_parts
        self._exact = set(targets)
        self._by_suffix: dict[str, set[str]] = defaultdict(set)
        for target in self._exact:
            for suffix in _suffixes(target, min_parts):
                self._by_suffix[suffix].add(target)

    def match(self, name: str) -> str | None:
        """The target ``name`` stands for, or None when there is none or it is ambiguous."""
        if name in self._exact:
            return name
        for suffix in _suffixes(name, self.min_parts):  # longest first
            hits = self._by_suffix.get(suffix)
            if hits:
                return next(iter(hits)) if len(hits) == 1 else None
        return None

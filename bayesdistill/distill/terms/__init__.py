"""Function-space distillation terms of the student's Pyro objective, one module each, found by
name in one registry.

- :mod:`.base`: :class:`DistillTerm` (the teacher as the term's reference), :class:`PairTerm`
  (feature pairs ``{teacher_path: student_path}`` with a float or per-pair weight),
  :class:`TeacherFeatures`, :func:`default_pairs`;
- :mod:`.registry`: :func:`register_term`, :data:`TERMS`, :func:`available_terms`,
  :func:`get_term` and the command-line helpers;
- the terms: :class:`KD` (``kd``), :class:`VID` (``vid``), :class:`PKT` (``pkt``),
  :class:`Hint` (``hint``), :class:`TinyBERT` (``tinybert``), :class:`PrivilegedKD`
  (``privileged_kd``, generalized distillation: the teacher reads privileged inputs).

Every term reports ``loss`` (the batch mean of -log_factor, before the weight, nats per example)
and its own metrics; ``bd.fit`` records them as ``distill/<name>/<metric>`` history columns.
"""

from .base import DistillTerm, PairTerm, TeacherFeatures, default_pairs
from .registry import (
    TERMS,
    TermOption,
    TermSpec,
    add_term_options,
    available_terms,
    get_term,
    register_term,
    term_defaults,
    term_options,
    terms_from_options,
    unregister_term,
)

# the terms register themselves on import, in this order (the CLI's --method order)
from .kd import KD  # noqa: E402  isort: skip
from .vid import VID, gaussian_entropy  # noqa: E402  isort: skip
from .pkt import PKT  # noqa: E402  isort: skip
from .hint import Hint  # noqa: E402  isort: skip
from .tinybert import TinyBERT, attention_weights  # noqa: E402  isort: skip
from .privileged import PrivilegedKD  # noqa: E402  isort: skip

__all__ = [
    "DistillTerm", "PairTerm", "TeacherFeatures", "default_pairs",
    "KD", "VID", "PKT", "Hint", "TinyBERT", "PrivilegedKD", "gaussian_entropy", "attention_weights",
    "TERMS", "TermOption", "TermSpec", "register_term", "unregister_term", "available_terms", "get_term",
    "add_term_options", "term_options", "terms_from_options", "term_defaults",
]

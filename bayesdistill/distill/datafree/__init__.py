"""Data-free distillation from stored teacher statistics (Lopes, Fenu & Starner 2017).

A teacher ships a small record of its activation statistics instead of its training data; a
student is later distilled on inputs reconstructed from the record alone.

- :mod:`.record`: :func:`record` -> :class:`ActivationRecord` (per-class means and covariances of
  the temperature-scaled output, of every layer, or of spectral coefficients on the layer
  graphs; ``save``/``load``; the teacher's fingerprint refuses other teachers);
- :mod:`.spectral`: the layer graph's Laplacian and its spectral basis;
- :mod:`.reconstruct`: :func:`reconstruct` -> :class:`Reconstruction` (batched, CPU or GPU,
  progress bar; the paper's matching objective, or DeepInversion's batch statistics);
- :mod:`.student`: :func:`distill_on_inputs` (KD on transfer inputs labelled by the teacher),
  :func:`data_free_student` (reconstruct + distil in one call).

>>> rec = record(teacher, (x_train, y_train), kind="all", temperature=8)   # once, with the data
>>> rec.save("teacher.record.pt")                                          # ships with the teacher
>>> rec = ActivationRecord.load("teacher.record.pt")                       # later, without data
>>> result = data_free_student(student, teacher, rec, n=4000)
"""

from .reconstruct import OBJECTIVES, Reconstruction, reconstruct, sample_targets
from .record import OUTPUT, RECORD_KINDS, ActivationRecord, Block, record, teacher_fingerprint
from .spectral import graph_laplacian, layer_graph_adjacency, num_components, spectral_basis
from .student import DataFreeResult, data_free_student, distill_on_inputs, teacher_labels

__all__ = [
    "record", "ActivationRecord", "Block", "RECORD_KINDS", "OUTPUT", "teacher_fingerprint",
    "reconstruct", "Reconstruction", "OBJECTIVES", "sample_targets",
    "layer_graph_adjacency", "graph_laplacian", "spectral_basis", "num_components",
    "distill_on_inputs", "data_free_student", "DataFreeResult", "teacher_labels",
]

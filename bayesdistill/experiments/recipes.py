"""The recipes of the experiments: defaults as frozen dataclasses, in one place.

A recipe holds the hyperparameters of one pipeline; :class:`RunSettings` the options of a run
that are not hyperparameters (seed, device, draws, threads, ...). The command line takes its
defaults from here, the benchmarks import them from here, and a different recipe is one
``dataclasses.replace`` away::

    from bayesdistill.experiments import TeacherRecipe, fit_teacher
    recipe = TeacherRecipe(epochs=30)            # the rest as measured (see below)
    result = fit_teacher("runs/teacher", recipe, model="cnn-deep")

- :class:`TeacherRecipe`: ``bayesdistill fit`` (and the demo's teacher);
- :class:`DistillRecipe`: ``bayesdistill distill`` (and the demo's students);
- :class:`FunctionSpaceRecipe`: the demo's function-space comparison (a CNN teacher into MLPs);
- :class:`DemoRecipe`: ``bayesdistill demo``; :data:`QUICK_DEMO` its ``--quick`` variant;
- :class:`UncertaintyRecipe`: the OOD detection and selective prediction of every evaluated
  network (on unless ``RunSettings(ood=False)``, the command line's ``--no-ood``);
- :class:`RunSettings`: seed, device, posterior draws, threads, imports, overwrite, quiet;
- the family methods: :class:`GeneralizedRecipe` (``bayesdistill generalized``),
  :class:`RecordRecipe` (``bayesdistill record``), :class:`DataFreeRecipe` (``bayesdistill
  datafree``), :class:`GrowRecipe` (``bayesdistill grow``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional, Union

__all__ = [
    "TeacherRecipe",
    "DistillRecipe",
    "FunctionSpaceRecipe",
    "UncertaintyRecipe",
    "QuickSettings",
    "DemoRecipe",
    "RunSettings",
    "DEMO",
    "QUICK",
    "QUICK_DEMO",
    "PRUNING_PLOT_FRACTIONS",
    "PRUNING_PLOT_MAX_PROBE",
    "REGRESSION_NOISE",
    "PRIOR_METHOD",
    "GeneralizedRecipe",
    "RecordRecipe",
    "DataFreeRecipe",
    "GrowRecipe",
]


class _Recipe:
    """Shared helpers: ``to_dict()`` (plain values) and ``replace(**changes)``."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))  # type: ignore[call-overload]

    def replace(self, **changes: Any):
        return replace(self, **changes)  # type: ignore[type-var]


def _plain(value: Any) -> Any:
    """Tuples as lists (JSON), recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class TeacherRecipe(_Recipe):
    """The teacher's hyperparameters (``bayesdistill fit`` for options not given, and the demo).

    ``channels`` applies to the ``cnn`` architecture (the others have their own widths).
    """

    epochs: int = 100
    lr: float = 3e-3
    batch_size: int = 128
    #: standard deviation of the isotropic Normal(0, s^2) weight prior
    prior_scale: float = 1.0
    lr_schedule: Optional[str] = "cosine"
    channels: int = 32
    # A tempered ("cold") posterior: the converged mean-field posterior of the full ELBO
    # (kl_weight=1) is under-confident on MNIST-1D (benchmarks/quality.py, 3 seeds: ECE
    # 0.066-0.075); with 0.5 the ECE is 0.033-0.040 at 93.0-95.3% accuracy. docs/benchmarks.md.
    kl_weight: float = 0.5


@dataclass(frozen=True)
class DistillRecipe(_Recipe):
    """The student's settings (``bayesdistill distill`` for options not given, and the demo).

    Student training (``epochs``, ``lr``, ``batch_size``, ``kl_weight``, ``lr_schedule``), the
    alignment (``criterion``, one of ``bd.distill.CRITERIA``; ``compensation``: least-squares
    re-fits on the teacher's training inputs), the prior (``prior_scale``: the ``scale`` of
    ``priors.TeacherPosterior``: ``"unit"``, ``"posterior"``, ``"learned"`` or a positive float)
    and the start (``init`` of ``bd.student_from_teacher``: ``"prior-mean"`` = the aligned teacher
    means, ``"module"`` = the network's own initialization, ``"teacher"`` = the aligned teacher
    posterior itself).
    """

    epochs: int = 150
    lr: float = 3e-3
    batch_size: int = 128
    criterion: str = "snr"
    # "unit": measured best (docs/distillation.md, synthetic regression, 5+5 seeds, and
    # docs/distillation-mnist1d.md, 3 seeds): the teacher's own scales pin the student to the
    # aligned teacher and "learned" was no better.
    prior_scale: Union[str, float] = "unit"
    init: str = "prior-mean"
    compensation: bool = True
    kl_weight: float = 0.5
    lr_schedule: Optional[str] = "cosine"


_DISTILL = DistillRecipe()


@dataclass(frozen=True)
class FunctionSpaceRecipe(_Recipe):
    """The demo's function-space comparison: the teacher into Bayesian students of another kind.

    The default: the demo's teacher (cnn-deep) into Bayesian MLPs (``student``, the default
    widths, prior Normal(0, 1)) on the whole training set, plain vs KD vs VID+KD (``variants``:
    name -> registered term names, ``()`` = plain), ``epochs`` each; the training settings are
    the distill recipe's and the terms' options their registered defaults. Students reading the
    teacher's features run the teacher on every step, so this stage is kept short.
    """

    student: str = "mlp"
    epochs: int = 50
    train_fraction: float = 1.0
    variants: tuple[tuple[str, tuple[str, ...]], ...] = (("plain", ()), ("kd", ("kd",)), ("vid+kd", ("vid", "kd")))
    lr: float = _DISTILL.lr
    batch_size: int = _DISTILL.batch_size
    kl_weight: float = _DISTILL.kl_weight
    lr_schedule: Optional[str] = _DISTILL.lr_schedule

    def variant_methods(self) -> dict[str, list[str]]:
        """``variants`` as a dict: name -> list of methods."""
        return {name: list(methods) for name, methods in self.variants}


@dataclass(frozen=True)
class UncertaintyRecipe(_Recipe):
    """Does each network know what it does not know? The pipelines' uncertainty step
    (:mod:`bayesdistill.experiments.uncertainty`; docs/uncertainty.md).

    ``kinds``: the OOD kinds of ``bd.datasets.ood`` scored against the in-distribution test set;
    ``None``: every kind that transforms the test inputs (all but ``held-out-classes``, which needs
    a network trained without those classes): MNIST-1D reversed, phase-shuffled, scaled, noise;
    digits inverted, rotated, noise. ``scores``: the AUROCs' uncertainty scores.
    ``selective_score``: what ranks the answers of the selective prediction; ``coverage``: the
    coverage of the reported selective accuracy. ``num_samples``: posterior draws of these
    evaluations (``None``: the run's ``num_samples``; each network costs one predictive pass over
    the test set and one per OOD kind).
    """

    kinds: Optional[tuple[str, ...]] = None
    scores: tuple[str, ...] = ("entropy", "mutual_information")
    selective_score: str = "max_probability"
    coverage: float = 0.9
    num_samples: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kinds is not None:
            object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "scores", tuple(self.scores))
        if not 0.0 < float(self.coverage) <= 1.0:
            raise ValueError(f"coverage must lie in (0, 1], got {self.coverage!r}")
        if self.num_samples is not None and int(self.num_samples) < 1:
            raise ValueError(f"num_samples must be a positive integer or None, got {self.num_samples!r}")


@dataclass(frozen=True)
class QuickSettings(_Recipe):
    """``demo --quick``: a seconds-long smoke run on a small subset (every stage).

    ``ood_samples``: posterior draws of the OOD detection and selective prediction (fewer than
    ``num_samples``: that step scores every network on the test set and on each OOD set).
    """

    epochs: int = 3
    train_fraction: float = 0.1
    num_samples: int = 8
    ood_samples: int = 4


#: The quick settings of ``bayesdistill demo --quick`` (``QuickSettings()``).
QUICK = QuickSettings()


@dataclass(frozen=True)
class DemoRecipe(_Recipe):
    """``bayesdistill demo``: a teacher, the Bayesian students, the function-space students.

    The teacher (``teacher_model`` with the ``teacher`` recipe) on the whole ``dataset``; the
    student ``student`` (narrower and one layer shallower than ``cnn-deep``) on
    ``student_fraction`` of the training set with the ``distill`` recipe, against a plain student;
    then the ``function_space`` comparison. ``num_samples``: posterior draws of every test metric.
    ``uncertainty``: the OOD detection and selective prediction of every network (with
    ``RunSettings(ood=True)``). ``quick``: this is the ``--quick`` variant (:meth:`quick`).
    """

    dataset: str = "mnist1d"
    teacher_model: str = "cnn-deep"
    teacher: TeacherRecipe = field(default_factory=TeacherRecipe)
    teacher_fraction: float = 1.0
    student: str = "cnn-small"
    student_fraction: float = 0.1
    distill: DistillRecipe = field(default_factory=DistillRecipe)
    function_space: FunctionSpaceRecipe = field(default_factory=FunctionSpaceRecipe)
    num_samples: int = 32
    uncertainty: UncertaintyRecipe = field(default_factory=UncertaintyRecipe)
    is_quick: bool = False

    def quick(self, settings: QuickSettings = QUICK) -> "DemoRecipe":
        """The smoke-run variant: ``settings.epochs`` epochs in every stage, the teacher and the
        function-space students on ``settings.train_fraction`` of the data, fewer draws
        (``settings.ood_samples`` for the OOD detection and selective prediction)."""
        return replace(
            self,
            teacher=replace(self.teacher, epochs=settings.epochs),
            teacher_fraction=settings.train_fraction,
            distill=replace(self.distill, epochs=settings.epochs),
            function_space=replace(self.function_space, epochs=settings.epochs,
                                   train_fraction=settings.train_fraction),
            num_samples=settings.num_samples,
            uncertainty=replace(self.uncertainty, num_samples=settings.ood_samples),
            is_quick=True,
        )


#: The demo's recipe at its defaults (``DemoRecipe()``).
DEMO = DemoRecipe()
#: The smoke run of ``bayesdistill demo --quick``: ``DEMO.quick()`` (:data:`QUICK` applied).
QUICK_DEMO = DEMO.quick()


@dataclass(frozen=True)
class RunSettings(_Recipe):
    """How a pipeline runs (not what it learns).

    Args:
        seed: seeds initialization, batch order, SVI noise, alignment and the evaluation draws.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        num_samples: posterior draws S for the test metrics.
        monitor: evaluate on the test split after every epoch (``eval_*`` history columns).
        quiet: no progress bar, stage counter or messages.
        threads: ``torch.set_num_threads`` for the run (``None``: torch's default); recorded
            with the run (CPU results are bit-reproducible at a fixed thread count only).
        allow_imports: whether models and data sets named by import path
            (``package.module:factory``) may be imported: ``True``, or the top-level packages
            allowed (``("mypkg",)``); ``False`` refuses them.
        overwrite: replace a run that the output folder already holds (default: refuse).
        ood: score every evaluated network's OOD detection and selective prediction
            (:class:`UncertaintyRecipe`; the command line's ``--no-ood`` turns it off: it costs a
            predictive pass over the test set and one per OOD set, per network).
    """

    seed: int = 0
    device: str = "auto"
    num_samples: int = 32
    monitor: bool = False
    quiet: bool = False
    threads: Optional[int] = None
    allow_imports: Union[bool, tuple[str, ...]] = False
    overwrite: bool = False
    ood: bool = True


#: Fractions of hidden units removed in ``distill``'s pruning_curve.png, and the most probe
#: inputs those curves' compensating re-fits use (kept cheap: a diagnostic plot).
PRUNING_PLOT_FRACTIONS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
PRUNING_PLOT_MAX_PROBE = 1024

#: Observation noise of the regression likelihood (initial value; it is learned).
REGRESSION_NOISE = 0.1

#: The distillation method that is not a term: the aligned teacher posterior as the student's prior.
PRIOR_METHOD = "prior"


# --------------------------------------------------------------------------- the family methods
@dataclass(frozen=True)
class GeneralizedRecipe(_Recipe):
    """``bayesdistill generalized``: generalized distillation (Lopez-Paz et al. 2016) on a
    ``privileged-*`` data set, once per seed (``bd.distill.generalized_distillation``).

    The defaults are the setup of docs/privileged.md (benchmarks/privileged.py): Bayesian softmax
    regression for teacher and students, prior ``Normal(0, prior_scale^2)``, ``epochs`` (300) of
    Adam at ``lr`` with a cosine schedule on batches of ``batch_size`` (200: the paper's whole
    training set per step), a cold posterior (``kl_weight`` 0.2), soft labels at ``temperature`` T
    with imitation weight ``imitation`` (lambda; the paper's 1 and 1), the teacher sampled from its
    posterior at every step (``teacher_mode``).
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    temperature: float = 1.0
    imitation: float = 1.0
    prior_scale: float = 1.0
    epochs: int = 300
    batch_size: int = 200
    lr: float = 0.05
    lr_schedule: Optional[str] = "cosine"
    kl_weight: float = 0.2
    teacher_mode: str = "sample"

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds or min(self.seeds) < 0:
            raise ValueError(f"seeds must name at least one seed, each >= 0, got {self.seeds}")


@dataclass(frozen=True)
class RecordRecipe(_Recipe):
    """``bayesdistill record``: a teacher's activation record (Lopes et al. 2017;
    ``bd.distill.datafree.record``) on its own training data.

    ``kind``: ``"top"``, ``"all"``, ``"spectral-all"`` or ``"spectral-pairs"`` (docs/datafree.md);
    ``temperature``: T of the recorded output (the paper's 8); ``spectral_fraction``: the share of
    each layer graph's eigenvectors the spectral kinds keep (0.3, as benchmarks/datafree.py).
    """

    kind: str = "all"
    temperature: float = 8.0
    spectral_fraction: float = 0.3
    batch_size: int = 512


@dataclass(frozen=True)
class DataFreeRecipe(_Recipe):
    """``bayesdistill datafree``: reconstruct inputs from a teacher's record, distil a Bayesian
    student on them by KD (``bd.distill.datafree.data_free_student``).

    Reconstruction: ``inputs`` inputs, ``steps`` Adam steps at ``reconstruct_lr`` in batches of
    ``reconstruct_batch_size``, ``objective`` ``"match"`` (the paper's) or ``"deepinversion"``
    (with ``feature_weight`` on the hidden layers' batch statistics and ``tv_weight`` on the
    inputs' total variation; unused by ``"match"``).
    The student (prior Normal(0, 1)) is fitted by SVI with the KD term at the record's temperature
    and weight ``kd_weight`` (1: soft labels alone) for ``epochs`` of Adam at ``lr``. The defaults
    are benchmarks/datafree.py's (docs/datafree.md), with 300 reconstruction steps.
    """

    inputs: int = 2000
    steps: int = 300
    reconstruct_lr: float = 0.05
    reconstruct_batch_size: int = 1000
    objective: str = "match"
    feature_weight: float = 1.0
    tv_weight: float = 1e-3
    epochs: int = 100
    lr: float = 1e-2
    batch_size: int = 128
    kl_weight: float = 0.5
    lr_schedule: Optional[str] = "cosine"
    kd_weight: float = 1.0
    teacher_mode: str = "sample"


@dataclass(frozen=True)
class GrowRecipe(_Recipe):
    """``bayesdistill grow``: a larger network grown from a small trained one (``bd.distill.grow``,
    ``bd.student_from_small``), then fitted by SVI; with ``compare`` also the same network from
    scratch with the same settings.

    ``mode``: ``"net2net"``, ``"embed"``, ``"zero"`` or ``"uniform"`` (docs/growth.md);
    ``prior_scale``: the old weights' prior scale (``"unit"``, ``"posterior"`` or a float);
    ``new_prior_scale``: the new weights' (1, as from scratch); ``init``: where q(w) starts
    (``"grown"``, ``"grown-posterior"``, ``"module"``). Training as docs/growth.md's experiment:
    30 epochs of Adam 3e-3, cosine, ``kl_weight`` 0.5.
    """

    mode: str = "net2net"
    prior_scale: Union[str, float] = "unit"
    new_prior_scale: float = 1.0
    init: str = "grown"
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 128
    kl_weight: float = 0.5
    lr_schedule: Optional[str] = "cosine"

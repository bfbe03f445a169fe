"""Does a network know what it does not know? The pipelines' OOD-detection and selective-prediction step.

Every network a pipeline evaluates (the teacher, the aligned untrained student, the distilled and
the plain student, the function-space students, a model given to ``evaluate``) gets, next to its
test accuracy, NLL and ECE, an :class:`UncertaintyResult`:

- **OOD detection** (:func:`bayesdistill.diagnostics.ood_detection`): the AUROC (and AUPR, FPR at
  95% TPR) of the predictive entropy and the mutual information, in-distribution test set
  against each OOD set of the run's data set. By default the **transformed-input kinds** of
  :func:`bayesdistill.datasets.ood` (:func:`default_kinds`: every kind but
  ``held-out-classes``): they transform the test inputs of the very data set the network was
  trained on, so they need no retraining (MNIST-1D: reversed, phase-shuffled, scaled, noise;
  digits: inverted, rotated, noise). Held-out classes need a network trained without them;
  they belong to ``benchmarks/uncertainty.py``, not to every run.
- **Selective prediction** (:func:`bayesdistill.diagnostics.selective_prediction`, ranked by
  the max probability): the area under the accuracy-coverage curve and the accuracy at
  coverage ``recipe.coverage`` (0.9).
- **kept**, where the run has a teacher: (student's mean AUROC - 0.5) / (teacher's mean AUROC -
  0.5) per score, the mean taken over the kinds (the share of the teacher's above-chance
  detection the student keeps; 0 = chance, negative = worse than chance), and the ratio of the
  selective areas (docs/uncertainty.md, where a multi-seed experiment measures it).

Regression networks get a result that says why nothing was computed (``applicable=False``), and a
classifier on a data set without built-in OOD sets gets the selective prediction only, with the
statement saying so. The values equal calling the two diagnostics on the same network with the
same draws (the posterior predictive of ``num_samples`` draws seeded by the run's seed, the same
draws for every set); each network costs one predictive pass over the test set and one over
each OOD set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .. import datasets
from ..bnn import BNN
from ..diagnostics import OODResult, SelectiveResult, plots
from ..diagnostics.uncertainty import DEFAULT_COVERAGES
from ..infer import predict
from .progress import Stages
from .recipes import UncertaintyRecipe
from .results import Result, live

__all__ = ["UncertaintyResult", "OODSets", "default_kinds", "ood_sets", "evaluate_uncertainty", "not_applicable",
           "with_kept",
           "roc_figure", "selective_figure", "UncertaintyStep", "uncertainty_step", "score_networks", "KEPT_FORMULA", "HELD_OUT_KIND", "BATCH_SIZE"]

#: The OOD kind that needs a network trained without those classes (not a default of the runs).
HELD_OUT_KIND = "held-out-classes"
#: How ``kept`` is computed (recorded with every result that has it).
KEPT_FORMULA = {"auroc": "(student mean AUROC - 0.5) / (teacher mean AUROC - 0.5) per score, the mean taken over "
                         "the OOD kinds",
                "selective_area": "student selective area / teacher selective area"}
#: Inputs per forward pass (that of bd.diagnostics.ood_detection, so the values are the same).
BATCH_SIZE = 1024


@dataclass
class UncertaintyResult(Result):
    """One network's OOD detection and selective prediction (``to_dict()``: its ``uncertainty`` entry).

    Attributes:
        applicable: ``False`` for a network nothing could be computed for (a regression
            network); ``statement`` says why.
        statement: what was computed, against which OOD sets and with how many draws, or why
            nothing (or only the selective prediction) was.
        dataset: the in-distribution data set.
        kinds: the OOD kinds scored (empty without built-in OOD sets).
        descriptions: kind -> what shifts (:attr:`bayesdistill.datasets.OODSet.description`).
        scores: the uncertainty scores of the AUROCs.
        num_samples, seed: the posterior draws and their seed (the OOD sets' seed too).
        num_in: in-distribution test inputs; num_ood: kind -> OOD inputs.
        auroc: kind -> score -> AUROC (OOD positive; 0.5 = chance).
        mean_auroc: score -> the mean AUROC over ``kinds``.
        ood: kind -> :meth:`bayesdistill.diagnostics.OODResult.to_dict` (AUPR, FPR at 95% TPR, ...).
        selective: :meth:`bayesdistill.diagnostics.SelectiveResult.to_dict`.
        selective_area: the area under the accuracy-coverage curve (1 - AURC).
        coverage, accuracy_at_coverage: the accuracy of the ``coverage`` most confident answers.
        kept: with a teacher in the run: ``{"reference", "formula", "auroc": score -> kept,
            "selective_area"}`` (``None`` for the teacher itself and runs without one; a kept
            AUROC is ``None`` where the teacher's mean AUROC is exactly 0.5).
    """

    applicable: bool
    statement: str
    dataset: Optional[str] = None
    kinds: list[str] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)
    scores: list[str] = field(default_factory=list)
    num_samples: Optional[int] = None
    seed: Optional[int] = None
    num_in: Optional[int] = None
    num_ood: dict[str, int] = field(default_factory=dict)
    auroc: dict[str, dict[str, float]] = field(default_factory=dict)
    mean_auroc: dict[str, float] = field(default_factory=dict)
    ood: dict[str, dict[str, Any]] = field(default_factory=dict)
    selective: Optional[dict[str, Any]] = None
    selective_area: Optional[float] = None
    coverage: Optional[float] = None
    accuracy_at_coverage: Optional[float] = None
    kept: Optional[dict[str, Any]] = None
    ood_results: dict[str, OODResult] = live(None)
    selective_result: Optional[SelectiveResult] = live()


@dataclass
class OODSets:
    """The OOD inputs of a run, built once and scored for every network of the run."""

    dataset: str
    seed: int
    inputs: dict[str, torch.Tensor]
    descriptions: dict[str, str]
    reason: Optional[str] = None  # why there are none


def default_kinds(dataset: str) -> tuple[str, ...]:
    """The OOD kinds a run scores by default: every kind of ``dataset`` (:func:`bayesdistill.datasets.ood_kinds`)
    that transforms its test inputs, i.e. all but ``held-out-classes``; ``()`` without built-in OOD sets."""
    try:
        kinds = datasets.ood_kinds(dataset)
    except (KeyError, ValueError, TypeError):
        return ()
    return tuple(k for k in kinds if k != HELD_OUT_KIND)


def _builtin(dataset: str) -> Optional[str]:
    key = dataset.strip().lower().replace("_", "-") if isinstance(dataset, str) else None
    return key if key in datasets.ood_kinds() else None


def ood_sets(dataset: str, recipe: UncertaintyRecipe, seed: int) -> OODSets:
    """The OOD inputs of ``recipe.kinds`` (default :func:`default_kinds`) for built-in ``dataset``,
    built by :func:`bayesdistill.datasets.ood` with ``seed``; none (with the reason) for a data set
    without built-in OOD sets.

    Raises:
        ValueError: a kind that the data set does not have, or ``held-out-classes`` (it needs a
            network trained without those classes: ``benchmarks/uncertainty.py``).
    """
    key = _builtin(dataset)
    if key is None:
        return OODSets(str(dataset), int(seed), {}, {}, reason=(
            f"bayesdistill.datasets has no OOD sets for data set {dataset!r} (built-in OOD sets: "
            f"{', '.join(sorted(datasets.ood_kinds()))}), so only the selective prediction was computed"))
    kinds = tuple(recipe.kinds) if recipe.kinds is not None else default_kinds(key)
    known = datasets.ood_kinds(key)
    bad = [k for k in kinds if k not in known or k == HELD_OUT_KIND]
    if bad:
        raise ValueError(f"OOD kinds {bad} cannot be scored in a run on {key}: choose from "
                         f"{', '.join(default_kinds(key))} ({HELD_OUT_KIND} needs a network trained without those "
                         "classes: benchmarks/uncertainty.py)")
    sets = {k: datasets.ood(key, k, seed=int(seed)) for k in kinds}
    return OODSets(key, int(seed), {k: s.ood for k, s in sets.items()}, {k: s.description for k, s in sets.items()})


def not_applicable(task: str, dataset: str) -> UncertaintyResult:
    """The result of a network that is not a classifier: nothing computed, and why."""
    return UncertaintyResult(False, f"not applicable: OOD detection and selective prediction score a classifier's "
                                    f"predictive distribution over classes; {dataset!r} is a {task} data set",
                             dataset=str(dataset))


def _tensors(test: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a labelled test set (a ``TensorDataset`` or an ``(x, y)`` pair)."""
    if isinstance(test, (tuple, list)) and len(test) == 2:
        return test[0], test[1]
    tensors = getattr(test, "tensors", None)
    if tensors is None or len(tensors) < 2:
        raise TypeError(f"expected a labelled TensorDataset or an (x, y) pair, got {type(test).__name__}")
    return tensors[0], tensors[1]


def _probs(bnn: BNN, x: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """Per-draw class probabilities ``[S, N, C]`` (float64) of the posterior predictive, as
    :func:`bayesdistill.diagnostics.ood_detection` computes them (the same draws for every set)."""
    logits, _ = predict(bnn, (x,), num_samples=num_samples, batch_size=BATCH_SIZE, seed=seed)
    return torch.softmax(logits.double(), dim=-1)


def _statement(sets: OODSets, recipe: UncertaintyRecipe, num_samples: int, seed: int, n_in: int) -> str:
    sel = (f"selective prediction ranked by the {recipe.selective_score.replace('_', ' ')} on the {n_in} test "
           f"examples; {num_samples} posterior draws (seed {seed}), the same for every set")
    if not sets.inputs:
        return f"{sets.reason}: {sel}"
    default = tuple(sets.inputs) == default_kinds(sets.dataset)
    words = [s.replace("_", " ") for s in recipe.scores]
    scores = " and the ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)
    return (f"OOD detection by the {scores}: the {n_in} in-distribution "
            f"test examples against the {'transformed-input ' if default else ''}OOD sets of {sets.dataset} "
            f"({', '.join(sets.inputs)}; bd.datasets.ood, seed {sets.seed}"
            + (f"; {HELD_OUT_KIND} needs a network trained without those classes and is measured by "
               "benchmarks/uncertainty.py" if default else "") + f"); {sel}")


@torch.no_grad()
def evaluate_uncertainty(bnn: BNN, test: Any, sets: OODSets, recipe: UncertaintyRecipe, *, num_samples: int,
                         seed: int, name: Optional[str] = None) -> UncertaintyResult:
    """OOD detection of ``bnn`` against ``sets`` and its selective prediction on ``test`` (a
    labelled data set of ``(x, y)``), with ``recipe.num_samples`` draws (default ``num_samples``)
    seeded by ``seed``."""
    s = int(recipe.num_samples or num_samples)
    x, y = _tensors(test)
    p_in = _probs(bnn, x, s, seed)
    coverages = tuple(sorted(set(DEFAULT_COVERAGES) | {float(recipe.coverage)}))
    drawn = int(seed) if s > 1 else None  # as the diagnostics record it
    sel = SelectiveResult.from_probs(p_in, y, score=recipe.selective_score, coverages=coverages, num_samples=s,
                                     seed=drawn, name=name)
    results = {kind: OODResult.from_probs(p_in, _probs(bnn, xo, s, seed), scores=recipe.scores, in_targets=y,
                                          num_samples=s, seed=drawn, name=name)
               for kind, xo in sets.inputs.items()}
    auroc = {kind: dict(r.auroc) for kind, r in results.items()}
    mean = ({score: sum(a[score] for a in auroc.values()) / len(auroc) for score in recipe.scores} if auroc else {})
    return UncertaintyResult(
        True, _statement(sets, recipe, s, seed, len(x)), sets.dataset, list(sets.inputs), dict(sets.descriptions),
        list(recipe.scores), s, int(seed), len(x), {k: len(v) for k, v in sets.inputs.items()}, auroc, mean,
        {kind: r.to_dict() for kind, r in results.items()}, sel.to_dict(), sel.area_accuracy, float(recipe.coverage),
        sel.accuracy_at[float(recipe.coverage)], None, results, sel)


def _kept_auroc(student: float, teacher: float) -> Optional[float]:
    return (student - 0.5) / (teacher - 0.5) if teacher != 0.5 else None


def with_kept(result: Optional[UncertaintyResult], teacher: Optional[UncertaintyResult],
              reference: str = "teacher") -> Optional[UncertaintyResult]:
    """``result`` with :attr:`UncertaintyResult.kept` filled in relative to ``teacher`` (both
    computed; otherwise ``result`` unchanged)."""
    if result is None or teacher is None or not (result.applicable and teacher.applicable):
        return result
    kept: dict[str, Any] = {"reference": reference, "formula": dict(KEPT_FORMULA),
                            "auroc": {score: _kept_auroc(v, teacher.mean_auroc[score])
                                      for score, v in result.mean_auroc.items() if score in teacher.mean_auroc}}
    if result.selective_area is not None and teacher.selective_area:
        kept["selective_area"] = result.selective_area / teacher.selective_area
    result.kept = kept
    return result



@dataclass
class UncertaintyStep:
    """A run's uncertainty step: the OOD sets built once (before any training, so a bad kind
    fails early), then :meth:`score` for each network the run evaluates."""

    recipe: UncertaintyRecipe
    dataset: str
    task: str
    num_samples: int
    seed: int
    sets: Optional[OODSets] = None

    @property
    def computes(self) -> bool:
        """Whether the step computes anything (a classifier); else it only states why not."""
        return self.sets is not None

    @property
    def draws(self) -> int:
        return int(self.recipe.num_samples or self.num_samples)

    def label(self, networks: int) -> str:
        """The stage counter's words for scoring ``networks`` networks."""
        sets = self.sets
        against = (f"against {len(sets.inputs)} OOD sets ({', '.join(sets.inputs)})" if sets and sets.inputs
                   else "(no OOD sets for this data set)")
        return (f"OOD detection {against} and selective prediction of {networks} "
                f"network{'s' if networks != 1 else ''} ({self.draws} posterior draws)")

    def score(self, bnn: BNN, test: Any, name: Optional[str] = None) -> UncertaintyResult:
        """The network's :class:`UncertaintyResult` (a statement alone for a regression network)."""
        if self.sets is None:
            return not_applicable(self.task, self.dataset)
        return evaluate_uncertainty(bnn, test, self.sets, self.recipe, num_samples=self.num_samples, seed=self.seed,
                                    name=name)


def score_networks(step: Optional[UncertaintyStep], stages: Stages, networks: Mapping[str, BNN],
                   test: Any) -> dict[str, Optional[UncertaintyResult]]:
    """Each network's :class:`UncertaintyResult` (``None`` without a step), as one stage of
    ``stages`` when there is something to compute."""
    if step is None:
        return {name: None for name in networks}
    if not step.computes:
        return {name: step.score(bnn, test, name) for name, bnn in networks.items()}
    with stages(step.label(len(networks))):
        return {name: step.score(bnn, test, name) for name, bnn in networks.items()}


def uncertainty_step(dataset: str, task: str, recipe: UncertaintyRecipe, *, enabled: bool, num_samples: int,
                     seed: int) -> Optional[UncertaintyStep]:
    """The run's :class:`UncertaintyStep` (``None`` when ``enabled`` is false: ``--no-ood``)."""
    if not enabled:
        return None
    sets = ood_sets(dataset, recipe, seed) if task == "classification" else None
    return UncertaintyStep(recipe, str(dataset), task, int(num_samples), int(seed), sets)


def _computed(results: Mapping[str, Optional[UncertaintyResult]]) -> dict[str, UncertaintyResult]:
    return {name: r for name, r in results.items() if r is not None and r.applicable}


def roc_figure(results: Mapping[str, Optional[UncertaintyResult]], score: str = "mutual_information") -> Any:
    """The ROC curves of ``score`` of several networks, one panel per OOD kind (``None`` when
    there are no OOD results to draw)."""
    from matplotlib.figure import Figure

    computed = _computed(results)
    kinds = [k for k in next(iter(computed.values())).kinds] if computed else []
    kinds = [k for k in kinds if all(k in r.ood_results for r in computed.values())]
    if not kinds:
        return None
    fig = Figure(figsize=(4.2 * len(kinds), 4.4), layout="constrained")
    for ax, kind in zip(fig.subplots(1, len(kinds), squeeze=False)[0], kinds):
        plots.roc({name: r.ood_results[kind] for name, r in computed.items()}, score=score,
                  title=f"{kind}: {score.replace('_', ' ')}", ax=ax)
    return fig


def selective_figure(results: Mapping[str, Optional[UncertaintyResult]], title: Optional[str] = None) -> Any:
    """The accuracy- and risk-coverage curves of several networks (``None`` when none was scored)."""
    computed = {name: r.selective_result for name, r in _computed(results).items() if r.selective_result is not None}
    return plots.selective(computed, title=title) if computed else None

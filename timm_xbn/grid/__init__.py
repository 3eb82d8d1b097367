"""The evaluation grid: models x statistics methods x data, one resumable runner, four views.

Every evaluation command is a view of one ``GridRunner`` over a ``ResultsStore``: which methods, which
units of data, which table and plot. ``robustness`` (Eq. 5 perturbations, ``perturb:DELTA,SEED``), ``adabn``
(``norm``, ``prior:N``, ``mix:N``, ``batch``), ``corruption`` (a method on every corruption x severity, also
written in RobustBench's layout), ``adapt`` (test-time adapters on streams) and ``shift`` (ImageNet-R, -A, -ReaL,
-V2, -Sketch). One number has one path: AdaBN on a corrupted pair is the same
cell in ``adabn``, ``corruption --adapt norm`` and ``adapt --method norm``. Notebook use::

    from timm_xbn.grid import GridRunner, ResultsStore, Unit
    store = ResultsStore("adapt", run={"dataset": "val"}, models={"bn": {"weights_sha1": "..."}})
    GridRunner({"bn": model}, ["source", "norm", "tent"], store).run([Unit("val", data)])
    store.get("bn", "tent", "val")["top1"]
"""
from ..evaluation.store import Cell, ResultsStore
from .adabn import evaluate_adabn
from .adapt import evaluate_adaptation
from .corruption import evaluate_corruptions, parse_adapt, results_path
from .methods import ALIASES, canonical_method, method_names, method_predictor, perturbation_spec
from .robustbench import ROBUSTBENCH_KEYS, robustbench_entry, write_robustbench
from .robustness import evaluate_robustness
from .runner import GridRunner, Unit, unit_inputs
from .shift import evaluate_shift

__all__ = [
    "Cell", "ResultsStore", "GridRunner", "Unit", "unit_inputs", "ALIASES", "canonical_method", "method_names",
    "method_predictor", "perturbation_spec", "evaluate_adabn", "evaluate_adaptation", "evaluate_corruptions",
    "evaluate_robustness", "evaluate_shift", "parse_adapt", "results_path", "ROBUSTBENCH_KEYS", "robustbench_entry",
    "write_robustbench",
]

"""Figures of an Optuna study (a sweep spec's): optimisation history, parallel coordinates and the
intermediate values the pruner compared. Optuna's own matplotlib plots, as Figures for `save_figure`."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from optuna.trial import TrialState

from oner_lab.analysis.figures import message_figure


def _plot(study: optuna.Study, draw: Callable[[optuna.Study], Axes], needs: str) -> Figure:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return message_figure(f"No completed trial in study {study.study_name!r} yet: no {needs}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the matplotlib backend is marked so
        axes = draw(study)
    figure = axes.figure if isinstance(axes, Axes) else axes.flat[0].figure
    figure.set_size_inches(8, 4.5)
    return figure


def history_figure(study: optuna.Study) -> Figure:
    """Each completed trial's value and the best so far, by trial number."""
    return _plot(study, optuna.visualization.matplotlib.plot_optimization_history, "optimisation history")


def parallel_figure(study: optuna.Study) -> Figure:
    """One line per completed trial through its parameters to its value."""
    return _plot(study, optuna.visualization.matplotlib.plot_parallel_coordinate, "parallel coordinates")


def intermediate_figure(study: optuna.Study) -> Figure:
    """Every trial's metric at each evaluation step: pruned trials stop where the pruner stopped them."""
    return _plot(study, optuna.visualization.matplotlib.plot_intermediate_values, "intermediate values")

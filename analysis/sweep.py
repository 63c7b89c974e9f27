# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A hyperparameter sweep, read back from its Optuna study
#
# The trials of `experiments/sweep.yaml` (docs/sweep.md): every trial's parameters, state and value,
# the best trials, each parameter's importance, the optimisation history, a parallel-coordinate plot
# and the intermediate values the pruner compared. Run `python -m oner_lab.run experiments/sweep.yaml`
# first; nothing here needs editing. Figures are written to `output_dir` and logged to the
# run `analysis/sweep` of `<experiment>/analysis` in MLflow.

# %% tags=["parameters"]
tracking_uri = "sqlite:///../mlflow.db"  # relative to this folder: the store the README's commands write
experiment = "oner-sweep"
storage = "sqlite:///../optuna.db"  # the study's storage (sweep.storage; by default beside mlflow.db)
study_name = "oner-sweep"
output_dir = "out/sweep"

# %%
from oner_lab import analysis
from oner_lab import study as studies
from oner_lab.analysis import sweep

study = studies.read_study(storage, study_name)
trials = studies.trials_frame(study)
print(
    f"Study {study_name!r}: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in trials['state'].value_counts().items())})"
)
trials

# %% [markdown]
# ## The best trials and what mattered
# Importances: each parameter's share of the metric's variance over the completed trials (fANOVA).

# %%
studies.best_trials(study)

# %%
studies.importances(study)

# %% [markdown]
# ## Optimisation history

# %%
saved = [analysis.save_figure(sweep.history_figure(study), output_dir, "sweep_history")]

# %% [markdown]
# ## Parallel coordinates: each completed trial from its parameters to its value

# %%
saved.append(analysis.save_figure(sweep.parallel_figure(study), output_dir, "sweep_parallel"))

# %% [markdown]
# ## Intermediate values: where pruned trials were stopped

# %%
saved.append(analysis.save_figure(sweep.intermediate_figure(study), output_dir, "sweep_intermediate"))

# %%
analysis.log_outputs(tracking_uri, experiment, "sweep", saved)

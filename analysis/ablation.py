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
# # The OneR ablation, regenerated from MLflow
#
# The paper's ablation table (ITC two heads, ITC, +XMC, +XMC+CIC, +CMC) from the runs of
# `experiments/ablation.yaml`, beside the paper's published rows; bars of each metric per
# variant, and every loss term over training. Run `python -m oner_lab.run experiments/ablation.yaml`
# first (the README's first command); nothing here needs editing. Tables and figures are written to
# `output_dir` and logged to the run `analysis/ablation` of `<experiment>/analysis` in MLflow.

# %% tags=["parameters"]
tracking_uri = "sqlite:///../mlflow.db"  # relative to this folder: the store the README's command writes
experiment = "oner-ablation"
output_dir = "out/ablation"

# %%
from oner_lab import analysis

runs = analysis.load_runs(tracking_uri, experiment)
print(analysis.runs_summary(runs))

# %% [markdown]
# ## The ablation table
# Mean ± std over seeds (n seeds); footnotes name every run left out (failed, still running, another
# config) and every missing metric.

# %%
table = analysis.ablation_table(runs)
saved = table.save(output_dir, "ablation")
table

# %% [markdown]
# ## The paper's findings
# Each finding as our paired difference over seeds (dots), its mean and 95% interval, beside the
# paper's difference (red); the verdict says whether ours agrees, disagrees, or is within noise.

# %%
saved.append(analysis.save_figure(analysis.findings_figure(table), output_dir, "ablation_findings"))

# %% [markdown]
# ## Each metric per variant (bars: mean ± sd over seeds; dots: seeds)

# %%
saved.append(analysis.save_figure(analysis.metric_bars(runs), output_dir, "ablation_metrics"))

# %% [markdown]
# ## Every loss term over training

# %%
saved.append(analysis.save_figure(analysis.loss_curves(tracking_uri, runs), output_dir, "ablation_losses"))

# %%
analysis.log_outputs(tracking_uri, experiment, "ablation", saved)

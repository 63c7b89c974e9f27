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
# # Cross-modal transfer, regenerated from MLflow
#
# Does adding unpaired captions help a single tower more than a two-head model? Rows are the
# training data (the data settings that differ between runs), columns the variants (two heads:
# `itc_two_heads`, one tower: `oner`), cells top-1 / TR@1 / IR@1, with the gain between the two
# data rows. The runs come from `experiments/transfer.yaml`; until that experiment has runs in the
# store, only the paper's published table is shown, and the line below says so.

# %% tags=["parameters"]
tracking_uri = "sqlite:///../mlflow.db"  # relative to this folder: the store the README's command writes
experiment = "oner-transfer"
output_dir = "out/transfer"

# %%
from oner_lab import analysis

runs = analysis.load_runs(tracking_uri, experiment)
print(analysis.runs_summary(runs))

# %%
table = analysis.transfer_table(runs)
saved = table.save(output_dir, "transfer")
table

# %% [markdown]
# ## The paper's findings
# Each finding as our paired difference over seeds (dots), its mean and 95% interval, beside the
# paper's difference (red); the verdict says whether ours agrees, disagrees, or is within noise.

# %%
saved.append(analysis.save_figure(analysis.findings_figure(table), output_dir, "transfer_findings"))

# %%
analysis.log_outputs(tracking_uri, experiment, "transfer", saved)

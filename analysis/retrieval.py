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
# # The main retrieval table (MS-COCO 5K), regenerated from MLflow
#
# Zero-shot and fine-tuned text/image retrieval R@1/5/10 of our runs beside the paper's main
# table. The runs come from `experiments/retrieval_4m.yaml` (real data, SLURM); fine-tuning runs
# carry MLflow's `mlflow.parentRunId` tag naming the pretraining run they started from. Until
# that experiment has runs in the store, only the paper's published table is shown, and the line
# below says so. Any experiment with retrieval metrics can be read by setting `experiment`.

# %% tags=["parameters"]
tracking_uri = "sqlite:///../mlflow.db"  # relative to this folder: the store the README's command writes
experiment = "oner-retrieval-4m"
output_dir = "out/retrieval"

# %%
from oner_lab import analysis

runs = analysis.load_runs(tracking_uri, experiment)
print(analysis.runs_summary(runs))

# %%
table = analysis.retrieval_table(runs)
saved = table.save(output_dir, "retrieval")
table

# %% [markdown]
# ## The paper's findings
# Each finding as our paired difference over seeds (dots), its mean and 95% interval, beside the
# paper's difference (red); the verdict says whether ours agrees, disagrees, or is within noise.

# %%
saved.append(analysis.save_figure(analysis.findings_figure(table), output_dir, "retrieval_findings"))

# %%
analysis.log_outputs(tracking_uri, experiment, "retrieval", saved)

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
# # The modality gap, and the paper's t-SNE figure
#
# How far apart the image and text embeddings of the eval set lie (distance between their
# centroids) and how well matched pairs align, per variant, over training; then the paper's t-SNE
# figure: image, text and image+text embeddings per variant at an early and the final checkpoint.
# Reads the runs of `experiments/ablation.yaml` and their checkpoints (`oner.run_dir`).

# %% tags=["parameters"]
tracking_uri = "sqlite:///../mlflow.db"  # relative to this folder: the store the README's command writes
experiment = "oner-ablation"
output_dir = "out/modality_gap"

# %%
from oner_lab import analysis

runs = analysis.load_runs(tracking_uri, experiment)
print(analysis.runs_summary(runs))

# %% [markdown]
# ## Final modality gap and alignment per variant

# %%
table = analysis.gap_table(runs)
saved = table.save(output_dir, "modality_gap")
table

# %% [markdown]
# ## Over training
# One point per evaluation: the final step, and every `eval.every_steps` when the spec sets it.

# %%
saved.append(analysis.save_figure(analysis.modality_gap_curves(tracking_uri, runs), output_dir, "modality_gap_curves"))

# %% [markdown]
# ## t-SNE of image, text and image+text embeddings (the paper's figure)
# Each run logged a fixed sample of eval embeddings at a tenth of training and at the end
# (artifacts `embeddings/early.npz`, `embeddings/final.npz`); no model is rebuilt here.

# %%
saved.append(analysis.save_figure(analysis.tsne_figure(tracking_uri, runs), output_dir, "tsne"))

# %%
analysis.log_outputs(tracking_uri, experiment, "modality_gap", saved)

# Plain-script twin of quickstart.ipynb (same cells; tests/test_examples.py keeps them equal and runs the
# notebook). Run: python examples/quickstart.py

# %% [markdown]
# # emdata quick start
# From a dataset's name to a scored prediction, offline: the catalog, a volume prepared from a local
# replica of Lucchi++ (the same files, layout and download code as the real data, served on loopback),
# a look at it, a few training steps, and the prediction scored as the card says.

# %%
import os
import sys
import tempfile
from pathlib import Path

import emdata

home = Path(os.environ.get("EMDATA_QUICKSTART_HOME") or tempfile.mkdtemp(prefix="emdata-quickstart-"))
os.environ["EMDATA_HOME"] = str(home)  # where emdata keeps downloads and prepared volumes
print(home)

# %% [markdown]
# ## 1. The catalog

# %%
datasets = emdata.list_datasets()
print(len(datasets), "datasets;", [d["id"] for d in datasets if d["microscopy"] == "FIB-SEM"])
card = emdata.info("lucchi-pp")
print(card["title"], card["voxel_size_nm"], [c["name"] for c in card["classes"]["mitochondria"]])

# %% [markdown]
# ## 2. Prepare it from a replica
# `serve_replicas` writes small synthetic files in the published layout and serves them on
# 127.0.0.1; `emdata.prepare` downloads, verifies and converts them as it would the real files.

# %%
from emdata.testing import serve_replicas

with serve_replicas(["lucchi-pp"], home, small=True) as served:
    volumes = emdata.prepare("lucchi-pp", **served.options["lucchi-pp"])
for v in volumes:
    print(v.name, v.split, v.shape, v.voxel_size, list(v.meta["labels"]))

# %% [markdown]
# ## 3. Look at it
# Statistics (`emdata stats`), a preview sheet (`emdata preview`) and a neuroglancer state
# (`emdata view lucchi-pp` serves it on loopback and prints the viewer's URL).

# %%
from emdata.look.preview import write_preview
from emdata.look.stats import format_stats, volume_stats

train = emdata.volumes("lucchi-pp", split="train")[0]
print(format_stats(volume_stats(train)))
sheet = write_preview(train, home / "lucchi-pp-train.png")
if "ipykernel" in sys.modules:  # in a notebook: show the sheet
    from IPython.display import Image, display

    display(Image(filename=str(sheet)))
else:
    print("preview written to", sheet)

# %%
from emdata.view import neuroglancer_state

state = neuroglancer_state([train], "http://127.0.0.1:8000")
print([(layer["type"], layer["name"]) for layer in state["layers"]], state["dimensions"])

# %% [markdown]
# ## 4. Train a few steps
# Patches of 8×32×32 voxels, float raw normalised by the stored percentiles, semantic targets in the
# union label space (-100 where a class is not annotated).

# %%
import torch

from emdata.torch import PatchDataset, make_loader

torch.manual_seed(0)
ds = PatchDataset([train], (8, 32, 32), targets=["semantic"], raw_dtype="float32", normalize="percentile",
                  samples_per_epoch=16, seed=0)
n_classes = len(ds.class_names)
net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv3d(8, n_classes, 1))
optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
losses = []
for batch in make_loader(ds, batch_size=4):
    optimiser.zero_grad()
    loss = loss_fn(net(batch["raw"]), batch["semantic"].long())
    loss.backward()
    optimiser.step()
    losses.append(round(loss.item(), 4))
print(ds.class_names, losses)
assert losses[-1] < losses[0], "the loss should fall over a few steps on this easy volume"

# %% [markdown]
# ## 5. Predict and evaluate
# `emdata.predict` runs the network over the test volume tile by tile and stores its labels in the
# volume (`emdata predict`); `emdata.evaluate` scores them with the metrics the dataset's card names
# (for Lucchi++: Dice and IoU of the mitochondria; `emdata evaluate`). A replica's raw voxels are drawn
# independently of its labels, so expect scores near 0 here; on the real data the same cells score a
# real model. The prediction is now a layer of the volume: `emdata view lucchi-pp --volume test`
# shows it next to the ground truth.

# %%
net.eval()
test = emdata.predict(net, emdata.volumes("lucchi-pp", split="test")[0], "quickstart", tile=(8, 32, 32),
                      normalize="percentile", classes=ds.class_names, progress=False)
scores = emdata.evaluate(test, "quickstart", gt_foreground=[1], pred_foreground=[1])
for name, result in scores["results"].items():
    print(f"{name} = {result[name]} ({result['version']})")
print([layer["name"] for layer in neuroglancer_state([test], "http://127.0.0.1:8000")["layers"]])

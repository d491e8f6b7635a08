"""Small configurations for tests that train on real MNIST subsets."""


def small_config(data_root, *, epochs=6, finetune=1, train_subset=6000, hidden="64, 32", lr_s=0.02,
                 gamma=0.3, extra="") -> str:  # fmt: skip
    return f"""
seed = 0
device = "cpu"
[data]
dataset = "mnist"
root = "{data_root}"
train_subset = {train_subset}
test_subset = 2000
[model]
hidden = [{hidden}]
[train]
epochs = {epochs}
finetune_epochs = {finetune}
lr = 0.002
[method]
name = "game"
beta = 0.05
gamma = {gamma}
lr_s = {lr_s}
cost_ramp = 0.5
{extra}
"""


def mlp_config(data_root, method: str, *, hidden="32, 16", epochs=4, finetune=1, train_subset=1500,
               test_subset=500, train="") -> str:  # fmt: skip
    """An MLP on an MNIST subset, trained on CPU with seed 0; ``method`` is the [method] table's
    body (``name = "spred"``...) and ``train`` extra lines of [train]."""
    return f"""
seed = 0
device = "cpu"
[data]
root = "{data_root}"
train_subset = {train_subset}
test_subset = {test_subset}
[model]
hidden = [{hidden}]
[train]
epochs = {epochs}
finetune_epochs = {finetune}
{train}
[method]
{method}
"""

"""Parameter and MAC counts against hand computation."""

import torch.nn as nn

from equiprune.layers import MultiHeadSelfAttention
from equiprune.measure import count_macs, count_params, nonzero_params


def test_macs_of_linear_and_conv_layers_follow_the_textbook_formulas():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 4·8·8 outputs × 3·3·3 = 6912
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),  # 4·8·8 outputs × 2·3·3 = 4608
        nn.Flatten(),
        nn.Linear(256, 10),  # 2560
    )
    assert count_macs(model, (3, 8, 8)) == 6912 + 4608 + 2560
    assert count_params(model) == (4 * 27 + 4) + (4 * 18 + 4) + (2560 + 10)


def test_nonzero_params_counts_what_pruning_left():
    layer = nn.Linear(4, 3)
    layer.weight.data[:2] = 0.0
    layer.bias.data[:] = 0.0
    assert nonzero_params(layer) == 4


def test_macs_of_attention_count_both_products():
    attn = MultiHeadSelfAttention(dim=8, heads=2, head_dim=4)
    qkv, proj, products = 5 * 8 * 24, 5 * 8 * 8, 2 * 2 * (5 * 5 * 4)  # 5 tokens: QKᵀ and AV per head
    assert count_macs(attn, (5, 8)) == qkv + proj + products

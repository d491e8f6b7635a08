"""Parameter and MAC counts against hand computation."""

import torch.nn as nn

from equiprune.core.measure import count_macs, count_params, nonzero_params
from equiprune.layers import MultiHeadSelfAttention


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


def test_macs_per_player_shares_each_layers_work_among_the_players_it_depends_on():
    from equiprune.core.measure import macs_per_player
    from equiprune.core.players import attach
    from equiprune.models import create_model

    gated = attach(create_model("lenet5"))
    conv1 = 25 * 28 * 28 + 16 * 25 * 10 * 10  # its own kernel at 28×28 outputs; its input column of conv2
    conv2 = 6 * 25 * 10 * 10 + 120 * 25  # its kernels at 10×10; its 25 inputs (5×5 positions) to the first FC
    fc1, fc2 = 400 + 84, 120 + 10
    assert macs_per_player(gated, (1, 28, 28)) == [conv1, conv2, fc1, fc2]
    heads = attach(create_model("vit", input_shape=(1, 28, 28), depth=1, dim=32, heads=4, mlp=48))
    tokens, head_dim = 49, 8
    head = tokens * 32 * 3 * head_dim + tokens * head_dim * 32 + 2 * tokens * tokens * head_dim
    assert macs_per_player(heads, (1, 28, 28))[0] == head

import pytest
import torch
import torch.nn.functional as F

from cifar_resnet.evaluate import macs_per_image
from cifar_resnet.models import ModelSpec, build_model, count_parameters

# He et al. 2016, Table 6 (rounded there to 0.27M ... 19.4M).
PAPER_PARAMETERS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}


@pytest.mark.parametrize("depth", PAPER_PARAMETERS)
def test_trainable_parameters_match_the_paper(depth):
    assert count_parameters(build_model(ModelSpec(depth))) == PAPER_PARAMETERS[depth]


def test_projection_shortcut_parameters():
    # Option B adds a 1x1 convolution + BN at the two stage transitions of ResNet-20:
    # 16*32 + 2*32 = 576 and 32*64 + 2*64 = 2,176, so 269,722 + 2,752 = 272,474.
    assert count_parameters(build_model(ModelSpec(20, shortcut="B"))) == 272_474


def test_preact_parameters():
    # Pre-activation moves BN: the stem loses its BN(16) (-32), the first block of stages 2 and 3
    # normalises its 16- and 32-channel input instead of 32 and 64 channels (-32, -64), and a final
    # BN(64) is added (+128): 269,722 - 32 - 32 - 64 + 128 = 269,722, as in seed 002's summary.
    assert count_parameters(build_model(ModelSpec(20, preact=True))) == 269_722


def test_wide_parameters():
    # Width 4 (64/128/256 filters), option A:
    #   stem conv 3*64*9 = 1,728 + BN 128
    #   stage 1: 6 convs 64*64*9 = 221,184 + 6 BN(64) = 768
    #   stage 2: 128*64*9 + 5 * 128*128*9 = 73,728 + 737,280 = 811,008 + 6 BN(128) = 1,536
    #   stage 3: 256*128*9 + 5 * 256*256*9 = 294,912 + 2,949,120 = 3,244,032 + 6 BN(256) = 3,072
    #   head 256*10 + 10 = 2,570
    expected = 1_728 + 128 + 221_184 + 768 + 811_008 + 1_536 + 3_244_032 + 3_072 + 2_570
    assert expected == 4_286_026
    assert count_parameters(build_model(ModelSpec(20, width=4))) == expected


def test_dense_dropout_head_parameters():
    # Dense 64->128 (8,320) + BN(128) (256) + Dense 128->10 (1,290) replaces the 650 of the linear head.
    expected = PAPER_PARAMETERS[20] - 650 + 8_320 + 256 + 1_290
    assert count_parameters(build_model(ModelSpec(20, head="dense_dropout", head_hidden=128))) == expected


@pytest.mark.parametrize("depth", [21, 6, 0, 100])
def test_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError, match="6n\\+2"):
        ModelSpec(depth)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_stage_shapes_and_downsampling(shortcut):
    model = build_model(ModelSpec(20, shortcut=shortcut)).eval()
    x = torch.randn(2, 3, 32, 32)
    features = []
    for layer in model.backbone:
        x = layer(x)
        features.append(tuple(x.shape[1:]))
    assert (16, 32, 32) in features and (32, 16, 16) in features and (64, 8, 8) in features
    assert features[-1] == (64,)
    assert model.head(x).shape == (2, 10)


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = build_model(ModelSpec(20)).backbone[6]  # the first block of stage 2 (stem is 3 layers)
    x = torch.randn(2, 16, 32, 32)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 16, 16)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 16:]) == 0


def test_preact_forward_and_state_dict_loads_strictly():
    spec = ModelSpec(32, num_classes=100, preact=True, head="dropout")
    model = build_model(spec)
    copy = build_model(spec)
    copy.load_state_dict(model.state_dict())
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 100)
    assert not any(key.startswith("module.") for key in model.state_dict())


def randomised_batch_norms(module: torch.nn.Module) -> None:
    """Give every BatchNorm random affine parameters and running statistics, so that skipping or
    misplacing one changes the output."""
    generator = torch.Generator().manual_seed(0)
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            channels = bn.num_features
            bn.weight.data = torch.rand(channels, generator=generator) + 0.5
            bn.bias.data = torch.randn(channels, generator=generator)
            bn.running_mean = torch.randn(channels, generator=generator)
            bn.running_var = torch.rand(channels, generator=generator) + 0.5


def batch_norm(bn, x):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)


def test_preact_block_is_bn_relu_conv_twice_plus_the_raw_input():
    """He et al. 2016b, Fig. 4(e): x + conv2(relu(bn2(conv1(relu(bn1(x)))))), the shortcut taking the
    block's input before its activation (option A: subsampled, zero-padded)."""
    block = build_model(ModelSpec(20, preact=True)).backbone[4]  # stage 2's first block (stem is 1 conv)
    randomised_batch_norms(block)
    block.eval()
    x = torch.randn(2, 16, 32, 32)
    inner = F.conv2d(F.relu(batch_norm(block.bn1, x)), block.conv1.weight, stride=2, padding=1)
    residual = F.conv2d(F.relu(batch_norm(block.bn2, inner)), block.conv2.weight, padding=1)
    shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 16))
    with torch.no_grad():
        assert torch.allclose(block(x), residual + shortcut, atol=1e-5)


def test_post_activation_block_is_the_papers():
    """He et al. 2016a: relu(bn2(conv2(relu(bn1(conv1(x))))) + x)."""
    block = build_model(ModelSpec(20)).backbone[4]  # stage 1's second block (stem: conv, BN, ReLU)
    randomised_batch_norms(block)
    block.eval()
    x = torch.randn(2, 16, 32, 32)
    inner = F.relu(batch_norm(block.bn1, F.conv2d(x, block.conv1.weight, padding=1)))
    residual = batch_norm(block.bn2, F.conv2d(inner, block.conv2.weight, padding=1))
    with torch.no_grad():
        assert torch.allclose(block(x), F.relu(residual + x), atol=1e-5)


def test_the_global_pool_is_adaptive_average_pooling_bit_for_bit_and_has_no_cuda_only_nondeterminism():
    """The pool is a mean over height and width: the same function and gradient as the
    AdaptiveAvgPool2d(1) + Flatten it replaces (so results did not change), whose CUDA backward has no
    deterministic implementation."""
    model = build_model(ModelSpec(20))
    assert not any(isinstance(m, (torch.nn.AdaptiveAvgPool2d, torch.nn.AvgPool2d)) for m in model.modules())
    pool = model.backbone[-1]
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(37, 64, 8, 8).contiguous(memory_format=memory_format).requires_grad_()
        gradient = torch.randn(37, 64)
        ours, reference = pool(x), F.adaptive_avg_pool2d(x, 1).flatten(1)
        assert torch.equal(ours, reference)
        assert torch.equal(*(torch.autograd.grad(y, x, gradient)[0] for y in (ours, reference)))


@pytest.mark.parametrize(
    "spec",
    [ModelSpec(20), ModelSpec(8, shortcut="B", width=2), ModelSpec(20, preact=True, head="dense_dropout")],
)
def test_macs_are_what_torchs_flop_counter_counts(spec):
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(spec).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert macs_per_image(model) == counter.get_total_flops() // 2  # two flops per multiply-accumulate


@pytest.mark.parametrize(
    ("head", "layers"),
    [
        ("linear", [torch.nn.Linear]),
        ("dropout", [torch.nn.Dropout, torch.nn.Linear]),
        (
            "dense_dropout",
            [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Dropout, torch.nn.Linear],
        ),
    ],
)
def test_each_head_is_the_layers_it_names(head, layers):
    model = build_model(ModelSpec(8, head=head, dropout=0.3, head_hidden=32))
    assert [type(layer) for layer in model.head] == layers
    assert all(layer.p == 0.3 for layer in model.head if isinstance(layer, torch.nn.Dropout))


def test_a_frozen_backbone_leaves_only_the_head_trainable():
    model = build_model(ModelSpec(20))
    model.backbone.requires_grad_(False)
    assert count_parameters(model) == 64 * 10 + 10  # the linear head
    assert count_parameters(model, trainable_only=False) == PAPER_PARAMETERS[20]


def test_resnet_8_is_the_smallest_depth():
    assert build_model(ModelSpec(8)).spec.blocks_per_stage == 1
    with pytest.raises(ValueError, match="6n\\+2"):
        ModelSpec(2)

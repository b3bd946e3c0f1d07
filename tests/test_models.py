import pytest
import torch

from stabletrain.models import CBAMBlock, SEBlock, TinyUNet


@pytest.mark.parametrize("attention", [None, "se", "cbam"])
@pytest.mark.parametrize("depth", [1, 3, 4])
def test_output_shapes(attention, depth):
    model = TinyUNet(
        in_channels=2, num_classes=3, base_channels=4, depth=depth, attention=attention
    )
    out = model(torch.randn(2, 2, 32, 32))
    assert out.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("attention", [None, "se", "cbam"])
def test_deep_supervision_outputs_and_switch_off(attention):
    model = TinyUNet(base_channels=4, depth=3, attention=attention, deep_supervision=True)
    x = torch.randn(2, 1, 64, 64)
    outs = model(x)
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(2, 1, 64, 64), (2, 1, 32, 32), (2, 1, 16, 16)]
    model.deep_supervision = False
    single = model(x)
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, outs[0])


def test_attention_blocks_keep_shape_and_gate():
    x = torch.randn(2, 8, 16, 16)
    for block in (SEBlock(8), CBAMBlock(8)):
        y = block(x)
        assert y.shape == x.shape
        # sigmoid gates lie in (0, 1): each output is a shrunk copy of its input
        assert torch.all(y.abs() <= x.abs() + 1e-6)
    assert SEBlock(3, reduction=16).fc1.out_channels == 1  # never zero hidden channels


def test_attention_modules_are_placed():
    model = TinyUNet(base_channels=4, attention="cbam")
    names = [n for n, m in model.named_modules() if isinstance(m, CBAMBlock)]
    assert len(names) == 2 * 3 + 1  # encoders, decoders and bottleneck


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"attention": "transformer"}, "attention"),
        ({"depth": 0}, "depth"),
        ({"depth": 7}, "depth"),
        ({"num_classes": 0}, "num_classes"),
        ({"base_channels": -1}, "base_channels"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TinyUNet(**kwargs)


def test_depth_too_large_for_image_size():
    model = TinyUNet(base_channels=4, depth=5)
    with pytest.raises(ValueError, match="depth"):
        model(torch.randn(1, 1, 48, 48))


def test_wrong_channel_count():
    with pytest.raises(ValueError, match="shape"):
        TinyUNet(in_channels=1)(torch.randn(1, 3, 32, 32))

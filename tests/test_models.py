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


def test_safeguard_options_default_to_plain_blocks():
    torch.manual_seed(0)
    plain = TinyUNet(base_channels=4, attention="cbam")
    torch.manual_seed(0)
    explicit = TinyUNet(base_channels=4, attention="cbam", attention_options={})
    assert plain.state_dict().keys() == explicit.state_dict().keys()
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(plain(x), explicit(x))
    assert plain.attention_options == {}


@pytest.mark.parametrize("block", [SEBlock, CBAMBlock])
def test_bounded_gate_and_residual_scale(block):
    x = torch.randn(2, 8, 16, 16)
    torch.manual_seed(0)
    plain = block(8)
    with torch.no_grad():  # push every gate logit far negative: the plain gate shuts
        for m in plain.modules():
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.fill_(-50.0)
    assert plain(x).abs().max() < 1e-6
    torch.manual_seed(0)
    bounded = block(8, gate_bound=4.0)
    bounded.load_state_dict(plain.state_dict())
    y = bounded(x)
    sigma_low = torch.sigmoid(torch.tensor(-4.0))
    floor = sigma_low**2 if block is CBAMBlock else sigma_low  # CBAM gates twice
    assert torch.all(y.abs() >= floor * x.abs() * 0.999)  # never shut completely
    torch.manual_seed(0)
    residual = block(8, residual_scale=0.25)
    residual.load_state_dict(plain.state_dict())
    torch.testing.assert_close(residual(x), 0.75 * x, atol=1e-6, rtol=1e-5)


def test_safe_attention_shorthand_and_norm_layers():
    model = TinyUNet(base_channels=4, attention="cbam", safe_attention=True)
    block = next(m for m in model.modules() if isinstance(m, CBAMBlock))
    assert any(isinstance(m, torch.nn.GroupNorm) for m in block.mlp)
    assert isinstance(block.pool_norm, torch.nn.BatchNorm2d)
    assert block.residual_scale == 0.5 and block.channel_gate.bound == 4.0
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
    se = TinyUNet(base_channels=4, attention="se", attention_options={"norm": True})
    assert any(isinstance(m, torch.nn.GroupNorm) for m in se.modules())


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"gate_bound": 0.0}, "gate_bound"),
        ({"residual_scale": 1.5}, "residual_scale"),
        ({"clamp": 1.0}, "attention_options"),
    ],
)
def test_bad_attention_options(options, name):
    with pytest.raises(ValueError, match=name):
        TinyUNet(base_channels=4, attention="cbam", attention_options=options)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: TinyUNet(deep_supervision="false"), "deep_supervision must be a bool"),
        (lambda: TinyUNet(safe_attention=1), "safe_attention must be a bool"),
        (lambda: TinyUNet(depth=2.0), "depth must be an int"),
        (lambda: SEBlock(8, norm="yes"), "norm must be a bool"),
        (lambda: CBAMBlock(8, gate_bound="4"), "gate_bound must be a number or None"),
    ],
)
def test_wrong_types_name_the_parameter(make, name):
    with pytest.raises(TypeError, match=name):
        make()

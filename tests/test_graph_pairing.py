"""Conversion through the dataflow graph, checked by default (issue 12 part A).

Small twins written as a user of each framework would: a residual block whose
shortcut Keras lists between the main branch's layers, a VGG-like head with a
Flatten after a channels-first map, a model fx cannot trace. Each converts (or
is refused with a reason), and a deliberately broken twin raises
ConversionMismatchError naming the layer.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import polybundle
from polybundle.api.conversion_check import UncheckedConversionWarning
from polybundle.api.transfer import plan_bundle
from polybundle.errors import ConversionError, ConversionMismatchError, PolybundleError
from polybundle.hooks.registry import scoped_declarations
from polybundle.model.conversion import plan_conversion
from tests.conftest import needs_tensorflow, needs_torch

pytestmark = [needs_torch, needs_tensorflow]

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
layers = keras.layers


class Block(torch.nn.Module):
    """A ResNet basic block with a projection shortcut, defined main branch first."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.downsample = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, 2, bias=False),
                                              torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.downsample(x))


class TinyResNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = Block(4, 8)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(self.layer1(self.stem(x)), 1)
        return self.fc(torch.flatten(pooled, 1))


def keras_tiny_resnet(config: dict) -> keras.Model:
    """The same network as Keras users write it; the shortcut comes first here."""
    eps = config.get("epsilon", 1e-5)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    shortcut = layers.Conv2D(8, 1, 2, use_bias=False, name="down_conv")(x)
    shortcut = layers.BatchNormalization(epsilon=eps, momentum=0.9, name="down_bn")(shortcut)
    y = layers.Conv2D(8, 3, 2, use_bias=False, name="conv1")(layers.ZeroPadding2D(1)(x))
    y = layers.ReLU()(layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn1")(y))
    y = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv2")(y)
    y = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn2")(y)
    y = layers.GlobalAveragePooling2D()(layers.ReLU()(layers.Add()([y, shortcut])))
    return keras.Model(inputs, layers.Dense(3, name="fc")(y))


def torch_vgg(config: dict) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5))


def keras_vgg(config: dict) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = layers.Flatten()(layers.MaxPooling2D(2)(x))
    return keras.Model(inputs, layers.Dense(5, name="head")(x))


class Untraceable(torch.nn.Module):
    """Data-dependent control flow (fx cannot trace it) and a functional flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        y = self.conv(x)
        if float(y.sum()) > 1e9:
            y = y * 0
        return self.fc(y.reshape(y.shape[0], -1))


def keras_flat(config: dict) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    return keras.Model(inputs, layers.Dense(5, name="head")(layers.Flatten()(x)))


def _randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def registered():
    with scoped_declarations():
        polybundle.architecture("g-resnet", backend="torch")(lambda config: TinyResNet())
        polybundle.architecture("g-resnet", backend="tensorflow")(keras_tiny_resnet)
        polybundle.architecture("g-vgg", backend="torch")(torch_vgg)
        polybundle.architecture("g-vgg", backend="tensorflow")(keras_vgg)
        polybundle.architecture("g-flat", backend="torch")(lambda config: Untraceable())
        polybundle.architecture("g-flat", backend="tensorflow")(keras_flat)
        yield


X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype("f4")


def _torch_bundle(path, name, config=None, *, parity=True):
    net = _randomized(polybundle.build(name, config or {}, backend="torch"))
    polybundle.save(path, {"net": net}, parity_inputs=X if parity else None)
    return net


def test_resnet_twins_pair_through_the_graph_both_ways(tmp_path, registered):
    net = _torch_bundle(tmp_path / "pt.bundle", "g-resnet")
    source = polybundle.get_backend("torch").describe(net)
    target = polybundle.get_backend("tensorflow").describe(keras_tiny_resnet({}))
    in_order = plan_conversion(source, target)
    assert any("is batchnorm" in line and "is conv2d" in line for line in in_order.misaligned)

    bundle = polybundle.load(tmp_path / "pt.bundle", backend="tensorflow")
    check = bundle.checks["net"]
    assert check.checked and check.max_rel < 1e-5 and "dataflow graph" in check.pairing
    pairs = {m.source.rpartition(".")[0]: m.target.rpartition("/")[0]
             for m in bundle.conversions["net"].moves if m.source and m.target}
    assert pairs["layer1.downsample.0"] == "down_conv"
    assert pairs["layer1.bn2"] == "bn2"

    polybundle.convert(tmp_path / "pt.bundle", tmp_path / "tf.bundle", backend="tensorflow")
    back = polybundle.load(tmp_path / "tf.bundle", backend="torch")
    assert back.checks["net"].checked and back.checks["net"].max_rel < 1e-5
    y = back.models["net"](torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(y, net(torch.from_numpy(X)).detach().numpy(), rtol=1e-5,
                               atol=1e-6)


def test_wrong_epsilon_is_caught_and_the_layer_named(tmp_path, registered):
    _torch_bundle(tmp_path / "eps.bundle", "g-resnet", {"epsilon": 1e-3})
    with pytest.raises(ConversionMismatchError) as caught:
        polybundle.load(tmp_path / "eps.bundle", backend="tensorflow")
    assert caught.value.layer == "layer1.downsample.1 -> down_bn"
    assert caught.value.output == "output" and caught.value.max_rel > 1e-5
    assert "check=False" in str(caught.value)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an opted-out check warns about nothing
        bundle = polybundle.load(tmp_path / "eps.bundle", backend="tensorflow", check=False)
    assert not bundle.checks["net"].checked and bundle.checks["net"].note == "check=False"


def test_flatten_head_reorders_the_dense_kernel_both_ways(tmp_path, registered):
    net = _torch_bundle(tmp_path / "vgg.bundle", "g-vgg")
    bundle = polybundle.load(tmp_path / "vgg.bundle", backend="tensorflow")
    kernel = next(m for m in bundle.conversions["net"].moves if m.reorder is not None)
    assert kernel.source == "4.weight" and kernel.reorder == ((4, 4, 4), (1, 2, 0))
    assert bundle.checks["net"].max_rel < 1e-5
    expected = net(torch.from_numpy(X)).detach().numpy()
    got = np.asarray(bundle.models["net"](np.moveaxis(X, 1, -1)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    polybundle.convert(tmp_path / "vgg.bundle", tmp_path / "vgg-tf.bundle", backend="tf")
    back = polybundle.load(tmp_path / "vgg-tf.bundle", backend="torch")
    assert back.checks["net"].max_rel < 1e-5
    np.testing.assert_allclose(back.models["net"](torch.from_numpy(X)).detach().numpy(),
                               expected, rtol=1e-5, atol=1e-6)


def test_swapped_flatten_order_is_a_mismatch(tmp_path, registered):
    """An explicit map that copies the kernel unreordered is what the old pairing did."""
    _torch_bundle(tmp_path / "vgg.bundle", "g-vgg")
    with scoped_declarations():
        polybundle.register_tensor_map("g-vgg", source="torch", target="tensorflow", mapping={
            "4.weight": ("head/kernel", "out,in", "in,out")})
        with pytest.raises(ConversionMismatchError) as caught:
            polybundle.load(tmp_path / "vgg.bundle", backend="tensorflow")
    assert caught.value.max_rel > 0.1 and caught.value.layer == "4 -> head"


def test_untraceable_flatten_is_refused_not_guessed(tmp_path, registered):
    _torch_bundle(tmp_path / "flat.bundle", "g-flat")
    with pytest.raises(ConversionError, match="'fc' -> 'head'.*does not guess") as caught:
        polybundle.load(tmp_path / "flat.bundle", backend="tensorflow")
    assert not isinstance(caught.value, ConversionMismatchError)


def keras_mlp(config: dict) -> keras.Model:
    inputs = keras.Input((4,))
    return keras.Model(inputs, layers.Dense(2)(layers.Dense(3, activation="relu")(inputs)))


def test_unchecked_conversion_warns_and_says_so(tmp_path, registered):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    polybundle.save(tmp_path / "mlp.bundle", {"net": net},
                    architectures={"net": ("g-mlp", {})})  # no torch builder, no parity
    with scoped_declarations():
        polybundle.architecture("g-mlp", backend="tensorflow")(keras_mlp)
        with pytest.warns(UncheckedConversionWarning, match="no 'torch' builder"):
            bundle = polybundle.load(tmp_path / "mlp.bundle", backend="tensorflow")
    assert not bundle.checks["net"].checked
    assert "definition order" in bundle.checks["net"].pairing


def test_example_inputs_check_against_the_source_model(tmp_path, registered):
    _torch_bundle(tmp_path / "plain.bundle", "g-resnet", parity=False)
    bundle = polybundle.load(tmp_path / "plain.bundle", backend="tensorflow", example_inputs=X)
    assert bundle.checks["net"].reference == "the source torch model"
    assert bundle.checks["net"].max_rel < 1e-5
    declared = polybundle.load(tmp_path / "plain.bundle", backend="tensorflow")
    assert declared.checks["net"].checked  # the Keras twin declares its input shape


def test_explicit_map_covers_buffers_and_pins_the_rest(tmp_path, registered):
    _torch_bundle(tmp_path / "map.bundle", "g-resnet")
    with scoped_declarations():
        polybundle.register_tensor_map("g-resnet", source="torch", target="tensorflow", mapping={
            "layer1.bn2.weight": "bn2/gamma", "layer1.bn2.bias": "bn2/beta",
            "layer1.bn2.running_mean": "bn2/moving_mean",
            "layer1.bn2.running_var": "bn2/moving_variance",
            r"re:layer1\.\w+\.num_batches_tracked": None,
            "layer1.downsample.1.num_batches_tracked": None})
        bundle = polybundle.load(tmp_path / "map.bundle", backend="tensorflow")
    moves = {m.source: m for m in bundle.conversions["net"].moves if m.source}
    assert moves["layer1.bn1.num_batches_tracked"].action == "drop"
    assert moves["layer1.bn2.running_var"].target == "bn2/moving_variance"
    assert bundle.checks["net"].max_rel < 1e-5


def test_plan_builds_the_target_and_names_real_layers(tmp_path, registered):
    _torch_bundle(tmp_path / "pt.bundle", "g-resnet")
    role = plan_bundle(tmp_path / "pt.bundle", "tensorflow")["roles"][0]
    assert role["built"] and not role["refused"] and "dataflow graph" in role["pairing"]
    assert role["check"].startswith("role 'net': checked against the stored parity outputs")
    rows = {row["source"]: row for row in role["rows"]}
    assert rows["layer1.downsample.0.weight"]["target"] == "down_conv/kernel"
    assert rows["layer1.downsample.0.weight"]["detail"] == "transpose (2, 3, 1, 0)"
    assert rows["layer1.bn1.num_batches_tracked"]["action"] == "drop"

    _torch_bundle(tmp_path / "eps.bundle", "g-resnet", {"epsilon": 1e-3})
    broken = plan_bundle(tmp_path / "eps.bundle", "tensorflow")["roles"][0]
    assert "layer1.downsample.1 -> down_bn" in broken["refused"]


def test_parity_feeds_each_framework_its_own_layout(tmp_path, registered):
    _torch_bundle(tmp_path / "vgg.bundle", "g-vgg")
    report = polybundle.parity.compare(tmp_path / "vgg.bundle", backends=["torch", "tensorflow"])
    assert report.passed, report.table()
    nhwc = np.moveaxis(X, 1, -1)  # the writer's model cannot read it: a typed error, not raw
    with pytest.raises(PolybundleError, match=r"the torch model failed on inputs input \(2, 8"):
        polybundle.parity.compare(tmp_path / "vgg.bundle", nhwc, backends=["tensorflow"])

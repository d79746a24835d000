"""core.defense.activations: a layer's inputs from one early-stopped pass equal a full hooked
pass."""

from __future__ import annotations

import torch

from core.data.images import ImageSet, InputSpec
from core.data.triggers import PatchTrigger
from core.defense.activations import layer_inputs
from core.defense.evaluation import sample_subset
from core.model.architectures import build_model
from core.model.graph import neuron_graph


def test_layer_inputs_equal_a_hooked_full_forward_pass():
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", 10, 1).eval()
    images = ImageSet(
        torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8), torch.arange(40) % 10
    )
    spec = InputSpec(1, (28, 28))
    layers = neuron_graph(model, torch.zeros(1, 1, 28, 28))
    trigger = PatchTrigger(torch.ones(1, 3, 3))
    for layer in (layers[0].name, layers[len(layers) // 2].name, layers[-1].name):
        got = layer_inputs(model, images, spec, layer, trigger=trigger, limit=32, batch_size=16)
        seen = []
        module = dict(model.named_modules())[layer]
        handle = module.register_forward_pre_hook(lambda m, i, seen=seen: seen.append(i[0]))
        subset = sample_subset(images, 32)
        with torch.no_grad():
            model(spec.prepare(subset.images, trigger))
        handle.remove()
        want = seen[0].transpose(0, 1).reshape(seen[0].shape[1], -1)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5), layer

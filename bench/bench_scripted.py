"""Opening a TorchScript archive of an unregistered network (its graph converted, core.io.scripted)
beside opening the same weights as a registered one and beside `torch.jit.load` of the file.

For each torchvision net, the scripted archive of the net itself (registered: read as data,
rebuilt, and its forward converted and checked against the rebuilt one's) and of a wrapper
holding it as `.inner` (unregistered: converted) are opened with `load_checkpoint` (the reader
process already started); figures are medians of --repeat runs.

A second table prices the check of a registered archive's own forward (converted in the reader
and compared with the registered build on a probe): `load_checkpoint` of the scripted
torchvision resnet18 (224×224) and of the traced cifar_resnet20 (32×32), with the check and
with it switched off (``core.io.scripted.check_own_forward`` replaced by a no-op for the run).

    python bench/bench_scripted.py [--repeat 3] [--nets resnet18,mobilenet_v3_small,densenet121]
        [--check-nets resnet18,cifar_resnet20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.io import scripted  # noqa: E402
from core.io.checkpoint import load_checkpoint  # noqa: E402
from core.model.nets.cifar_resnet import cifar_resnet20  # noqa: E402
from core.safety import isolation  # noqa: E402


class Wrapper(nn.Module):
    """The net under another name: no registered architecture has `inner.` keys."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nets", default="resnet18,mobilenet_v3_small,densenet121")
    parser.add_argument("--check-nets", default="resnet18,cifar_resnet20")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    isolation.prestart()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), medians of {args.repeat}"
    )
    print(f"{'net':<20} {'jit.load s':>10} {'registered s':>12} {'converted s':>11} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as folder:
        for name in filter(None, args.nets.split(",")):
            net = getattr(torchvision.models, name)(num_classes=10).eval()
            plain, wrapped = Path(folder, f"{name}.pt"), Path(folder, f"{name}_wrapped.pt")
            torch.jit.save(torch.jit.script(net), str(plain))
            torch.jit.save(torch.jit.script(Wrapper(net).eval()), str(wrapped))
            load_checkpoint(plain)  # the reader process is up and warm
            jit = _median(lambda p=wrapped: torch.jit.load(str(p)), args.repeat)
            registered = _median(lambda p=plain: load_checkpoint(p), args.repeat)
            converted = _median(lambda p=wrapped: load_checkpoint(p), args.repeat)
            print(
                f"{name:<20} {jit:>10.2f} {registered:>12.2f} {converted:>11.2f} "
                f"{converted / registered:>6.2f}"
            )

        _forward_check_table(Path(folder), args)


def _no_check(*_args, **_kwargs) -> scripted.ForwardCheck:
    return scripted.ForwardCheck(None)


def _forward_check_table(folder: Path, args) -> None:
    head = f"{'registered archive':<20} {'no check s':>10} {'check s':>8} {'extra s':>8}"
    print(f"\n{head} {'ratio':>6}")
    for name in filter(None, args.check_nets.split(",")):
        path = folder / f"{name}_registered.pt"
        if name == "cifar_resnet20":  # not scriptable (its forward reads an optional layer4)
            net = cifar_resnet20().eval()
            torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 32, 32)), str(path))
        else:
            net = getattr(torchvision.models, name)(num_classes=10).eval()
            torch.jit.save(torch.jit.script(net), str(path))
        ckpt = load_checkpoint(path)  # warm
        assert not ckpt.notices, ckpt.notices  # the same forward: nothing to say
        checked = _median(lambda p=path: load_checkpoint(p), args.repeat)
        real = scripted.check_own_forward
        scripted.check_own_forward = _no_check
        try:
            plain = _median(lambda p=path: load_checkpoint(p), args.repeat)
        finally:
            scripted.check_own_forward = real
        print(
            f"{name:<20} {plain:>10.2f} {checked:>8.2f} {checked - plain:>8.2f} "
            f"{checked / plain:>6.2f}"
        )


if __name__ == "__main__":
    main()

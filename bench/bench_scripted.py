"""Opening a TorchScript archive of an unregistered network (its graph converted, core.scripted)
beside opening the same weights as a registered one and beside `torch.jit.load` of the file.

For each torchvision net, the scripted archive of the net itself (registered: read as data and
rebuilt) and of a wrapper holding it as `.inner` (unregistered: converted) are opened with
`load_checkpoint` (the reader process already started); figures are medians of --repeat runs.

    python bench/bench_scripted.py [--repeat 3] [--nets resnet18,mobilenet_v3_small,densenet121]
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

from core import isolation  # noqa: E402
from core.checkpoint import load_checkpoint  # noqa: E402


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
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    isolation.prestart()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), medians of {args.repeat}"
    )
    print(f"{'net':<20} {'jit.load s':>10} {'registered s':>12} {'converted s':>11} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.nets.split(","):
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


if __name__ == "__main__":
    main()

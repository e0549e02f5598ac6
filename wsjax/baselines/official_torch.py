"""The official warm-starting code's training loop in PyTorch, as a speed baseline.

Written in this project from the protocol in ``../shared/PAPER.md`` to mirror what
``JordanAsh/warm_start`` (``run.py``) does per epoch, so wsjax's engine can be timed against it:

- data path: a map-style dataset of uint8 images; each sample goes through PIL and
  ``ToTensor`` + ``Normalize(0.5, 0.5)`` one at a time, batched by a ``DataLoader`` (batch 128,
  ``SubsetRandomSampler`` over the fitted indices, the default single-process loading);
- step: ``zero_grad``, forward, cross-entropy, backward, ``optimizer.step()``, then the loss
  and the number correct read back with ``.item()`` every step (a device sync per step, as
  there);
- model: the narrow CIFAR ResNet-18 (widths 16/32/64/128, bias-free convs, BN momentum 0.1),
  PyTorch's default initialization; optimizer Adam or SGD at a constant lr.

Needs ``torch`` (and ``torchvision`` for the transforms when present; otherwise the same
arithmetic in torch). Import this module only where torch is wanted.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut (1x1 conv + BN when the shape changes), ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """The study's CIFAR ResNet-18 (``wsjax.models.ResNet18`` in PyTorch), NCHW input."""

    def __init__(self, num_classes: int = 10, widths=(16, 32, 64, 128)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for stage, width in enumerate(widths):
            for block in range(2):
                layers.append(BasicBlock(in_planes, width, 2 if stage and not block else 1))
                in_planes = width
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def count_params(net: nn.Module) -> int:
    """Number of trainable scalars of ``net``."""
    return sum(p.numel() for p in net.parameters())


class ImageSet(torch.utils.data.Dataset):
    """uint8 NHWC images and labels, transformed per sample as torchvision's CIFAR10 dataset
    with the official transform does (PIL image -> [0, 1] CHW tensor -> (x - 0.5) / 0.5)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        try:
            from PIL import Image
            from torchvision import transforms
        except ImportError:  # the same arithmetic without PIL / torchvision
            self._to_image, self._transform = None, None
        else:
            self._to_image = Image.fromarray
            self._transform = transforms.Compose([
                transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        if self._transform is not None:
            x = self._transform(self._to_image(image))
        else:
            x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
        return x, int(self.labels[index]), index


def make_loader(images, labels, indices, batch_size: int = 128, seed: int = 0):
    """The official training loader: batches of ``batch_size`` drawn by a
    ``SubsetRandomSampler`` over ``indices`` (reshuffled every epoch), last batch kept."""
    generator = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.SubsetRandomSampler(list(map(int, indices)), generator)
    return torch.utils.data.DataLoader(ImageSet(images, labels), batch_size=batch_size,
                                       sampler=sampler)


def make_optimizer(net: nn.Module, name: str = "adam", lr: float = 1e-3):
    """The official optimizers: Adam or plain SGD, constant ``lr``, no weight decay."""
    if name == "adam":
        return torch.optim.Adam(net.parameters(), lr=lr)
    if name == "sgd":
        return torch.optim.SGD(net.parameters(), lr=lr)
    raise ValueError(f"optimizer {name!r}: choose 'adam' or 'sgd'")


def train_epoch(net, optimizer, loader, device, max_steps: int | None = None) -> dict:
    """One epoch (or its first ``max_steps`` steps) of the official step; the running training
    accuracy and mean loss, the steps taken and their examples."""
    net.train()
    correct = total = steps = 0
    loss_sum = 0.0
    for inputs, targets, _ in loader:
        if max_steps is not None and steps >= max_steps:
            break
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad()
        outputs = net(inputs)
        loss = F.cross_entropy(outputs, targets)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item()
        correct += outputs.argmax(1).eq(targets).sum().item()
        total += targets.size(0)
        steps += 1
    return {"acc": correct / max(total, 1), "loss": loss_sum / max(steps, 1), "steps": steps,
            "examples": total}


def time_epochs(images, labels, indices, *, device: str, repeats: int = 3,
                deadline: float = float("inf"), max_steps: int | None = None,
                optimizer: str = "adam", lr: float = 1e-3, seed: int = 0,
                batch_size: int = 128) -> dict:
    """Seconds per epoch of the official loop on ``images[indices]`` (narrow ResNet-18).

    One untimed epoch first (cuDNN and allocator warm-up, the analogue of compiling), then up
    to ``repeats`` timed epochs, fewer when ``deadline`` (a ``time.perf_counter`` value) passes
    (at least one); ``batch_size`` is the loader's (the official 128). With ``max_steps`` each epoch stops after that many steps: the figures are
    then per ``max_steps`` steps (scale them to a full epoch yourself). Each timer covers the
    loader (per-sample transforms) and the steps, and ends after a CUDA synchronize.
    """
    torch.manual_seed(seed)
    net = ResNet18().to(device)
    opt = make_optimizer(net, optimizer, lr)
    loader = make_loader(images, labels, indices, batch_size, seed=seed)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def epoch():
        start = time.perf_counter()
        out = train_epoch(net, opt, loader, device, max_steps)
        sync()
        return time.perf_counter() - start, out

    warm_s, _ = epoch()
    times, last = [], None
    while len(times) < repeats and (not times or time.perf_counter() < deadline):
        seconds, last = epoch()
        times.append(seconds)
    return {"first_epoch_s": warm_s, "epoch_s": statistics.median(times), "timed": len(times),
            "steps": last["steps"], "examples": last["examples"], "train_acc": last["acc"],
            "params": count_params(net), "torch": torch.__version__, "device": device}

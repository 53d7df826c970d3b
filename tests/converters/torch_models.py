"""Tiny torch modules shared by the torch converter tests (built in code, seeded, nothing downloaded)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(features)))


class CNN(nn.Module):
    """Conv + BatchNorm + Dropout: in train mode it differs from eval mode, so parity proves eval."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 4)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = torch.relu(self.bn(self.conv(image)))
        logits = self.head(self.drop(fmap.mean(dim=(2, 3))))
        return logits, fmap


class TwoTower(nn.Module):
    """Two inputs (one image-like, one vector), two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(5, 4)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.conv(image).amax(dim=(2, 3))
        joint = pooled + self.fc(meta)
        return joint.softmax(dim=-1), joint * 2


class Tokens(nn.Module):
    """Two inputs sharing (batch, seq); the output keeps both dims."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens) * mask.unsqueeze(-1)


class Noisy(nn.Module):
    """Nondeterministic: a different result every call, so validation must fail."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


def seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    """An instance of ``cls`` with seeded weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    module = cls()
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return module


def make_mlp() -> nn.Module:
    """Factory for the CLI tests (``torch_models:make_mlp``)."""
    return seeded(MLP)


class Pair(nn.Module):
    """Two independent inputs and outputs: one can be dynamic while the other stays static."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a * 2, b + 1


class Broken(nn.Module):
    """forward fails on its example inputs: no exporter can trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ torch.ones(5, 2)


class Unexportable(nn.Module):
    """Runs in torch, but neither exporter has an ONNX counterpart for its op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.zeta(x, x + 2.0)


class DataDependent(nn.Module):
    """Runs in torch; torch.export fails on the data-dependent branch (TorchScript traces one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


class TracedOutputs(nn.Module):
    """Traced faithfully by TorchScript; one output follows the batch, one is data-dependent."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :2].repeat(1, 2, 1), torch.nonzero(x > 0)


class ClipLarge(nn.Module):
    """Rescales inputs with a value beyond 4: a data-dependent branch (torch.export refuses it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max() > 4:
            return x / x.abs().max() * 4
        return x * 2


class ClipLargeCond(nn.Module):
    """ClipLarge written with torch.cond: both branches are exported."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.abs().max() > 4, lambda t: t / t.abs().max() * 4, lambda t: t * 2, (x,))


class HalvingLoop(nn.Module):
    """A loop whose trip count is a tensor value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(int(x.abs().max())):
            x = x * 0.5
        return x


def trained_like(module: nn.Module, example: torch.Tensor, seed: int = 0) -> nn.Module:
    """Give every BatchNorm the statistics and affine terms of a trained network, in eval mode.

    Random-init BatchNorm (mean 0, var 1) leaves activations that shrink or blow up layer by layer;
    after training each BatchNorm holds its input's real statistics. One training-mode pass with
    momentum 1 on a batch of inputs like ``example`` records exactly those; scales and shifts are
    drawn around 1 and 0 as training leaves them.
    """
    torch.manual_seed(seed)
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
    module.train()
    with torch.no_grad():
        module(torch.randn(8, *example.shape[1:]) * example.std() + example.mean())
    for bn in bns:
        bn.momentum = 0.1
    return module.eval()


class TokenTypes(nn.Module):
    """BERT-like embeddings: token ids (vocabulary 50) and token types (only 0 and 1 exist)."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(50, 8)
        self.types = nn.Embedding(2, 8)
        self.proj = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return self.proj(self.words(ids) + self.types(types))

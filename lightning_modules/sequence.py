"""Sequence backbones' shared input adapter, and the recurrent backbone (LSTM/GRU).

`SequenceInput` is what lets one backbone read every modality:
- text: token ids (B, T), stored as floats in the frame, right-padded with `pad_id` -> a learned
  embedding (B, T, d) and a padding mask (B, T), True where a token is padding;
- images: (B, C, H, W) -> a sequence of H rows, each row's C*W pixels projected to d;
- tables: (B, F) -> a sequence of F features, each a scalar projected to d (position tells them apart).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SequenceInput(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], width: int, vocab_size: int | None = None, pad_id: int = 0):
        super().__init__()
        self.vocab_size, self.pad_id = vocab_size, pad_id
        if vocab_size is not None:
            if len(in_shape) != 1:
                raise ValueError(f"token input needs shape (T,), got {in_shape}")
            self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
            self.length = in_shape[0]
        elif len(in_shape) == 3:  # image rows
            self.embed = nn.Linear(in_shape[0] * in_shape[2], width)
            self.length = in_shape[1]
        elif len(in_shape) == 1:  # table features
            self.embed = nn.Linear(1, width)
            self.length = in_shape[0]
        else:
            raise ValueError(f"cannot read input of shape {in_shape} as a sequence")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.vocab_size is not None:
            ids = x.long()
            pad = ids == self.pad_id
            # A row of nothing but padding would mask every key (NaN attention): let it see its pads.
            pad = pad & ~pad.all(dim=1, keepdim=True)
            return self.embed(ids.clamp(0, self.vocab_size - 1)), pad
        if x.dim() == 4:
            b, c, h, w = x.shape
            x = x.permute(0, 2, 1, 3).reshape(b, h, c * w)  # (B, H, C*W): one token per row
        else:
            x = x.unsqueeze(-1)  # (B, F, 1): one token per feature
        return self.embed(x), None


def lengths_from(pad: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Tokens before the padding in each row (right padding), at least 1."""
    if pad is None:
        return torch.full((batch,), length, dtype=torch.long, device=device)
    return (~pad).sum(dim=1).clamp(min=1)


class RNN(nn.Module):
    """LSTM or GRU over packed sequences (padding never enters the recurrence); the features are
    the last layer's final hidden state, both directions concatenated when bidirectional."""

    def __init__(self, in_shape: tuple[int, ...], cell: str = "lstm", hidden: int = 128, layers: int = 1,
                 bidirectional: bool = False, embed: int = 64, dropout: float = 0.0,
                 vocab_size: int | None = None, pad_id: int = 0):
        super().__init__()
        self.input = SequenceInput(in_shape, embed, vocab_size, pad_id)
        recurrent = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = recurrent(embed, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
                             dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.directions = 2 if bidirectional else 1
        self.out_features = hidden * self.directions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, pad = self.input(x)  # (B, T, embed)
        b, t, _ = h.shape
        lengths = lengths_from(pad, b, t, h.device).cpu()  # pack_padded_sequence wants CPU lengths
        packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)
        final = state[0] if isinstance(state, tuple) else state  # LSTM: (h_n, c_n); GRU: h_n
        # (layers * directions, B, hidden) -> the last layer's directions side by side: (B, hidden * directions)
        last = final.view(-1, self.directions, b, final.shape[-1])[-1]
        return self.drop(last.transpose(0, 1).reshape(b, -1))

    def layer_groups(self) -> list[list[nn.Module]]:
        return [[self.input], [self.rnn]]


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """(T, d) fixed positional encoding of "Attention is all you need": sin on even, cos on odd dims."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: width // 2])
    return table

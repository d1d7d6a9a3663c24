"""The 3D scan classifier (paper sections 3.2, 3.3.2): slice CNN features read by a bidirectional LSTM.

x (B, Z, C, H, W) -> the encoder's `forward_features` on every real slice -> (B, Z, F) ->
`lstm_layers` bidirectional LSTM layers of `hidden` units -> the last layer's final forward and
backward hidden states, concatenated (B, 2*hidden) -> Linear -> scan logits (B, num_classes).
Scans are padded at the end; with `lengths` the sequence is packed, so padding never changes the
result. `forward_with_slices` also gives the encoder's own slice head's logits on the real slices
from the same encoder pass (training's auxiliary slice loss keeps that head, which `predict`'s
per-slice probabilities come from, trained with the encoder). LSTM initialisation follows the paper: Glorot-uniform input weights and orthogonal
recurrent weights (per gate block), forget-gate bias 1, all other biases 0. Under autocast only the
encoder runs in bf16/fp16: the LSTM reads fp32 features in fp32 (`fp32_sequence`; oneDNN has no
bf16 LSTM on CPUs without bf16 units, and the recurrence is a small part of the work).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ichdet.errors import InputError
from ichdet.models.checks import check_feature_batch
from ichdet.models.registry import create_model, register_model


@contextlib.contextmanager
def fp32_sequence(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """Run a sequence model (the LSTM) in fp32 whatever autocast is on around it: yields `x` as
    float32 with autocast off on its device (nothing is traced when autocast is off, so ONNX
    export sees a plain graph)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            yield x.float()
    else:
        yield x.float()  # the tensor itself when it is float32 already


GATES = ("input", "forget", "cell", "output")  # PyTorch's order of the 4 blocks in weight_ih / weight_hh


@register_model("scan_lstm")
class ScanLSTM(nn.Module):
    """Scan classifier: x (B, Z, C, H, W), lengths (B,) -> logits (B, num_classes).

    The encoder is `encoder`, or `create_model(encoder_name, **encoder_kw)` (a `SliceCNN` by
    default). Slices are encoded `encode_chunk` at a time to bound memory. `dropout` is applied
    between LSTM layers only.
    """

    model_name = "scan_lstm"
    classifier_prefixes = ("lstm", "head")
    last_layer = "head"

    def __init__(self, encoder: nn.Module | None = None, encoder_kw: dict | None = None, lstm_layers: int = 2,
                 hidden: int = 512, num_classes: int = 2, dropout: float = 0.0, encode_chunk: int = 64,
                 encoder_name: str = "slice_cnn", multilabel: bool = False):
        super().__init__()
        if encoder is not None and encoder_kw:
            raise InputError(f"give ScanLSTM either encoder or encoder_kw, got both (encoder_kw={encoder_kw})")
        for key, value in (("lstm_layers", lstm_layers), ("hidden", hidden), ("num_classes", num_classes),
                           ("encode_chunk", encode_chunk)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"ScanLSTM {key} must be a positive integer, got {value!r}")
        self.encoder = encoder if encoder is not None else create_model(encoder_name, **(encoder_kw or {}))
        self.lstm_layers, self.hidden, self.num_classes = lstm_layers, hidden, num_classes
        self.dropout, self.encode_chunk = dropout, encode_chunk
        self.multilabel = bool(multilabel)  # scan logits read one sigmoid each (subtypes, "any" last)
        self.in_channels = self.encoder.in_channels
        self.feature_dim = 2 * hidden
        self.gradcam_layer = f"encoder.{self.encoder.gradcam_layer}"
        self.lstm = nn.LSTM(self.encoder.feature_dim, hidden, num_layers=lstm_layers, batch_first=True,
                            bidirectional=True, dropout=dropout if lstm_layers > 1 else 0.0)
        self.head = nn.Linear(2 * hidden, num_classes)
        self.encoder_frozen = False
        self.init_lstm()

    def init_lstm(self) -> None:
        """Paper initialisation: per gate block, xavier_uniform_ input weights, orthogonal_ recurrent
        weights; bias_ih forget block 1, everything else 0 (so b_ih + b_hh is 1 for the forget gate)."""
        with torch.no_grad():
            for name, p in self.lstm.named_parameters():
                blocks = p.chunk(4, dim=0)
                if name.startswith("weight_ih"):
                    for block in blocks:
                        nn.init.xavier_uniform_(block)
                elif name.startswith("weight_hh"):
                    for block in blocks:
                        nn.init.orthogonal_(block)
                else:
                    p.zero_()
                    if name.startswith("bias_ih"):
                        blocks[GATES.index("forget")].fill_(1.0)

    def freeze_encoder(self, flag: bool = True) -> "ScanLSTM":
        """Stop (or restart) training the encoder: no gradients, always in eval mode, run under no_grad."""
        self.encoder_frozen = bool(flag)
        for p in self.encoder.parameters():
            p.requires_grad_(not flag)
        self.encoder.train(self.training and not flag)
        return self

    def train(self, mode: bool = True) -> "ScanLSTM":
        """As `nn.Module.train`, but a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def _check(self, x: torch.Tensor, lengths) -> torch.Tensor | None:
        if not isinstance(x, torch.Tensor) or x.ndim != 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"ScanLSTM expects scans (B, Z, C, H, W), got shape {shape}")
        if lengths is None:
            return None
        lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1).cpu()
        B, Z = x.shape[:2]
        if len(lengths) != B or lengths.min() < 1 or lengths.max() > Z:
            raise InputError(f"ScanLSTM lengths must be B={B} values in 1..Z={Z}, got {lengths.tolist()} "
                             f"for input shape {tuple(x.shape)}")
        return lengths

    def _encode(self, slices: torch.Tensor) -> torch.Tensor:
        """slices (N, C, H, W) -> (N, F), `encode_chunk` slices at a time."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            parts = [self.encoder.forward_features(slices[i:i + self.encode_chunk])
                     for i in range(0, len(slices), self.encode_chunk)]
        return torch.cat(parts)

    def _per_slice(self, x: torch.Tensor, lengths: torch.Tensor | None, fn) -> torch.Tensor:
        """Apply `fn` ((N, C, H, W) -> (N, D)) to the real slices; (B, Z, D) with zeros at padding."""
        return self._per_slice_real(x, lengths, fn)[1]

    def _per_slice_real(self, x: torch.Tensor, lengths: torch.Tensor | None, fn) -> tuple[torch.Tensor, torch.Tensor]:
        """`fn` on the real slices: (its (N, D) output, scan-major, inferior slice first; the same
        as (B, Z, D) with zeros at padding)."""
        B, Z = x.shape[:2]
        flat = x.reshape(B * Z, *x.shape[2:])
        if lengths is None:
            real = fn(flat)
            return real, real.reshape(B, Z, -1)
        mask = (torch.arange(Z).unsqueeze(0) < lengths.unsqueeze(1)).reshape(-1).to(x.device)
        real = fn(flat[mask])
        out = real.new_zeros(B * Z, real.shape[1])
        out[mask] = real
        return real, out.reshape(B, Z, -1)

    def _sequence(self, seq: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Slice features (B, Z, F) -> scan vector (B, 2*hidden), the LSTM in fp32."""
        with fp32_sequence(seq) as seq:  # the LSTM always in fp32
            if lengths is not None:
                seq = pack_padded_sequence(seq, lengths, batch_first=True, enforce_sorted=False)
            _, (h_n, _) = self.lstm(seq)  # h_n (layers*2, B, hidden), original batch order
            return torch.cat([h_n[-2], h_n[-1]], dim=1)

    def slice_features(self, x: torch.Tensor, lengths: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Z, C, H, W) -> encoder features (B, Z, F); rows past a scan's length are 0."""
        return self._per_slice(x, self._check(x, lengths), self._encode)

    def slice_logits(self, x: torch.Tensor, lengths: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Z, C, H, W) -> per-slice logits of the encoder's own slice head (B, Z, K_slice); 0 past length."""
        return self._per_slice(x, self._check(x, lengths), lambda s: self.encoder.forward_head(self._encode(s)))

    def forward_features(self, x: torch.Tensor, lengths: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Z, C, H, W), lengths (B,) -> scan vector (B, 2*hidden): last layer's final forward and
        backward hidden states."""
        lengths = self._check(x, lengths)
        return self._sequence(self._per_slice(x, lengths, self._encode), lengths)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Scan vector (B, 2*hidden) -> logits (B, num_classes)."""
        check_feature_batch(f, self.feature_dim, "ScanLSTM head")
        return self.head(f)

    def forward_with_slices(self, x: torch.Tensor, lengths: Sequence[int] | torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, Z, C, H, W), lengths (B,) -> (scan logits (B, num_classes), the encoder's slice-head
        logits (N, K_slice) on the N = sum(lengths) real slices, scan-major, inferior slice first:
        the rows of ``x[b, z]`` for z < lengths[b]). The encoder runs once; its features feed both."""
        lengths = self._check(x, lengths)
        real, seq = self._per_slice_real(x, lengths, self._encode)
        return self.forward_head(self._sequence(seq, lengths)), self.encoder.forward_head(real)

    def forward(self, x: torch.Tensor, lengths: Sequence[int] | torch.Tensor | None = None,
                with_slices: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, Z, C, H, W), lengths (B,) or None (all Z slices real) -> logits (B, num_classes);
        with `with_slices`, `forward_with_slices` (so DistributedDataParallel, which wraps
        `forward`, sees the slice head too)."""
        if with_slices:
            return self.forward_with_slices(x, lengths)
        return self.forward_head(self.forward_features(x, lengths))

    def config(self) -> dict:
        """Keyword arguments that rebuild this model with `create_model("scan_lstm", **config)`."""
        return {"encoder_name": self.encoder.model_name, "encoder_kw": self.encoder.config(),
                "lstm_layers": self.lstm_layers, "hidden": self.hidden, "num_classes": self.num_classes,
                "dropout": self.dropout, "encode_chunk": self.encode_chunk, "multilabel": self.multilabel}

"""A network's head: how its logits (N, K) become probabilities, and which labels they are.

Two heads exist. The papers' two-class softmax (`BINARY`: one label, "any" = P(bleed) = softmax
P(class 1)), and the multi-label head of the subtype models (`MULTILABEL`: one sigmoid per logit,
the five subtypes then "any", in `SUBTYPE_LABELS` order). Either way `probabilities` gives
(N, L) with "any" last, so P(bleed) is always the last column. A network says which head it has
with its `multilabel` attribute; `head_of(model)` reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ichdet.errors import InputError
from ichdet.metrics import SUBTYPE_LABELS


@dataclass(frozen=True)
class Head:
    """name: "binary" or "multilabel"; labels: what `probabilities`' columns are, "any" last."""

    name: str
    labels: tuple[str, ...]

    @property
    def multilabel(self) -> bool:
        return self.name == "multilabel"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) -> float32 (N, L) label probabilities, "any" (P(bleed)) last."""
        if self.multilabel:
            return torch.sigmoid(logits.float())
        return torch.softmax(logits.float(), dim=1)[:, 1:]

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) -> float32 (N,) P(bleed): the last column of `probabilities`."""
        return self.probabilities(logits)[:, -1]

    def require_labels(self, what: str) -> None:
        """An InputError unless this head gives subtype labels (`what` names the network)."""
        if not self.multilabel:
            raise InputError(f"{what} has a two-class head, not a multi-label (subtype) one")


BINARY = Head("binary", ("any",))
MULTILABEL = Head("multilabel", tuple(SUBTYPE_LABELS))
HEADS = {h.name: h for h in (BINARY, MULTILABEL)}


def head_of(model: Any) -> Head:
    """The head of a network (its `multilabel` attribute; a network without one is binary)."""
    return MULTILABEL if getattr(model, "multilabel", False) else BINARY

"""AlexNet-SVM: the fine-tuned AlexNet's softmax layer replaced by an SVM on its 4096 penultimate features.

The torch part (`alexnet`) is an ordinary module (state dict `alexnet.*`); the SVM is fitted on
extracted features with `fit_svm` and saved on its own (`svm.save`). The SVM head is not
differentiable: train the AlexNet first (with its softmax), then fit the SVM; Grad-CAM should use
the AlexNet itself.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ichdet.errors import InputError
from ichdet.models.alexnet import AlexNet
from ichdet.models.checks import check_feature_batch
from ichdet.models.registry import register_model
from ichdet.models.svm_head import SVMHead, as_feature_matrix


@register_model("alexnet_svm")
class AlexNetSVM(nn.Module):
    """x (B, 3, H, W) -> AlexNet features (B, 4096) -> SVM. `alexnet_kw` builds the AlexNet when none is given."""

    model_name = "alexnet_svm"

    def __init__(self, alexnet: AlexNet | None = None, svm: SVMHead | None = None, alexnet_kw: dict | None = None):
        super().__init__()
        if alexnet is not None and alexnet_kw:
            raise InputError(f"give AlexNetSVM either alexnet or alexnet_kw, got both (alexnet_kw={alexnet_kw})")
        self.alexnet = alexnet if alexnet is not None else AlexNet(**(alexnet_kw or {}))
        self.svm = svm
        self.feature_dim = self.alexnet.feature_dim
        self.in_channels = self.alexnet.in_channels
        self.gradcam_layer = f"alexnet.{self.alexnet.gradcam_layer}"

    @property
    def num_classes(self) -> int:
        """Classes of the fitted SVM, else of the AlexNet's own head."""
        return len(self.svm.classes_) if self._svm_fitted() else self.alexnet.num_classes

    def _svm_fitted(self) -> bool:
        return self.svm is not None and hasattr(self.svm, "pipeline_")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> AlexNet penultimate features (B, 4096)."""
        return self.alexnet.forward_features(x)

    def encode(self, x: torch.Tensor) -> np.ndarray:
        """Features as numpy (B, 4096), computed in eval mode without gradients."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.forward_features(x).float().cpu().numpy()
        finally:
            self.train(was_training)

    def fit_svm(self, features: np.ndarray, labels) -> "AlexNetSVM":
        """Fit the SVM (a linear `SVMHead` when none was given) on features (N, 4096) and labels (N,)."""
        features = as_feature_matrix(features, "AlexNetSVM.fit_svm", self.feature_dim)
        if self.svm is None:
            self.svm = SVMHead(kernel="linear")
        self.svm.fit(features, labels)
        return self

    def _require_svm(self) -> SVMHead:
        if not self._svm_fitted():
            raise InputError("AlexNetSVM has no fitted SVM; call fit_svm(features, labels) or pass svm=SVMHead.load(path)")
        return self.svm

    def predict_scores(self, x: torch.Tensor) -> np.ndarray:
        """x (B, in_channels, H, W) -> SVM decision values: (B,) for two classes, (B, K) otherwise."""
        return self._require_svm().decision_function(self.encode(x))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Features (B, 4096) -> log SVM probabilities (B, K), so softmax gives `svm.predict_proba`.

        Not differentiable: the result is a new tensor with no gradient history.
        """
        check_feature_batch(f, self.feature_dim, "AlexNetSVM head")
        proba = self._require_svm().predict_proba(f.detach().float().cpu().numpy())
        return torch.from_numpy(np.log(np.clip(proba, 1e-12, 1.0))).to(device=f.device, dtype=f.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> log SVM probabilities (B, K)."""
        return self.forward_head(self.forward_features(x))

    def config(self) -> dict:
        """Keyword arguments that rebuild the torch part; the SVM travels separately (`svm.save`)."""
        return {"alexnet_kw": self.alexnet.config()}

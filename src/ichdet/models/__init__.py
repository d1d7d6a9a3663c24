"""Models: slice CNN, AlexNet and EfficientNet-Lite0 (+ SVM head), scan BiLSTM, slice-aggregation baselines.

Every torch model has `forward_features(x) -> (B, F)`, `forward_head(f) -> (B, K)`,
`feature_dim`, `num_classes`, `in_channels`, `gradcam_layer`, `model_name` and `config()`;
`create_model(model.model_name, **model.config())` rebuilds it.
"""
from ichdet.models.registry import create_model, list_models, model_class, register_model
from ichdet.models.slice_cnn import SliceCNN
from ichdet.models.alexnet import IMAGENET1K_V1, WEIGHTS, AlexNet, Weights, load_alexnet_weights, to_three_channels
from ichdet.models.efficientnet import EfficientNetLite0, load_efficientnet_weights, pretrained_available
from ichdet.models.svm_head import SVMHead
from ichdet.models.scan_lstm import ScanLSTM
from ichdet.models.seg_unet import SegUNet, bleed_slice_scores, segment_slices
from ichdet.models.aggregate import BASELINES, FeatureSVM, pad_features, slice_max, slice_p95, slice_percentile
from ichdet.models.finetune import param_groups, set_trainable
from ichdet.models.flops import count_flops

__all__ = [
    "create_model", "list_models", "model_class", "register_model",
    "SliceCNN", "AlexNet", "EfficientNetLite0", "ScanLSTM", "SegUNet", "bleed_slice_scores", "segment_slices", "SVMHead", "FeatureSVM",
    "Weights", "IMAGENET1K_V1", "WEIGHTS", "load_alexnet_weights", "to_three_channels",
    "load_efficientnet_weights", "pretrained_available",
    "BASELINES", "pad_features", "slice_max", "slice_p95", "slice_percentile",
    "param_groups", "set_trainable", "count_flops",
]

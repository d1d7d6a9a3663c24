"""ScanLSTM: padding invariance, variable lengths, paper initialisation, frozen encoder."""
from __future__ import annotations

import pytest
import torch

from ichdet.errors import InputError
from ichdet.models import ScanLSTM, SliceCNN

ENC = dict(base_width=4, n_units=2, feature_dim=16)


def small(**kw) -> ScanLSTM:
    torch.manual_seed(0)
    return ScanLSTM(encoder_kw=ENC, hidden=8, **kw).eval()


def test_shapes_and_attributes():
    model = small(num_classes=3)
    x = torch.rand(2, 5, 1, 32, 32)
    assert model.slice_features(x).shape == (2, 5, 16)
    assert model.slice_logits(x).shape == (2, 5, 2)
    f = model.forward_features(x)
    assert f.shape == (2, 16) and model.feature_dim == 16
    assert model(x).shape == (2, 3)
    assert model.lstm.bidirectional and model.lstm.num_layers == 2 and model.lstm.hidden_size == 8
    assert model.in_channels == 1 and model.gradcam_layer == "encoder.features.unit2.conv2"


def test_paper_defaults():
    model = ScanLSTM(encoder_kw=dict(base_width=4))
    assert (model.lstm.input_size, model.lstm.hidden_size, model.lstm.num_layers) == (512, 512, 2)
    assert model.feature_dim == 1024 and model.head.in_features == 1024


def test_scan_vector_is_last_layer_final_states():
    model = small()
    x = torch.rand(1, 4, 1, 32, 32)
    out, _ = model.lstm(model.slice_features(x))
    expected = torch.cat([out[:, -1, :8], out[:, 0, 8:]], dim=1)  # forward at the end, backward at the start
    torch.testing.assert_close(model.forward_features(x), expected)


def test_padding_never_changes_result():
    model = small()
    scan = torch.rand(1, 4, 1, 32, 32)
    padded = torch.cat([scan, torch.zeros(1, 3, 1, 32, 32)], dim=1)
    ref = model(scan)
    torch.testing.assert_close(model(padded, torch.tensor([4])), ref, atol=1e-5, rtol=0)
    assert not torch.allclose(model(padded), ref, atol=1e-5)  # without lengths padding does matter


def test_variable_length_batch_equals_single_scans():
    model = small()
    scans = [torch.rand(z, 1, 32, 32) for z in (3, 6, 1)]
    batch = torch.zeros(3, 6, 1, 32, 32)
    for i, s in enumerate(scans):
        batch[i, : len(s)] = s
    out = model(batch, [3, 6, 1])
    for i, s in enumerate(scans):
        torch.testing.assert_close(out[i : i + 1], model(s.unsqueeze(0)), atol=1e-5, rtol=0)
    feats = model.slice_features(batch, [3, 6, 1])
    assert torch.all(feats[0, 3:] == 0) and torch.all(feats[2, 1:] == 0)


def test_forward_with_slices_is_one_encoder_pass_giving_both_outputs():
    """(scan logits, slice-head logits of the real slices) equal forward() and slice_logits() at
    the real slices, from one pass of the encoder; with_slices routes forward() to it."""
    model = small(num_classes=3)
    batch = torch.rand(2, 5, 1, 32, 32)
    lengths = torch.tensor([3, 5])
    calls = []
    enc_forward = model.encoder.forward_features
    model.encoder.forward_features = lambda x: (calls.append(len(x)), enc_forward(x))[1]
    scan, slices = model.forward_with_slices(batch, lengths)
    assert calls == [8], "the encoder runs once, on the 8 real slices only"
    assert scan.shape == (2, 3) and slices.shape == (8, 2)
    assert torch.equal(scan, model(batch, lengths))
    per_slice = model.slice_logits(batch, lengths)
    assert torch.equal(slices, torch.cat([per_slice[0, :3], per_slice[1, :5]]))
    with_slices = model(batch, lengths, with_slices=True)
    assert torch.equal(with_slices[0], scan) and torch.equal(with_slices[1], slices)
    full_scan, full_slices = model.forward_with_slices(batch)  # no lengths: every slice is real
    assert full_slices.shape == (10, 2) and torch.equal(full_scan, model(batch))
    # gradients reach the encoder's head through the slice logits, the LSTM through the scan logits
    model.train()
    scan, slices = model.forward_with_slices(batch, lengths)
    slices.sum().backward()
    assert model.encoder.head.linear.weight.grad.abs().sum() > 0 and model.lstm.weight_ih_l0.grad is None


def test_chunked_encoding_is_identical():
    model = small()
    x = torch.rand(2, 5, 1, 32, 32)
    ref = model(x)
    model.encode_chunk = 3
    torch.testing.assert_close(model(x), ref)


def test_paper_initialisation():
    model = small()
    H = 8
    for name, p in model.lstm.named_parameters():
        blocks = p.detach().chunk(4, dim=0)
        if name.startswith("weight_hh"):
            for b in blocks:
                torch.testing.assert_close(b @ b.T, torch.eye(H), atol=1e-5, rtol=0)
        elif name.startswith("weight_ih"):
            for b in blocks:
                fan_in, fan_out = b.shape[1], b.shape[0]
                assert b.abs().max() <= (6.0 / (fan_in + fan_out)) ** 0.5 + 1e-7
        elif name.startswith("bias_ih"):
            assert torch.all(blocks[1] == 1) and all(torch.all(blocks[k] == 0) for k in (0, 2, 3))
        else:
            assert name.startswith("bias_hh") and torch.all(p == 0)
    forget = model.lstm.bias_ih_l1_reverse[H : 2 * H] + model.lstm.bias_hh_l1_reverse[H : 2 * H]
    assert torch.all(forget == 1)


def test_freeze_encoder():
    model = small()
    model.freeze_encoder()
    model.train()
    assert model.training and model.lstm.training and not model.encoder.training
    x = torch.rand(2, 3, 1, 32, 32)
    model(x, [3, 2]).sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.lstm.parameters()) and model.head.weight.grad is not None
    model.freeze_encoder(False)
    model.train()
    assert model.encoder.training and all(p.requires_grad for p in model.encoder.parameters())
    model(x).sum().backward()
    used = [p for n, p in model.encoder.named_parameters() if not n.startswith("head.")]  # slice head unused here
    assert all(p.grad is not None for p in used)


def test_given_encoder_is_used():
    enc = SliceCNN(**ENC)
    model = ScanLSTM(encoder=enc, hidden=4, lstm_layers=1)
    assert model.encoder is enc and model.config()["encoder_kw"] == enc.config()
    with pytest.raises(InputError, match="either encoder or encoder_kw"):
        ScanLSTM(encoder=enc, encoder_kw=ENC)


def test_bad_inputs():
    model = small()
    with pytest.raises(InputError, match=r"got shape \(2, 1, 32, 32\)"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(InputError, match=r"lengths.*\[4, 0\]"):
        model(torch.rand(2, 3, 1, 32, 32), [4, 0])

"""Mixed precision (bf16, fp16 with a GradScaler) and the channels-last memory format in the
trainer; the CUDA cases skip without a GPU."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_training as tiny

from detector.checkpoint import load_checkpoint


def _conv_weights(model):
    return [p for p in model.parameters() if p.dim() == 4]


def _finite(model) -> bool:
    return all(torch.isfinite(v).all() for v in model.state_dict().values()
               if v.is_floating_point())


def test_channels_last_on_the_cpu_trains_the_same_model(shapes_root, tmp_path):
    plain = tiny.make_trainer(shapes_root, tmp_path / "a", phases=tiny.end_to_end(3))
    plain.train()
    last = tiny.make_trainer(shapes_root, tmp_path / "b", phases=tiny.end_to_end(3),
                             channels_last=True)
    assert all(w.is_contiguous(memory_format=torch.channels_last)
               for w in _conv_weights(last.models["main"]))
    last.train()
    for key, value in plain.models["main"].state_dict().items():
        torch.testing.assert_close(last.models["main"].state_dict()[key], value, rtol=1e-4,
                                   atol=1e-5, msg=key)


@pytest.mark.parametrize(("precision", "images_format"), [
    ("fp32", torch.contiguous_format), ("bf16", torch.channels_last)])
def test_auto_layout_is_resolved_by_the_trainer(shapes_root, tmp_path, precision, images_format):
    """channels_last="auto" (train.yaml's default) reaches the Trainer as it is: on a CPU in fp32
    the leading convolutions stay NCHW with the images, with bf16 everything is channels-last."""
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(1),
                                precision=precision, channels_last="auto")
    assert trainer.memory_format == images_format
    first = _conv_weights(trainer.models["main"])[0]
    assert first.is_contiguous(memory_format=images_format)
    if images_format == torch.contiguous_format:  # a 3-channel 3x3 weight is both otherwise
        assert not first.is_contiguous(memory_format=torch.channels_last)


def test_fp16_on_the_cpu_has_no_scaler(shapes_root, tmp_path):
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(1),
                                precision="fp16")
    assert not trainer.scaler.is_enabled()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda_trains_with_float32_losses(shapes_root, tmp_path, precision,
                                                            cuda_device):
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(4),
                                precision=precision, channels_last=True, checkpoint_period=2,
                                device=cuda_device)
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    losses = []
    step = trainer._step

    def recording_step(model, phase):
        out = step(model, phase)
        losses.append(out[0])
        return out

    trainer._step = recording_step
    summary = trainer.train()
    assert summary["iterations"] == 4 and _finite(trainer.models["main"])
    assert all(v.dtype == torch.float32 for step_losses in losses if step_losses
               for v in step_losses.values())
    state = load_checkpoint(summary["checkpoint"])
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0  # the scaler's state is part of the checkpoint
        resumed = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(4),
                                    precision=precision, device=cuda_device)
        resumed.resume(summary["checkpoint"])
        assert resumed.scaler.get_scale() == trainer.scaler.get_scale()

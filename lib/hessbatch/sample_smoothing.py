"""Per-sample label smoothing guided by another run's late checkpoints (our reading of Datta et
al.'s TGTSS): a training sample whose predicted label changes across the guide's checkpoints is
smoothed more."""

from __future__ import annotations

import numpy as np
import torch

from . import stability
from .errors import check
from .evaluation import predict
from .runs import Run


def temporal_epochs(run: Run) -> list[int]:
    """A run's snapshot epochs from the second half of its training, before its last epoch (the
    checkpoints of its temporal label entropy, together with the final weights)."""
    last = run.result["epochs"]
    return [e for e in run.snapshot_epochs() if last / 2 < e < last]


def guided_smoothing(guide: Run, ds, alpha: float, device) -> torch.Tensor:
    """Per-training-sample label smoothing from ``guide``'s temporal label entropy on ``ds``'s
    training set (``stability.entropy_smoothing``), on ``device``."""
    epochs = temporal_epochs(guide)
    check(epochs, f"the sample_smoothing guide run {guide.key} has no snapshot from the second half of its "
                  "training: train it with save_every > 0")
    check(guide.result["n_train"] == ds.n_train and guide.result["dataset_label"] == ds.label,
          f"the sample_smoothing guide run {guide.key} was trained on other data ({guide.result['dataset_label']}, "
          f"{guide.result['n_train']} samples)")
    preds = [predict(guide.model(device, e), ds.x_train).argmax(1).cpu().numpy() for e in [*epochs, None]]
    alpha_i = stability.entropy_smoothing(np.stack(preds), ds.num_classes, alpha)
    return torch.as_tensor(alpha_i, dtype=torch.float32, device=device)

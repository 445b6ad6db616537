"""The stability threshold of the optimizer hessbatch trains with (``torch.optim.SGD``, heavy-ball
momentum): the sharpness above which it diverges on a quadratic.

On f(θ) = λθ²/2, SGD with step η and momentum β (v ← βv + ∇f, θ ← θ − ηv) is the linear
recurrence with characteristic polynomial z² − (1 + β − ηλ) z + β; both roots lie inside the unit
circle, for 0 ≤ β < 1, exactly when 0 < ηλ < 2(1 + β). Full-batch gradient descent on neural
networks drives λ_max up to about this value and hovers there (Cohen et al., "Gradient Descent on
Neural Networks Typically Occurs at the Edge of Stability", ICLR 2021: 2/η without momentum)."""

from __future__ import annotations

from .errors import check


def stability_threshold(lr: float, momentum: float = 0.0) -> float:
    """2(1 + β)/η."""
    check(lr > 0 and 0 <= momentum < 1, f"need lr > 0 and momentum in [0, 1), got {lr!r}, {momentum!r}")
    return 2 * (1 + momentum) / lr


def threshold_after(config, epochs: int, losses=()) -> float:
    """The threshold of a run (a ``TrainConfig``) after ``epochs`` epochs: at the learning rate
    and momentum of its last epoch (of its first, at the initialization); ``losses``, the run's
    training losses per epoch, for a plateau rule (``lr_plateau``)."""
    from .config import epoch_lr

    return stability_threshold(epoch_lr(config, max(epochs, 1), losses), config.momentum)

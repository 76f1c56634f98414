"""Guidance at sampling time, for every process: classifier-free guidance, autoguidance and
classifier guidance.

Ho & Salimans (2022), "Classifier-Free Diffusion Guidance" (NeurIPS workshop) — CFG.
Dhariwal & Nichol (2021), "Diffusion Models Beat GANs on Image Synthesis" (NeurIPS) —
classifier guidance. Kynkäänniemi et al. (2024), "Applying Guidance in a Limited Interval
Improves Sample and Distribution Quality in Diffusion Models" — the guidance interval.
Karras et al. (2024), "Guiding a Diffusion Model with a Bad Version of Itself" (NeurIPS) —
autoguidance.

**Classifier-free guidance lives in network-output space.** Every view a process hands out
(denoiser ``c_skip x + c_out F``, flow velocity ``F``, consistency ``c_skip x + c_out F``, the
PF-ODE ``(x − D)/σ`` built on a denoiser) is affine in the raw network output ``F`` with
coefficients that do not depend on ``F``. Guiding ``F`` by ``F_u + w (F_c − F_u)`` therefore
guides every view by the same formula (``view_u + w (view_c − view_u)``), so
:class:`GuidedNet` wraps the backbone and no process knows about guidance
(``tests/test_guidance.py`` checks the affine claim for each process family).

**Autoguidance** replaces the unconditional model by a worse model of the same task — a
smaller or less-trained network of the same process, with the same conditioning:
``D_w(x; σ) = D_bad(x; σ) + w (D_good(x; σ) − D_bad(x; σ))`` (Karras et al. 2024, eq. 1 with
the guiding model ``D_1`` the bad one). The same affine argument makes it a backbone wrapper
(:class:`GuidedNet` with ``guide``), so it serves every view: the denoiser and PF-ODE of
diffusion and PFGM++, flow matching's velocity, consistency functions. The two networks are
evaluated separately, so a guided call counts two evaluations. :func:`check_guide` refuses a
guiding checkpoint of another process, options, data shape or conditioning.

**The guidance interval** is given on the time variable of the view the sampler integrates —
the value ``t`` a solver passes to the view function ``fn(x, t)``: σ for denoiser, score and
consistency views and for σ-frame ODE views (diffusion, PFGM++), ``t ∈ [0, 1]`` for the flow
matching ODE view. Outside the interval the network is conditional (``w = 1``), as in
Kynkäänniemi et al. (2024, §3). The driver tells the wrapper the current time through
:meth:`GuidedNet.timed`, so the interval needs no process knowledge.

**Classifier guidance** adds ``s ∇_x log p(y | x, σ)`` to the score (Dhariwal & Nichol 2021,
§4.1 and Algorithm 1; in score form Song et al. 2021, eq. 14). In the σ-frame the score is
``(D − x)/σ²``, so the guided denoiser is ``D + s σ² ∇_x log p(y | x, σ)``. It is defined only
where a score is: on a :class:`~physgen.core.process.ScoreView`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from physgen.core.process import Backbone, ScoreView, append_dims, as_time
from physgen.errors import ConfigError

__all__ = ["Classifier", "GuidedNet", "check_guide", "classifier_guided", "uncond_labels"]

#: ``classifier(x, sigma) -> logits [B, num_classes]``; ``x`` in the σ-frame, ``sigma`` ``[B]``.
Classifier = Callable[[Tensor, Tensor], Tensor]


def uncond_labels(labels: Tensor) -> Tensor:
    """The "no label" value −1 in every row: what a conditional net reads as unconditional."""
    return torch.full_like(labels, -1)


class GuidedNet:
    """A backbone ``F(x, noise_label, class_labels)`` returning the classifier-free guided
    output ``F_u + w (F_c − F_u)`` (Ho & Salimans 2022, eq. 6 in output space), or with
    ``guide`` the autoguided output ``F_bad + w (F_good − F_bad)`` (Karras et al. 2024, eq. 1),
    ``net`` the good model and ``guide`` the bad one.

    ``scale`` is ``w``: 0 is the unconditional (bad) model, 1 the conditional (good) one.
    ``interval`` ``(lo, hi)`` limits guidance to view times in ``[lo, hi]`` (module
    docstring); elsewhere the output is the conditional (good) model's. Without ``guide``,
    rows whose label is −1 are unconditional at every ``w``, and conditional and unconditional
    outputs come from one batched forward pass, which counts as two network evaluations
    (:attr:`doubled`); with ``guide`` the two networks run one after the other, two
    evaluations as well. Where the interval switches guidance off, or at ``w`` ∈ {0, 1}, one
    network runs and counts one.
    """

    def __init__(
        self, net: Backbone, scale: float, interval: tuple[float, float] | None = None,
        guide: Backbone | None = None,
    ) -> None:  # fmt: skip
        if interval is not None and not interval[0] <= interval[1]:
            raise ConfigError(f"guidance interval needs lo ≤ hi, got {interval}")
        self.net, self.scale, self.interval, self.guide = net, float(scale), interval, guide
        self._time: Tensor | None = None
        #: guided calls so far: each evaluated the network twice (conditional and
        #: unconditional, batched), so the NFE of a guided sample adds one per such call
        self.doubled = 0

    def timed(self, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``fn(x, t, ...)`` that first records ``t`` for the guidance interval."""
        if self.interval is None:
            return fn

        def call(x: Tensor, t: Tensor, *times: Tensor) -> Tensor:
            self._time = as_time(torch.as_tensor(t, dtype=torch.float64), x.double())
            try:
                return fn(x, t, *times)
            finally:
                self._time = None

        return call

    def _active(self, x: Tensor) -> Tensor | None:
        """``[B]`` bool: rows inside the interval; None when guidance is on everywhere."""
        if self.interval is None:
            return None
        if self._time is None:
            raise ConfigError("a guidance interval needs the view function wrapped by timed()")
        lo, hi = self.interval
        return ((self._time >= lo) & (self._time <= hi)).to(x.device)

    def __call__(
        self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None
    ) -> Tensor:
        if self.guide is not None:
            return self._autoguided(x, noise_label, class_labels)
        if class_labels is None or self.scale == 1.0:
            return self.net(x, noise_label, class_labels)
        active = self._active(x)
        if active is not None and not bool(active.any()):
            return self.net(x, noise_label, class_labels)
        if self.scale == 0.0 and active is None:
            return self.net(x, noise_label, uncond_labels(class_labels))
        label = noise_label.expand(x.shape[0]) if noise_label.ndim == 0 else noise_label
        self.doubled += 1  # two network evaluations, as the field counts guidance's cost
        both = self.net(
            torch.cat([x, x]),
            torch.cat([label, label]),
            torch.cat([class_labels, uncond_labels(class_labels)]),
        )
        cond, uncond = both.chunk(2)
        guided = uncond + self.scale * (cond - uncond)  # Ho & Salimans 2022, eq. 6
        if active is None:
            return guided
        return torch.where(append_dims(active, x.ndim), guided, cond)

    def _autoguided(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None) -> Tensor:
        assert self.guide is not None
        active = self._active(x)
        if self.scale == 1.0 or (active is not None and not bool(active.any())):
            return self.net(x, noise_label, class_labels)
        if self.scale == 0.0 and active is None:
            return self.guide(x, noise_label, class_labels)
        self.doubled += 1  # the good and the bad network: two evaluations
        good = self.net(x, noise_label, class_labels)
        bad = self.guide(x, noise_label, class_labels)
        guided = bad + self.scale * (good - bad)  # Karras et al. 2024, eq. 1
        if active is None:
            return guided
        return torch.where(append_dims(active, x.ndim), guided, good)


def check_guide(model: Any, guide: Any) -> None:
    """Refuse (one line) to autoguide ``model`` with ``guide`` (both
    :class:`physgen.api.Checkpoint`) unless they are the same process with the same options,
    on data of the same shape, with the same classes and latent space: only then are their
    network outputs the same quantity."""
    pairs = [
        ("process", model.process_name, guide.process_name),
        ("process options", model.meta["process"].get("options"),
         guide.meta["process"].get("options")),
        ("data shape", tuple(model.event_shape), tuple(guide.event_shape)),
        ("number of classes", model.num_classes, guide.num_classes),
        ("latent autoencoder", model.meta.get("latent"), guide.meta.get("latent")),
    ]  # fmt: skip
    for what, mine, theirs in pairs:
        if mine != theirs:
            raise ConfigError(
                f"guide_with {guide.path}: its {what} is {theirs!r}, the model's is {mine!r}; "
                "autoguidance needs a worse model of the same process and data"
            )


def classifier_guided(
    view: Any, classifier: Classifier, labels: Tensor | None, scale: float
) -> ScoreView:
    """``view`` with its denoiser replaced by ``D + s σ² ∇_x log p(y | x, σ)`` (Dhariwal &
    Nichol 2021, Algorithm 1, on the score ``(D − x)/σ²``). ``labels`` ``[B]``: the class
    ``y`` of each row (−1: no guidance for that row). Only a score view has this form."""
    if not isinstance(view, ScoreView):
        raise ConfigError(
            f"classifier guidance adds to the score, and this {type(view).__name__} has none; "
            "use a sampler on a score view (e.g. heun_churn, em, ancestral)"
        )
    if labels is None:
        raise ConfigError("classifier guidance needs class labels (cond)")
    denoise = view.denoise

    def guided(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = as_time(sigma, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = classifier(xg, sigma).log_softmax(-1)
            keep = labels >= 0
            picked = logp.gather(1, labels.clamp_min(0)[:, None])[:, 0] * keep
            (grad,) = torch.autograd.grad(picked.sum(), xg)
        # score + s ∇ log p(y | x, σ), written on D = x + σ² score (Tweedie)
        return denoise(x, sigma) + scale * append_dims(sigma**2, x.ndim) * grad.to(x.dtype)

    return dataclasses.replace(view, denoise=guided)

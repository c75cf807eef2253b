"""Conditional flow matching (CFM) decoder of the v3/v4 SoVITS: training loss and Euler sampling.

Follows the `CFM` class of GPT-SoVITS' `module/models.py`. Mels are the normalised log-mels of
`gsv_accel.audio` (about [-1, 1]); the flow runs from x0 ~ N(0, I) at t = 0 to the mel at t = 1 and the
DiT predicts the velocity. A prompt (the first frames of the target mel) is given to the estimator
as a separate input, and those frames of x_t are zero.

Training (`CFM.forward`) draws, in this order, from the global generators (so that a seeded run
reproduces the official one): t = torch.rand(B), x0 = torch.randn_like(mel), Python's
`random.random()` (< 0.3 takes the "shortcut" branch) and, in that branch only,
torch.randint(2, 8, (B,)) for the step size d = 2^-base. In the shortcut branch the target is the
mean velocity of two teacher steps of size d (made without gradient) and the student gets dt = 2d;
otherwise the target is x1 - x0 with dt = 0.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import torch
from torch import nn

from .dit import DiT

# Probability of the two-step "shortcut" target in a training step (official value).
SHORTCUT_PROBABILITY = 0.3
# Step sizes below this are given to the estimator as dt = 0 in the teacher calls.
MIN_TEACHER_DT = 1e-2


class CFMLoss(NamedTuple):
    """What a CFM training step computed; `loss` is what is optimised."""

    loss: torch.Tensor               # scalar: mean over items of the MSE on frames prompt_len..x_len
    t: torch.Tensor                  # (B,) flow times
    x0: torch.Tensor                 # (B, mel, T) noise
    dt: torch.Tensor                 # (B,) step size the student saw (0 without the shortcut)
    n_estimator_calls: int           # 1, or 3 with the shortcut (two teacher calls)


def prompt_mask(prompt_lens: torch.Tensor, length: int) -> torch.Tensor:
    """(B, 1, length) bool, True on each item's first prompt_lens[i] frames."""
    frames = torch.arange(length, device=prompt_lens.device)
    return (frames.unsqueeze(0) < prompt_lens.unsqueeze(1)).unsqueeze(1)


class CFM(nn.Module):
    """Flow-matching wrapper around the DiT `estimator` (key prefix `cfm.estimator.`)."""

    def __init__(self, in_channels: int, estimator: DiT) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.estimator = estimator

    # ------------------------------------------------------------------ training

    def forward(self, x1: torch.Tensor, x_lens: torch.Tensor, prompt_lens: torch.Tensor, mu: torch.Tensor,
                use_grad_ckpt: bool = False, rng: random.Random | None = None) -> CFMLoss:
        """Flow-matching loss of target mels x1 (B, mel, T) given content features mu (B, text_dim, T).

        x_lens: (B,) valid mel frames; prompt_lens: (B,) prompt frames (excluded from the loss).
        `rng` draws the shortcut decision (default: the global `random` module, as the official).
        """
        batch = x1.shape[0]
        t = torch.rand([batch], device=mu.device, dtype=x1.dtype)
        x0 = torch.randn_like(x1, device=mu.device)
        vt = x1 - x0
        xt = x0 + t[:, None, None] * vt
        dt = torch.zeros_like(t, device=mu.device)
        in_prompt = prompt_mask(prompt_lens.to(x1.device), x1.shape[-1])
        prompt = torch.where(in_prompt, x1, torch.zeros_like(x1))
        xt = xt.masked_fill(in_prompt, 0.0)

        n_calls = 1
        # The embedding of mu (no random draws) is the same in all estimator calls of the step.
        text_embed = self.estimator.embed_text(mu)
        draw = rng.random() if rng is not None else random.random()
        if draw < SHORTCUT_PROBABILITY:
            base = torch.randint(2, 8, (batch,), device=mu.device)
            d = 1 / torch.pow(2, base)
            d_input = d.masked_fill(d < MIN_TEACHER_DT, 0.0)
            # The teachers' outputs are detached targets; the prompt frames of the midpoint are not
            # re-zeroed (as in the official code).
            with torch.no_grad():
                teacher_embed, dt_embed = text_embed.detach(), self.estimator.d_embed(d_input)
                v1 = self.estimator(xt, prompt, x_lens, t, d_input, None, use_grad_ckpt,
                                    text_embed=teacher_embed, dt_embed=dt_embed).transpose(2, 1)
                x_mid = xt + d[:, None, None] * v1
                v2 = self.estimator(x_mid, prompt, x_lens, t + d, d_input, None, use_grad_ckpt,
                                    text_embed=teacher_embed, dt_embed=dt_embed).transpose(2, 1)
            vt = ((v1 + v2) / 2).detach()
            dt = 2 * d
            n_calls = 3

        vt_pred = self.estimator(xt, prompt, x_lens, t, dt, None, use_grad_ckpt,
                                 text_embed=text_embed).transpose(2, 1)
        loss = 0
        for i in range(batch):
            start, end = int(prompt_lens[i]), int(x_lens[i])
            loss = loss + nn.functional.mse_loss(vt_pred[i, :, start:end], vt[i, :, start:end])
        return CFMLoss(loss / batch, t, x0, dt, n_calls)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def inference(self, mu: torch.Tensor, x_lens: torch.Tensor, prompt: torch.Tensor, n_timesteps: int,
                  temperature: float = 1.0, inference_cfg_rate: float = 0.0) -> torch.Tensor:
        """Sample mels (B, mel, T) with `n_timesteps` Euler steps from t = 0 to 1.

        mu: content features, time-major (B, T, text_dim), as official inference passes them;
        x_lens: (B,); prompt: (B, mel, Tp) normalised mel of the first Tp frames, which stay zero in
        the output. The only random draw is the initial noise, torch.randn(B, mel, T) * temperature.
        With `inference_cfg_rate` > 0, classifier-free guidance: v + (v - v_uncond) * rate, where
        v_uncond drops both the prompt and the content features.
        """
        batch, length = mu.size(0), mu.size(1)
        x = torch.randn([batch, self.in_channels, length], device=mu.device, dtype=mu.dtype) * temperature
        prompt_len = prompt.size(-1)
        prompt_x = torch.zeros_like(x, dtype=mu.dtype)
        prompt_x[..., :prompt_len] = prompt[..., :prompt_len]
        x[..., :prompt_len] = 0
        mu = mu.transpose(2, 1)

        use_cfg = inference_cfg_rate > 1e-5
        d = 1 / n_timesteps
        d_tensor = torch.ones(batch, device=x.device, dtype=mu.dtype) * d
        # Neither embedding depends on x or t: computed once for all steps.
        dt_embed = self.estimator.d_embed(d_tensor)
        text_embed = self.estimator.embed_text(mu)
        text_embed_uncond = self.estimator.embed_text(mu, drop_text=True) if use_cfg else None
        t = 0.0
        for _ in range(n_timesteps):
            t_tensor = torch.ones(batch, device=x.device, dtype=mu.dtype) * t
            v = self.estimator(x, prompt_x, x_lens, t_tensor, d_tensor, None, text_embed=text_embed,
                               dt_embed=dt_embed).transpose(2, 1)
            if use_cfg:
                v_uncond = self.estimator(x, prompt_x, x_lens, t_tensor, d_tensor, None, drop_audio_cond=True,
                                          text_embed=text_embed_uncond, dt_embed=dt_embed).transpose(2, 1)
                v = v + (v - v_uncond) * inference_cfg_rate
            x = x + d * v
            t = t + d
            x[:, :, :prompt_len] = 0
        return x

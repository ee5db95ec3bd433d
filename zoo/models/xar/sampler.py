"""xAR sampling: one autoregressive step per entity, each solved from noise by an ODE/SDE.

Clean entities already generated sit in a KV cache at t=0, so every solver step only runs the
current entity's tokens. Classifier-free guidance runs the conditional and null-class batches
together; its scale rises linearly over the AR steps (the first entity is unguided).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from zoo.errors import ConfigError
from zoo.models.xar.model import XARTransformer

Velocity = Callable[[Tensor, Tensor], Tensor]  # (x_t, t) -> v


def cfg_schedule(cfg_scale: float, step: int, num_entities: int) -> float:
    """Guidance scale of AR step ``step``: 1 at the first entity rising linearly to ``cfg_scale``."""
    if num_entities == 1:
        return cfg_scale
    return 1.0 + (cfg_scale - 1.0) * step / (num_entities - 1)


def euler_ode(velocity: Velocity, x: Tensor, num_steps: int) -> Tensor:
    """Probability-flow ODE dx = v dt from t=1 (noise) to t=0 (data), Euler steps."""
    ts = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t_cur).item() * velocity(x, t_cur.item())
    return x


def euler_maruyama(velocity: Velocity, x: Tensor, num_steps: int, generator: torch.Generator | None = None) -> Tensor:
    """Reverse SDE with diffusion w(t)=2t from t=1 to 0.04, then one deterministic step to 0.

    Score from velocity for the linear path x_t = (1-t) x + t eps: s = (-(1-t) v - x_t) / t.
    """
    ts = torch.cat([torch.linspace(1.0, 0.04, num_steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    for i, (t_cur, t_next) in enumerate(zip(ts[:-1].tolist(), ts[1:].tolist())):
        dt = t_next - t_cur
        v = velocity(x, t_cur)
        score = (-(1.0 - t_cur) * v - x) / t_cur
        drift = v - 0.5 * (2.0 * t_cur) * score
        x = x + drift * dt
        if i < len(ts) - 2:  # the last step returns the mean
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + (2.0 * t_cur) ** 0.5 * abs(dt) ** 0.5 * noise
    return x


@torch.no_grad()
def sample_sequence(net: XARTransformer, labels: Tensor, num_steps: int = 40, cfg_scale: float = 1.0,
                    solver: Literal["sde", "ode"] = "sde", generator: torch.Generator | None = None) -> Tensor:
    """Latent tokens [B, seq_len, token_dim] in raster order, generated entity by entity."""
    if solver not in ("sde", "ode"):
        raise ConfigError(f"unknown solver {solver!r}; use 'sde' (Euler-Maruyama) or 'ode' (Euler)")
    if num_steps < 1:
        raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
    if labels.dtype != torch.long or labels.dim() != 1:
        raise ConfigError(f"class labels must be a 1-D long tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() > net.num_classes):
        raise ConfigError(f"class labels must be in [0, {net.num_classes - 1}] ({net.num_classes} = unconditional); "
                          f"got {labels.min().item()}..{labels.max().item()}")
    guided = cfg_scale != 1.0
    b = labels.shape[0]
    ys = torch.cat([labels, torch.full_like(labels, net.null_class)]) if guided else labels
    caches = net.new_caches()
    device = labels.device
    generated: list[Tensor] = []
    for n in range(net.num_entities):
        if generated:  # the previous clean entity joins the cache at t=0
            prev = generated[-1]
            prev = torch.cat([prev, prev]) if guided else prev
            cond = net.condition(ys, torch.zeros(len(ys), 1, device=device))
            net(prev, cond, net.entity_view(n - 1, caches, append=True))
        scale = cfg_schedule(cfg_scale, n, net.num_entities)
        view = net.entity_view(n, caches, append=False)

        def velocity(x: Tensor, t: float, view=view, scale=scale) -> Tensor:
            xin = torch.cat([x, x]) if guided else x
            cond = net.condition(ys, torch.full((len(ys), 1), t, device=device))
            v = net(xin.float(), cond, view).to(x.dtype)
            if not guided:
                return v
            v_cond, v_uncond = v.chunk(2)
            return v_uncond + scale * (v_cond - v_uncond)

        noise = torch.randn((b, net.entity_len, net.token_dim), generator=generator, device=device)
        if solver == "ode":
            x = euler_ode(velocity, noise, num_steps)
        else:
            x = euler_maruyama(velocity, noise, num_steps, generator)
        generated.append(x.float())
    return net.to_grid(torch.cat(generated, dim=1))

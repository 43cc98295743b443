"""A tiny LLaMA-style decoder, readable top to bottom.

RMSNorm -> rotary causal self-attention -> RMSNorm -> FFN, with residuals. The FFN is either
gated (LLaMA/Mistral/Qwen: ``down(act(gate(x)) * up(x))``) or plain (GPT-2: ``proj(act(fc(x)))``);
the activation is a module (``self.act``) so activation-sparsity tools can find and swap it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from actsparse.plugins.activations import make_activation
from actsparse.plugins.sites import register_ffn

FFN_KINDS = ("gated", "plain")


@dataclass
class LMConfig:
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ffn: str = "gated"
    # Hidden width = ffn_ratio * d_model, rounded up to a multiple of 8. LLaMA uses 8/3 for
    # gated FFNs (same parameters as a 4x plain FFN).
    ffn_ratio: float = 8 / 3
    activation: str = "silu"
    threshold: float = 0.0
    max_seq_len: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"Unknown ffn kind {self.ffn!r}. Valid kinds: {', '.join(FFN_KINDS)}.")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}."
            )
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("The head dimension must be even for rotary embeddings.")
        make_activation(self.activation, self.threshold)  # validates the name early

    @property
    def d_ff(self) -> int:
        return int(math.ceil(self.ffn_ratio * self.d_model / 8) * 8)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x [batch, heads, seq, head_dim]."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class GatedFFN(nn.Module):
    """``down(act(gate(x)) * up(x))``: the activation site is ``act``; sparsity is measured on
    ``act(gate(x)) * up(x)``, the input of ``down``."""

    def __init__(self, d_model: int, d_ff: int, activation: str, threshold: float = 0.0) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)
        self.act = make_activation(activation, threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


class PlainFFN(nn.Module):
    """``proj(act(fc(x)))`` (GPT-2 style)."""

    def __init__(self, d_model: int, d_ff: int, activation: str, threshold: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, d_ff)
        self.proj = nn.Linear(d_ff, d_model)
        self.act = make_activation(activation, threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


# How activation-sparsity tools see these FFNs (DESIGN §2).
register_ffn(GatedFFN, gate="gate", up="up", down="down", act="act")
register_ffn(PlainFFN, fc="fc", down="proj", act="act")


class Block(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        ffn_cls = GatedFFN if cfg.ffn == "gated" else PlainFFN
        self.ffn = ffn_cls(cfg.d_model, cfg.d_ff, cfg.activation, cfg.threshold)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class TinyLM(nn.Module):
    """Decoder-only LM over byte tokens.

    Example:
        >>> model = TinyLM(d_model=32, n_layers=2, n_heads=2)
        >>> model(torch.randint(0, 256, (2, 16))).shape
        torch.Size([2, 16, 256])
    """

    def __init__(self, config: LMConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = config if config is not None else LMConfig(**overrides)
        if config is not None and overrides:
            cfg = LMConfig(**{**asdict(config), **overrides})
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rotary_tables(cfg.max_seq_len, cfg.d_model // cfg.n_heads, cfg.rope_base)
        # Derived from the config, so not saved in checkpoints.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def config_dict(self) -> dict:
        return asdict(self.config)

    def num_parameters(self) -> int:
        """Trainable parameters, tied weights counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.config.max_seq_len:
            raise ValueError(
                f"Sequence length {t} exceeds max_seq_len={self.config.max_seq_len}; "
                "raise model.max_seq_len or shorten data.seq_len."
            )
        x = self.embed(tokens)
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.norm(x))

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding (recomputes the context each step; the model is tiny)."""
        for _ in range(max_new_tokens):
            context = tokens[:, -self.config.max_seq_len :]
            next_token = self(context)[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
        return tokens

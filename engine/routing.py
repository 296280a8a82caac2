"""Mixture-of-experts routing as a forward used it: per token, the k experts the router chose and their weights.

Torch-free, like the Trace that carries it: a forward records one RoutingBlock per MoE layer (the rows of the
tokens it fed), a session stacks them in token order, and `trace.routing(layer)` joins them into a Routing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROUTER_SUFFIX = "router"  # blocks live in the Trace under "<stack>.<layer>.router", beside the capture names


def router_name(stack: str, layer: int) -> str:
    """Where the routing of one MoE layer is kept in a Trace's blocks: "decoder.3.router"."""
    return f"{stack}.{layer}.{ROUTER_SUFFIX}"


def is_router_name(name: str) -> bool:
    return name.endswith("." + ROUTER_SUFFIX)


@dataclass(frozen=True, eq=False)
class RoutingBlock:
    """Tokens q_start.. of one MoE layer: experts (n, k) int32 and their weights (n, k) float32, read-only."""

    q_start: int
    experts: np.ndarray
    weights: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.experts.nbytes + self.weights.nbytes


@dataclass(frozen=True, eq=False)
class Routing:
    """The routing of one MoE layer over a trace's tokens: `experts` (tokens, k) int, `weights` (tokens, k) float,
    in the order the router returned them (highest first for top-k routers), as the forward weighted the experts."""

    layer: int
    experts: np.ndarray
    weights: np.ndarray
    n_experts: int | None = None

    @property
    def k(self) -> int:
        return self.experts.shape[1]

    @property
    def top_expert(self) -> np.ndarray:
        """Per token, the expert with the largest weight (tokens,)."""
        return self.experts[np.arange(len(self.experts)), np.argmax(self.weights, axis=1)]

    def load(self) -> np.ndarray:
        """How many tokens chose each expert (n_experts,), counting every one of the k choices."""
        n = self.n_experts if self.n_experts is not None else int(self.experts.max(initial=-1)) + 1
        return np.bincount(self.experts.ravel(), minlength=n)


def join_routing(layer: int, blocks: tuple[RoutingBlock, ...], n_experts: int | None) -> Routing:
    experts = np.concatenate([b.experts for b in blocks], axis=0) if len(blocks) > 1 else blocks[0].experts
    weights = np.concatenate([b.weights for b in blocks], axis=0) if len(blocks) > 1 else blocks[0].weights
    experts.flags.writeable = False
    weights.flags.writeable = False
    return Routing(layer, experts, weights, n_experts)


@dataclass(frozen=True, eq=False)
class ExpertNeurons:
    """One chosen expert at the position: its router weight (expert gates included), its neurons' activations
    (d_ff,), the size of each neuron's weighted write |weight · activation| · ‖down column‖ (d_ff,), and the
    expert's weighted write (d,) (its down bias included)."""

    expert: int
    weight: float
    activations: np.ndarray
    write_norms: np.ndarray
    output: np.ndarray
    top: tuple[int, ...]  # neurons by write size, largest first
    # direct effects on ExpertsInside.token's logit (None where not computed): each neuron's weighted write read
    # through the linearised norms and the unembedding (d_ff,), the weighted down bias's, and their sum
    effects: np.ndarray | None = None
    bias_effect: float = 0.0
    effect: float = float("nan")


@dataclass(frozen=True, eq=False)
class ExpertsInside:
    """Inside the experts of one MoE layer at one position (engine.hf_backend.experts computes it; torch-free here so
    it crosses the remote engine). Each neuron's direct effect on `token` is computed where the layer's parts read
    linearly to the logit (a decoder whose parts sum to its logit); else token_id is None, effects are None and
    `note` says why."""

    layer: int
    position: int
    experts: tuple[ExpertNeurons, ...]  # in the router's order (largest weight first where it sorts)
    block_output: np.ndarray  # (d,) the experts module's own output at the position (the weighted sum)
    error: float  # |Σ expert outputs − block output|, max over entries
    note: str
    token_id: int | None = None
    token: str = ""
    mlp_effect: float = float("nan")  # the whole MLP block's part of the logit (experts + shared expert + biases)

"""ProteinRPN (Mitra et al. 2024, DESIGN §4) on torch_geometric, and its GMT-only baseline.

    model = ProteinRPN(num_terms=9)
    out = model(batch)            # batch: torch_geometric Batch of residue graphs (actsparse.data.protein_rpn)
    out.logits, out.embedding     # [graphs, terms] GO-term logits; [graphs, proj_dim] contrastive embedding
    out.node_scores, out.kept     # per residue: functional score in [0, 1]; kept by the node-drop pooling

The pipeline, as in the paper and its reference code (github.com/Shania99/ProteinRPN):

1. Encoder: residue features -> ``hidden`` through a linear layer and ``encoder_layers`` residual
   GCN layers on the contact graph (edge weight ``exp(-d² / 2·8²)`` from the Cα distance d).
2. Node functional scoring: an MLP gives each residue a score ``s = sigmoid(·)``; residues with
   ``s >= 0.5`` are the anchors (proposed functional residues).
3. k-hop anchor regions: the scores diffuse ``k_hops`` times over the contacts,
   ``r <- α·mean_neighbours(r) + (1 - α)·r`` (the reference code's differentiable k-hop subgraph),
   so a region grows around each anchor.
4. Hierarchy-aware node-drop pooling: each residue's keep score is
   ``sigmoid(g(h) + logit(r) + w_ss·[residue in helix or strand] + w_prox·exp(-|x - c|² / 2σ²))``,
   c the region-weighted Cα centroid of its chain; ``w_ss`` and ``w_prox`` are learned, starting
   positive, so residues in secondary structure and close to the region are favoured. The top
   ``pool_ratio`` of each chain is kept (``torch_geometric`` top-k selection), features scaled by
   their keep score (the gradient path, as in SAGPool), contacts among kept residues kept: a learned
   sparsification of the graph.
5. Functional attention on the pooled graph: GAT-style attention whose logits get ``β·s_j`` for
   the sending residue j (the reference scales attention by the functional score), residual update.
6. Readout: ``torch_geometric.nn.aggr.GraphMultisetTransformer``; multi-label head and a
   projection head for the contrastive losses (the task adds BCE + SupCon + InfoNCE).

Every nonlinearity is an ``nn.ReLU`` module, so :func:`actsparse.plugins.find_sites` finds them
and actsparse's monitors (sparsity, dead neurons) and swaps work on the model.
``GMTBaseline`` is the same encoder, readout and heads without steps 2-5. Each part can be
switched off for ablations and controls: ``region_proposal=False`` (no score GNN: node drop ranks by
``g(h)`` and the structure priors), ``k_hops=0`` (the region is the score itself), ``node_drop=False``
(every residue goes on), ``attention=False``; with the score GNN but no k-hop, node drop or attention,
the scores only weight the mean beside the GMT (the control of issue 25). ``head_hidden`` sets the
GO head's width, so models with fewer parts can be matched in parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import GCNConv, MessagePassing
from torch_geometric.nn.aggr import GraphMultisetTransformer
from torch_geometric.nn.pool.select.topk import topk
from torch_geometric.utils import (
    add_self_loops,
    k_hop_subgraph,
    scatter,
    softmax,
    subgraph,
)

from actsparse.data.protein_rpn.graph import NODE_FEATURES

__all__ = ["FunctionalAttention", "GMTBaseline", "ProteinRPN", "ProteinRPNOutput", "anchor_regions"]

_EDGE_SIGMA = 8.0  # Å: contact weight exp(-d² / 2σ²); ~0.46 at 10 Å, the default radius


@dataclass
class ProteinRPNOutput:
    logits: torch.Tensor                 # [graphs, terms]
    embedding: torch.Tensor              # [graphs, proj_dim]
    graph_repr: torch.Tensor             # [graphs, hidden], the readout
    node_logits: torch.Tensor | None     # [nodes] functional-score logits (None for the baseline)
    node_scores: torch.Tensor | None     # [nodes] sigmoid of node_logits
    region: torch.Tensor | None          # [nodes] soft k-hop region membership
    keep_scores: torch.Tensor | None     # [nodes] node-drop keep scores
    kept: torch.Tensor | None            # [nodes] bool: survived node-drop pooling


class FunctionalAttention(MessagePassing):
    """GAT-style attention on the pooled graph whose logits are raised by ``beta * s_j`` (the
    sender's functional score), with self-loops; returns the aggregated messages (no activation)."""

    def __init__(self, channels: int, slope: float = 0.2) -> None:
        super().__init__(aggr="add", node_dim=0)
        self.lin = nn.Linear(channels, channels, bias=False)
        self.att_src = nn.Parameter(torch.empty(channels))
        self.att_dst = nn.Parameter(torch.empty(channels))
        self.beta = nn.Parameter(torch.tensor(1.0))
        self.slope = slope
        nn.init.normal_(self.att_src, std=channels ** -0.5)
        nn.init.normal_(self.att_dst, std=channels ** -0.5)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        edge_index, _ = add_self_loops(edge_index, num_nodes=x.shape[0])
        h = self.lin(x)
        src, dst = edge_index
        logits = nn.functional.leaky_relu((h * self.att_src).sum(-1)[src] + (h * self.att_dst).sum(-1)[dst], self.slope)
        logits = logits + self.beta * scores[src]
        alpha = softmax(logits, dst, num_nodes=x.shape[0])
        return self.propagate(edge_index, h=h, alpha=alpha)

    def message(self, h_j: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return h_j * alpha.unsqueeze(-1)


def anchor_regions(node_scores: torch.Tensor, edge_index: torch.Tensor, k_hops: int, threshold: float = 0.5
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard view of the proposal: ``(anchors, region)`` bool masks; anchors score >= ``threshold``,
    the region is every residue within ``k_hops`` contacts of an anchor."""
    anchors = node_scores >= threshold
    region = torch.zeros_like(anchors)
    if bool(anchors.any()):
        subset, _, _, _ = k_hop_subgraph(torch.nonzero(anchors).flatten(), k_hops, edge_index,
                                         num_nodes=node_scores.shape[0])
        region[subset] = True
    return anchors, region


class ProteinRPN(nn.Module):
    """ProteinRPN (see the module docstring). ``region_proposal=False`` gives the GMT-only baseline.

    Example:
        >>> from actsparse.data.protein_rpn.synthetic import synthetic_dataset
        >>> from torch_geometric.data import Batch
        >>> graphs, terms = synthetic_dataset(num_proteins=3, num_motifs=2)
        >>> _ = torch.manual_seed(0)
        >>> out = ProteinRPN(num_terms=len(terms), hidden=16)(Batch.from_data_list(graphs))
        >>> out.logits.shape, int(out.kept.sum()) == sum(-(-3 * g.num_nodes // 10) for g in graphs)  # 30% kept
        (torch.Size([3, 3]), True)
    """

    def __init__(self, num_terms: int, in_features: int = NODE_FEATURES, hidden: int = 64, encoder_layers: int = 2,
                 k_hops: int = 2, hop_alpha: float = 0.5, pool_ratio: float = 0.3, ss_prior: float = 1.0,
                 proximity_prior: float = 1.0, proximity_scale: float = 8.0, gmt_k: int = 4, gmt_heads: int = 4,
                 gmt_layer_norm: bool = False, weighted_mean_skip: bool = True,
                 proj_dim: int = 32, dropout: float = 0.1, region_proposal: bool = True, node_drop: bool = True,
                 attention: bool = True, head_hidden: int | None = None) -> None:
        super().__init__()
        if num_terms < 1:
            raise ValueError(f"num_terms must be >= 1, got {num_terms}.")
        if not 0.0 < pool_ratio <= 1.0:
            raise ValueError(f"pool_ratio must be in (0, 1], got {pool_ratio}.")
        if hidden % gmt_heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by gmt_heads ({gmt_heads}).")
        if k_hops < 0:
            raise ValueError(f"k_hops must be >= 0 (0: no k-hop regions), got {k_hops}.")
        self.num_terms, self.k_hops, self.hop_alpha = num_terms, k_hops, hop_alpha
        self.pool_ratio, self.proximity_scale = pool_ratio, proximity_scale
        self.region_proposal, self.node_drop, self.use_attention = region_proposal, node_drop, attention
        self.weighted_mean_skip = weighted_mean_skip
        head_hidden = hidden if head_hidden is None else head_hidden
        self.embed = nn.Linear(in_features, hidden)
        self.embed_act = nn.ReLU()
        self.convs = nn.ModuleList(GCNConv(hidden, hidden) for _ in range(encoder_layers))
        self.conv_acts = nn.ModuleList(nn.ReLU() for _ in range(encoder_layers))
        if region_proposal:
            # the proposal has its own GNN (as the reference's GraphRPN beside HEAL's encoder): trained
            # to find functional residues, its features forget residue identity, which the readout needs
            self.score_embed = nn.Linear(in_features, hidden)
            self.score_embed_act = nn.ReLU()
            self.score_convs = nn.ModuleList(GCNConv(hidden, hidden) for _ in range(encoder_layers))
            self.score_conv_acts = nn.ModuleList(nn.ReLU() for _ in range(encoder_layers))
            self.score_hidden = nn.Linear(hidden, hidden)
            self.score_act = nn.ReLU()
            self.score_out = nn.Linear(hidden, 1)
        if node_drop:
            self.keep = nn.Linear(hidden, 1)
            self.ss_weight = nn.Parameter(torch.tensor(float(ss_prior)))
            self.proximity_weight = nn.Parameter(torch.tensor(float(proximity_prior)))
        if attention:
            self.attention = FunctionalAttention(hidden)
            self.attention_act = nn.ReLU()
        self.readout = GraphMultisetTransformer(hidden, k=gmt_k, heads=gmt_heads, layer_norm=gmt_layer_norm)
        self.head_hidden = nn.Linear(hidden, head_hidden)
        self.head_act = nn.ReLU()
        self.head_drop = nn.Dropout(dropout)
        self.head_out = nn.Linear(head_hidden, num_terms)
        self.proj_hidden = nn.Linear(hidden, hidden)
        self.proj_act = nn.ReLU()
        self.proj_out = nn.Linear(hidden, proj_dim)

    @staticmethod
    def _batch(data: Data) -> tuple[torch.Tensor, int]:
        batch = getattr(data, "batch", None)
        if batch is None:
            return torch.zeros(data.num_nodes, dtype=torch.long, device=data.x.device), 1
        return batch, int(data.num_graphs)

    @staticmethod
    def _gnn(data: Data, embed: nn.Module, embed_act: nn.Module, convs: nn.ModuleList, acts: nn.ModuleList
             ) -> torch.Tensor:
        edge_weight = torch.exp(-data.edge_attr.reshape(-1) ** 2 / (2 * _EDGE_SIGMA ** 2))
        h = embed_act(embed(data.x))
        for conv, act in zip(convs, acts):
            h = h + act(conv(h, data.edge_index, edge_weight))
        return h

    def encode(self, data: Data) -> torch.Tensor:
        """Residue representations ``[nodes, hidden]`` of the main encoder."""
        return self._gnn(data, self.embed, self.embed_act, self.convs, self.conv_acts)

    def forward(self, data: Data) -> ProteinRPNOutput:
        batch, num_graphs = self._batch(data)
        h = self.encode(data)
        node_logits = node_scores = region = keep_scores = kept = None
        x_out, batch_out, edge_index = h, batch, data.edge_index
        scores = torch.ones(h.shape[0], device=h.device)  # uniform weights without a proposal
        if self.region_proposal:
            hs = self._gnn(data, self.score_embed, self.score_embed_act, self.score_convs, self.score_conv_acts)
            node_logits = self.score_out(self.score_act(self.score_hidden(hs))).squeeze(-1)
            node_scores = scores = torch.sigmoid(node_logits)
            region = self.grow_regions(node_scores, data.edge_index)
        if self.node_drop:
            keep_scores, perm = self.keep_scores(data, h, batch, num_graphs, node_logits, region)
            kept = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
            kept[perm] = True
            # straight-through gate: the kept residues pass unscaled, while the task's gradient still
            # reaches the keep scores (d pooled / d keep = h). Scaling by the score itself, as SAGPool
            # does, shrank every representation here: most scores fall towards 0 early in training.
            gate = keep_scores[perm]
            x_out = h[perm] * (1.0 + gate - gate.detach()).unsqueeze(-1)
            edge_index, _ = subgraph(perm, data.edge_index, relabel_nodes=True, num_nodes=h.shape[0])
            batch_out, scores = batch[perm], scores[perm]
        if self.use_attention:
            attended = self.attention(x_out, edge_index, scores)
            # enrich the predicted functional residues: the update is gated by the receiver's score
            x_out = x_out + scores.unsqueeze(-1) * self.attention_act(attended)
        weights = scores
        graph_repr = self.readout(x_out, index=batch_out, dim_size=num_graphs)
        if self.weighted_mean_skip:
            # GMT's attention starts near uniform, so a few functional residues among many are
            # diluted; a weighted mean beside it (functional scores for ProteinRPN, uniform for
            # the baseline) gives the head that signal from the first step
            total = scatter(weights, batch_out, dim=0, dim_size=num_graphs, reduce="sum").clamp_min(1e-6)
            graph_repr = graph_repr + scatter(weights.unsqueeze(-1) * x_out, batch_out, dim=0, dim_size=num_graphs,
                                              reduce="sum") / total.unsqueeze(-1)
        logits = self.head_out(self.head_drop(self.head_act(self.head_hidden(graph_repr))))
        embedding = self.proj_out(self.proj_act(self.proj_hidden(graph_repr)))
        return ProteinRPNOutput(logits, embedding, graph_repr, node_logits, node_scores, region, keep_scores, kept)

    def grow_regions(self, node_scores: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Soft k-hop regions: ``r <- α·mean_neighbours(r) + (1 - α)·r``, ``k_hops`` times (0: r = s)."""
        src, dst = edge_index
        region = node_scores
        for _ in range(self.k_hops):
            spread = scatter(region[src], dst, dim=0, dim_size=node_scores.shape[0], reduce="mean")
            region = self.hop_alpha * spread + (1 - self.hop_alpha) * region
        return region

    def keep_scores(self, data: Data, h: torch.Tensor, batch: torch.Tensor, num_graphs: int,
                    node_logits: torch.Tensor | None, region: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hierarchy-aware node drop: keep scores and the indices of the kept top ``pool_ratio`` per
        chain. Without a proposal the keep logit is ``g(h)`` plus the structure priors, with the
        chain's plain Cα centroid."""
        structured = (data.ss != 0).float()
        mass_of = torch.ones(h.shape[0], device=h.device) if region is None else region
        mass = scatter(mass_of, batch, dim=0, dim_size=num_graphs, reduce="sum").clamp_min(1e-6)
        centroid = scatter(mass_of.unsqueeze(-1) * data.pos, batch, dim=0, dim_size=num_graphs, reduce="sum")
        centroid = centroid / mass.unsqueeze(-1)
        closeness = torch.exp(-((data.pos - centroid[batch]) ** 2).sum(-1) / (2 * self.proximity_scale ** 2))
        keep_logits = self.keep(h).squeeze(-1) + self.ss_weight * structured + self.proximity_weight * closeness
        if node_logits is not None:
            keep_logits = keep_logits + node_logits + torch.logit(region.clamp(1e-4, 1 - 1e-4))
        keep_scores = torch.sigmoid(keep_logits)
        return keep_scores, topk(keep_scores, self.pool_ratio, batch)

    @torch.no_grad()
    def propose(self, data: Data, threshold: float = 0.5) -> dict[str, torch.Tensor]:
        """The proposal of one graph or batch: per residue ``score``, ``anchor`` (score >=
        threshold), ``region`` (within k_hops of an anchor), ``kept`` (survived node drop)."""
        if not self.region_proposal:
            raise RuntimeError("this model has no region proposal (GMT-only baseline).")
        was_training = self.training
        self.eval()
        out = self(data)
        self.train(was_training)
        anchors, region = anchor_regions(out.node_scores, data.edge_index, self.k_hops, threshold)
        kept = out.kept if out.kept is not None else torch.ones_like(anchors)
        return {"score": out.node_scores, "anchor": anchors, "region": region, "kept": kept}


class GMTBaseline(ProteinRPN):
    """The GMT-only baseline: ProteinRPN's encoder, Graph Multiset Transformer readout and heads,
    without region proposal, node-drop pooling or functional attention."""

    def __init__(self, num_terms: int, in_features: int = NODE_FEATURES, hidden: int = 64, encoder_layers: int = 2,
                 gmt_k: int = 4, gmt_heads: int = 4, gmt_layer_norm: bool = False, weighted_mean_skip: bool = True,
                 proj_dim: int = 32, dropout: float = 0.1, head_hidden: int | None = None) -> None:
        super().__init__(num_terms, in_features, hidden, encoder_layers, gmt_k=gmt_k, gmt_heads=gmt_heads,
                         gmt_layer_norm=gmt_layer_norm, weighted_mean_skip=weighted_mean_skip, proj_dim=proj_dim,
                         dropout=dropout, region_proposal=False, node_drop=False, attention=False,
                         head_hidden=head_hidden)

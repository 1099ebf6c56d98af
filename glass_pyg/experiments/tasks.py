r"""The two experiment tasks: an S^2 point-set pair and an SBM graph pair, behind one interface."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import losses, metrics
from ..datasets import SBMPairDataset, SpherePairDataset
from ..geometry.rotation import rotation_error_deg
from ..graph_matching import match_graphs
from ..nn import GLASS, DiffusionFeatures, GLASSOutput, GraphProjection, LearnedRotation, SphereProjection
from ..sphere_alignment import align_sphere
from .config import ExperimentConfig

DTYPE = torch.float64


@dataclass
class Task:
    """One pair of a run and its head (the projection is shared by the run's pairs): ``forward(gamma)``."""

    head: GLASS
    src: Tensor
    dst: Tensor
    y: Tensor
    rotation: LearnedRotation | None = None
    true_rotation: Tensor | None = None
    stage_seconds: float = 0.0  #: wall time of the stages before training (the S^2 rotation stage)
    edges: tuple[Tensor, Tensor] | None = None  #: the two graphs' edge indices (graph pairs)
    consensus: str = "never"  #: graph pairs: when to run the GW consensus stage
    seed: int = 0  #: of the consensus stage's perturbed starts
    _consensus: Any = None  #: its result (it does not depend on trained parameters: run once)
    answer: Tensor | None = None  #: the matching of the last full evaluation (no labels needed to compare)

    def target(self) -> Tensor:
        """The target side as the model sees it (rotated back on S^2 pairs with a rotation stage)."""
        return self.dst if self.rotation is None else self.rotation(self.dst)

    def forward(self, gamma: float) -> GLASSOutput:
        """The head on this pair at regularisation ``gamma``."""
        return self.head(self.src, self.target(), gamma=gamma)

    def cost(self):
        """The lifted cost of the pair (detached target), for decoding."""
        factory = losses.squared_euclidean if self.head.cost == "sq_euclidean" else losses.squared_geodesic
        return factory(self.src, self.target().detach())

    def evaluate(self, out: GLASSOutput, full: bool) -> dict[str, Any]:
        """Metrics of one forward pass; ``accuracy`` (full rows) is the run's answer, the lifted-cost decoding."""
        # the raw plan's decoders are diagnostics: their numbers say how they fared, so their
        # decoding warnings (beyond the dense limit, most rows) would only repeat that each row
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", metrics.DecodingWarning)
            row: dict[str, Any] = {"perm_acc": metrics.perm_accuracy(out.plan, self.y, "argmax")}
            if full:
                row["perm_acc_hungarian"] = metrics.perm_accuracy(out.plan, self.y, "hungarian")
        if full:
            row["hits_at_5"] = metrics.hits_at_k(out.plan, self.y, 5)
            if self.edges is not None:
                row.update(self._graph_answer(out))
            else:
                self.answer = metrics.to_permutation(out.plan, self.cost())
                row["accuracy"] = metrics.matching_accuracy(self.answer, self.y)
                row["perm_acc_refined"] = row["accuracy"]
        if self.rotation is not None and self.true_rotation is not None:
            est = self.rotation.matrix().detach().to(self.true_rotation.dtype)
            # the model rotates the target back: est @ R_true should be the identity
            row["rotation_err_deg"] = float(rotation_error_deg(est.t(), self.true_rotation))
        return row

    def _graph_answer(self, out: GLASSOutput) -> dict[str, Any]:
        """Graphs: the pipeline of :func:`~glass_pyg.graph_matching.match_graphs` (decoding, refinement,
        the GW consensus stage where the refinement does not take hold); the consensus result does not
        depend on trained parameters, so it is computed once and reused."""
        res = match_graphs(out.plan, self.cost(), self.edges[0], self.edges[1], consensus=self.consensus,
                           seed=self.seed, reuse=self._consensus)
        if res.consensus is not None and self._consensus is None:
            self._consensus = res.consensus
            self.stage_seconds += res.consensus.seconds
        self.answer = res.perm
        return {"accuracy": metrics.matching_accuracy(res.perm, self.y), "edges_preserved": res.preserved,
                "perm_acc_refined": metrics.matching_accuracy(res.lifted, self.y)}


def _head(cfg: ExperimentConfig, projection: torch.nn.Module, cost: str) -> GLASS:
    return GLASS(projection, cost, options=cfg.ot.solver_options(), solver="banded" if cfg.ot.use_banded else "dense",
                 warm_start=cfg.train.warm_start)


def build_tasks(cfg: ExperimentConfig) -> tuple[torch.nn.ModuleDict, list[Task]]:
    """The ``data.num_pairs`` pairs of a config, each a :class:`Task`, and the model they train.

    The projection is shared by every pair; on rotated S^2 pairs each pair's rotation stage runs
    here. The model holds every trainable module (``projection``; ``rotation`` for one pair,
    ``rotations`` for several), for the optimiser and the checkpoints.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    d, m = cfg.data, cfg.model
    if cfg.kind == "manifold":
        pairs = SpherePairDataset(n=d.n, noise_deg=d.noise_deg, rotation=d.rotation,
                                  max_rotation_deg=d.max_rotation_deg, distribution=d.distribution,
                                  num_clusters=d.num_clusters, kappa=d.kappa, num_pairs=d.num_pairs, seed=cfg.seed)
        space = None
        if m.geometry == "geomstats":
            from ..geometry.geomstats_backend import hypersphere
            space = hypersphere()
        proj = SphereProjection(m.K, cfg.train.slices, m.chart_radius_deg, m.gate_mode, m.gate_c_per_sqrtk_deg,
                                m.init_u_scale, space=space, geometry=m.geometry, generator=gen).to(DTYPE)
        learn = d.rotation if m.learn_rotation is None else m.learn_rotation
        tasks = []
        for k in range(d.num_pairs):
            pair = pairs[k]
            src, dst = pair.pos_s.to(DTYPE), pair.pos_t.to(DTYPE)
            rot, seconds = None, 0.0
            if learn:
                # the rotation stage: the lifted loss alone pulls a rotation in from about one point spacing
                rot = LearnedRotation().to(DTYPE)
                found = align_sphere(src, dst, match=False, seed=cfg.seed)
                rot.set_matrix(found.rotation.t())  # the model rotates the target back
                rot.omega.requires_grad_(m.train_rotation)
                seconds = found.seconds
            tasks.append(Task(_head(cfg, proj, "sq_geodesic"), src, dst, pair.y, rot, pair.rotation[0].to(DTYPE),
                              stage_seconds=seconds))
        rotations = [t.rotation for t in tasks if t.rotation is not None]
        extra = {} if not rotations else (
            {"rotation": rotations[0]} if d.num_pairs == 1 else {"rotations": torch.nn.ModuleList(rotations)})
        return torch.nn.ModuleDict({"projection": proj} | extra), tasks
    pairs = SBMPairDataset(n=d.n, blocks=d.blocks, p_in=d.p_in, p_out=d.p_out, rewire_prob=d.rewire_prob,
                           planted_perm=d.planted_perm, num_pairs=d.num_pairs, seed=cfg.seed)
    feat = DiffusionFeatures(m.feat_dim, m.tau, m.cheby_degree)
    proj = GraphProjection(m.feat_dim, cfg.train.slices).to(DTYPE)
    proj.reset_parameters(gen)
    tasks = []
    for k in range(d.num_pairs):
        pair = pairs[k]
        psi_s = feat(None, pair.edge_index_s, num_nodes=d.n, dtype=DTYPE)  # fixed: computed once per graph
        psi_t = feat(None, pair.edge_index_t, num_nodes=d.n, dtype=DTYPE)
        tasks.append(Task(_head(cfg, proj, "sq_euclidean"), psi_s, psi_t, pair.y,
                          edges=(pair.edge_index_s, pair.edge_index_t), consensus=m.consensus, seed=cfg.seed))
    return torch.nn.ModuleDict({"projection": proj}), tasks

"""Run under torchrun by test_distributed.py: the synchronised gradient of one step, saved by the first process."""
import gc
import os
import sys

import torch

from glass_pyg.experiments.config import load_config
from glass_pyg.experiments.distributed import current_world
from glass_pyg.experiments.tasks import build_tasks
from glass_pyg.experiments.train import _PairsLoss


def main(path: str) -> None:
    cfg = load_config("graph_sbm_small", ["data.n=50", "data.num_pairs=3"])
    world = current_world()
    model, tasks = build_tasks(cfg)
    loss_of = world.wrap(_PairsLoss(model, tasks, world.owned(len(tasks)), world.size))
    loss_of(0.1).backward()
    if world.leader:
        torch.save({k: p.grad for k, p in model.named_parameters()}, path)


main(sys.argv[1])
# the DistributedDataParallel wrapper (its reducer holds gloo work with tensors) is gone before the group is;
# one left to the interpreter's finalisation can abort the process at exit
gc.collect()
torch.distributed.barrier()  # the leader has saved before any process leaves the group
torch.distributed.destroy_process_group()
# the result is on disk and the group is gone: leave without the interpreter's finalisation, where gloo's
# worker threads have been seen to abort a process that had finished its work
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)

import os

import pytest
import torch
from torch_geometric.loader import DataLoader

from glass_pyg.datasets import SBMPairDataset
from glass_pyg.datasets.sampling import distinct_pairs


def edge_set(ei):
    return {(int(u), int(v)) for u, v in ei.t().tolist() if u < v}


@pytest.mark.parametrize("rw", [0.0, 0.1, 0.3])
def test_target_is_rewired_relabelled_source(rw):
    d = SBMPairDataset(n=150, rewire_prob=rw, num_pairs=1, seed=7)[0]
    perm = d.y[1]
    src = edge_set(d.edge_index_s)
    mapped = {tuple(sorted((int(perm[u]), int(perm[v])))) for u, v in src}
    tgt = edge_set(d.edge_index_t)
    count = round(rw * len(src))
    assert int(d.num_rewired) == count
    assert len(mapped - tgt) == count and len(tgt - mapped) == count and len(tgt) == len(src)
    for ei in (d.edge_index_s, d.edge_index_t):  # undirected, no self-loops
        assert (ei[0] != ei[1]).all()
        assert edge_set(ei) == edge_set(ei.flip(0))
    assert torch.equal(d.block_t[perm], d.block_s)
    assert sorted(perm.tolist()) == list(range(150))


def test_block_densities():
    d = SBMPairDataset(n=300, blocks=3, p_in=0.2, p_out=0.05, seed=1)[0]
    b = d.block_s
    u, v = d.edge_index_s
    same = (b[u] == b[v]).sum().item() / 2
    cross = (b[u] != b[v]).sum().item() / 2
    n_same, n_cross = 3 * 100 * 99 / 2, 3 * 100 * 100
    for k, N, p in ((same, n_same, 0.2), (cross, n_cross, 0.05)):
        assert abs(k - N * p) < 5 * (N * p * (1 - p)) ** 0.5


def test_deterministic_and_independent_of_global_rng():
    torch.manual_seed(0)
    a = SBMPairDataset(n=60, rewire_prob=0.1, num_pairs=3, seed=5)
    state = torch.get_rng_state()
    torch.manual_seed(123)
    b = SBMPairDataset(n=60, rewire_prob=0.1, num_pairs=2, seed=5)
    torch.manual_seed(0)
    SBMPairDataset(n=60, num_pairs=1, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # generation does not touch the global RNG
    for k in range(2):
        assert torch.equal(a[k].edge_index_t, b[k].edge_index_t) and torch.equal(a[k].y, b[k].y)
    assert not torch.equal(a[0].y, a[1].y)
    c = SBMPairDataset(n=60, rewire_prob=0.1, num_pairs=1, seed=6)
    assert not torch.equal(a[0].y, c[0].y)


def test_identity_when_not_planted():
    d = SBMPairDataset(n=40, planted_perm=False, seed=0)[0]
    assert torch.equal(d.y[1], torch.arange(40))
    assert torch.equal(d.edge_index_s, d.edge_index_t)


@pytest.mark.parametrize("kwargs, name", [
    (dict(p_in=1.5), "p_in"), (dict(p_out=-0.1), "p_out"), (dict(rewire_prob=2.0), "rewire_prob"),
    (dict(n=5, blocks=6), "blocks"), (dict(n=0), "n"), (dict(num_pairs=0), "num_pairs"),
    (dict(n=10.5), "n"), (dict(seed="a"), "seed")])
def test_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SBMPairDataset(**kwargs)


def test_processed_file_and_safe_load(tmp_path):
    ds = SBMPairDataset(str(tmp_path), n=50, rewire_prob=0.05, num_pairs=2, seed=4)
    path = ds.processed_paths[0]
    assert os.path.basename(path) == "sbm_n50_b3_pin0.15_pout0.02_rw0.05_perm1_pairs2_seed4.pt"
    assert not [f for f in os.listdir(tmp_path / "processed") if f.startswith(".tmp")]
    out = torch.load(path, weights_only=True)
    assert isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict)
    again = SBMPairDataset(str(tmp_path), n=50, rewire_prob=0.05, num_pairs=2, seed=4)
    assert torch.equal(again[1].edge_index_t, ds[1].edge_index_t)
    mem = SBMPairDataset(None, n=50, rewire_prob=0.05, num_pairs=2, seed=4)
    assert torch.equal(mem[1].edge_index_t, ds[1].edge_index_t)


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_dataset_folder_cannot_run_code(tmp_path):
    ds = SBMPairDataset(str(tmp_path), n=40, rewire_prob=0.05, seed=1)
    marker = tmp_path / "ran"
    # a planted record of the pre_transform is read as data only: a warning, no code
    torch.save(_Payload(str(marker)), tmp_path / "processed" / "pre_transform.pt")
    with pytest.warns(UserWarning, match="pre_transform"):
        again = SBMPairDataset(str(tmp_path), n=40, rewire_prob=0.05, seed=1)
    assert not marker.exists() and torch.equal(again[0].edge_index_t, ds[0].edge_index_t)
    # a planted data file is refused, naming the file and the way out
    torch.save(_Payload(str(marker)), ds.processed_paths[0])
    with pytest.raises(RuntimeError, match="force_reload=True"):
        SBMPairDataset(str(tmp_path), n=40, rewire_prob=0.05, seed=1)
    assert not marker.exists()
    rebuilt = SBMPairDataset(str(tmp_path), n=40, rewire_prob=0.05, seed=1, force_reload=True)
    assert torch.equal(rebuilt[0].edge_index_t, ds[0].edge_index_t)


def test_truncated_processed_file_says_how_to_rebuild(tmp_path):
    ds = SBMPairDataset(str(tmp_path), n=40, seed=2)
    path = ds.processed_paths[0]
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 3)
    with pytest.raises(RuntimeError, match=r"cannot be read.*force_reload=True"):
        SBMPairDataset(str(tmp_path), n=40, seed=2)


def test_processed_file_key_is_exact(tmp_path):
    a = SBMPairDataset(str(tmp_path), n=40, rewire_prob=0.2, seed=0)
    b = SBMPairDataset(str(tmp_path), n=40, rewire_prob=0.2000004, seed=0)
    assert a.processed_paths[0] != b.processed_paths[0]
    mem = SBMPairDataset(None, n=40, rewire_prob=0.2000004, seed=0)
    assert torch.equal(b[0].edge_index_t, mem[0].edge_index_t)


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        ds = SBMPairDataset(str(tmp_path), n=30, seed=0)
    finally:
        os.umask(old)
    assert os.stat(ds.processed_paths[0]).st_mode & 0o777 == 0o644


def test_dataloader_batches_pairs():
    ds = SBMPairDataset(n=30, rewire_prob=0.1, num_pairs=3, seed=2)
    batch = next(iter(DataLoader(ds, batch_size=3, follow_batch=["x_s", "x_t"])))
    assert batch.x_s_batch.tolist() == [0] * 30 + [1] * 30 + [2] * 30
    for k in range(3):
        d = ds[k]
        sel = batch.y[0] // 30 == k
        assert torch.equal(batch.y[:, sel] - 30 * k, d.y)
        mask = batch.x_s_batch[batch.edge_index_s[0]] == k
        assert torch.equal(batch.edge_index_s[:, mask] - 30 * k, d.edge_index_s)
        mask = batch.x_t_batch[batch.edge_index_t[0]] == k
        assert torch.equal(batch.edge_index_t[:, mask] - 30 * k, d.edge_index_t)


def test_distinct_pairs_uniform():
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(10)
    forbidden = torch.tensor([0 * 5 + 1])  # pair (0, 1) excluded
    for _ in range(3000):
        p = distinct_pairs(3, 5, None, gen, forbidden=forbidden)
        assert (p[:, 0] < p[:, 1]).all() and len({tuple(r) for r in p.tolist()}) == 3
        assert (0, 1) not in {tuple(r) for r in p.tolist()}
        for i, j in p.tolist():  # the 10 unordered pairs of range(5), keyed i * 5 + j
            counts[[1, 2, 3, 4, 7, 8, 9, 13, 14, 19].index(i * 5 + j)] += 1
    assert counts[0] == 0
    expected = 3000 * 3 / 9
    assert ((counts[1:] - expected).abs() < 5 * expected ** 0.5).all()
    with pytest.raises(ValueError, match="distinct pairs"):
        distinct_pairs(10, 5, None, gen, forbidden=forbidden)


def test_in_memory_datasets_leave_no_folder(tmp_path, monkeypatch):
    from glass_pyg.datasets import SpherePairDataset
    monkeypatch.chdir(tmp_path)
    SBMPairDataset(None, n=30, seed=0)
    SpherePairDataset(n=30, seed=0)
    assert os.listdir(tmp_path) == []
    SBMPairDataset(str(tmp_path / "root"), n=30, seed=0)
    assert os.listdir(tmp_path / "root") == ["processed"]  # nothing to download: no raw folder

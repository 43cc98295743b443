import pytest
import torch

from actsparse.data import ByteTokenizer, CorpusError, TextDataModule, build_stdlib_docs, split_windows, stdlib_docs
from actsparse.data.loader import EvalShardSampler, ResumableDataLoader


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "naïve café — λ = 0.05\n"
    ids = tok.encode(text)
    assert ids.dtype == torch.uint8 and ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.encode("").numel() == 0


def test_stdlib_corpus_is_real_deterministic_and_cached(tmp_path):
    first = stdlib_docs(tmp_path)
    cached = list(tmp_path.glob("stdlib_docs-*.txt"))
    assert len(cached) == 1
    assert len(first) > 500_000  # hundreds of kB of prose
    assert "Return" in first and "def " not in first[:2000]  # docstrings, not code
    assert stdlib_docs(tmp_path) == first  # read back from the cache
    cached[0].unlink()
    assert build_stdlib_docs() == first  # rebuilt from scratch: identical


def test_split_is_deterministic_disjoint_and_spread():
    train, val = split_windows(n_tokens=100_001, seq_len=100, val_fraction=0.1)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert len(train) + len(val) == 1000
    assert 0.08 < len(val) / 1000 < 0.12
    assert val.min() < 200 * 100 and val.max() > 800 * 100  # not only the tail of the corpus
    again_train, again_val = split_windows(100_001, 100, 0.1)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)


def test_windows_are_shifted_targets(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 500)
    dm = TextDataModule(text_file=str(path), seq_len=8, batch_size=2)
    dm.setup("fit")
    x, y = dm.train_set[3]
    assert torch.equal(x[1:], y[:-1])
    assert ByteTokenizer().decode(x) + ByteTokenizer().decode(y[-1:]) in "abcdefghij" * 500


def test_missing_text_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "corpus.txt"
    with pytest.raises(CorpusError, match="corpus.txt") as err:
        TextDataModule(text_file=str(missing))
    assert str(missing) in str(err.value)


def test_empty_corpus_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("   \n")
    dm = TextDataModule(text_file=str(path))
    with pytest.raises(CorpusError, match="empty"):
        dm.setup("fit")


def test_too_small_corpus_is_an_error(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("x" * 300)
    with pytest.raises(CorpusError, match="too small"):
        TextDataModule(text_file=str(path), seq_len=64, batch_size=8).setup("fit")


def test_both_sources_is_an_error(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello")
    with pytest.raises(CorpusError, match="not both"):
        TextDataModule(text_file=str(path), hf_dataset="wikitext")


def test_hf_dataset_offline_gives_clear_error(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    dm = TextDataModule(hf_dataset="actsparse-test/does-not-exist")
    with pytest.raises(CorpusError, match="needs the network|Could not load"):
        dm.setup("fit")


def _batches(loader, n=None):
    out = []
    for i, (x, _) in enumerate(loader):
        if n is not None and i == n:
            break
        out.append(x.clone())
    return out


def test_resumable_loader_continues_mid_epoch():
    data = torch.utils.data.TensorDataset(torch.arange(50), torch.arange(50))
    full = ResumableDataLoader(data, batch_size=4, seed=3)
    full.sampler.set_epoch(2)
    reference = _batches(full)
    assert len(reference) == 12  # drop_last

    interrupted = ResumableDataLoader(data, batch_size=4, seed=3)
    interrupted.sampler.set_epoch(2)
    seen = []
    for i, (x, _) in enumerate(interrupted):
        seen.append(x)
        if i == 4:
            break
    state = interrupted.state_dict()
    assert state["batches_yielded"] == 5

    resumed = ResumableDataLoader(data, batch_size=4, seed=3)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    rest = _batches(resumed)
    assert [b.tolist() for b in seen + rest] == [b.tolist() for b in reference]
    # The next epoch starts from its beginning and is a different order.
    resumed.sampler.set_epoch(3)
    assert len(_batches(resumed)) == 12


def test_resumable_loader_rejects_other_seed():
    data = torch.utils.data.TensorDataset(torch.arange(10))
    loader = ResumableDataLoader(data, batch_size=2, seed=1)
    with pytest.raises(ValueError, match="seed"):
        loader.load_state_dict({"batches_yielded": 1, "seed": 2})


def test_eval_shards_cover_every_sample_once():
    data = torch.utils.data.TensorDataset(torch.arange(11))
    shards = []
    for rank in range(3):
        sampler = EvalShardSampler(data, num_replicas=3, rank=rank)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    assert sorted(sum(shards, [])) == list(range(11))

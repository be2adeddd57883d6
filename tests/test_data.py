"""Dataset sources and splits."""
import json

import datasets
import pytest

from finetuning_suite import ConfigError, DatasetError, FineTuner
from finetuning_suite.data.sources import BUILTIN_DATASETS, load_source, split_dataset

ROWS = [{"prompt": f"Q{i}", "completion": f"A{i}"} for i in range(10)]


def test_builtin_datasets_have_train_and_validation():
    for name in BUILTIN_DATASETS:
        data = load_source(name)
        assert set(data) == {"train", "validation"} and len(data["train"]) >= 20 and len(data["validation"]) >= 10
    train = load_source("dialogue")["train"]
    assert train.column_names == ["messages"]


def test_dates_stay_text():
    # datasets' pyarrow JSON reader would turn "1991-02-15" into a timestamp
    row = load_source("iso_dates")["train"][0]
    assert isinstance(row["completion"], str) and len(row["completion"]) == 10


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_files(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    frame = datasets.Dataset.from_list(ROWS)
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".csv":
        frame.to_csv(str(path))
    else:
        frame.to_parquet(str(path))
    train, _ = split_dataset(load_source(str(path)))
    assert train.column_names == ["prompt", "completion"] and len(train) == 10
    assert train[3] == {"prompt": "Q3", "completion": "A3"}


def test_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("line one\nline two\n")
    train, _ = split_dataset(load_source(str(path)))
    assert train["text"] == ["line one", "line two"]


def test_save_to_disk_folders(tmp_path):
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(2))}).save_to_disk(str(tmp_path / "dict"))
    assert len(split_dataset(load_source(str(tmp_path / "single")))[0]) == 10
    train, eval_set = split_dataset(load_source(str(tmp_path / "dict")))
    assert len(train) == 10 and len(eval_set) == 2


def test_in_memory_sources():
    ds = datasets.Dataset.from_list(ROWS)
    assert load_source(ds) is ds
    assert len(load_source(ROWS)) == 10
    train, eval_set = split_dataset(datasets.DatasetDict({"train": ds, "validation": ds.select([0])}))
    assert len(eval_set) == 1


def test_eval_fraction_when_no_validation_split():
    train, eval_set = split_dataset(load_source(ROWS), eval_fraction=0.2)
    assert (len(train), len(eval_set)) == (8, 2)
    train, eval_set = split_dataset(load_source(ROWS))
    assert eval_set is None


def test_unknown_name_is_a_clear_error():
    with pytest.raises(DatasetError) as info:
        load_source("no-such-dataset-xyz")
    assert "built-in" in str(info.value) and "dialogue" in str(info.value)


def test_missing_file_is_caught_in_the_constructor(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match=r"dataset_name=.*missing.jsonl.*no such file"):
        FineTuner(tiny_llama, dataset_name=str(tmp_path / "missing.jsonl"))


def test_unreadable_and_empty_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    with pytest.raises(DatasetError, match="line 2: not valid JSON"):
        load_source(str(bad))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError, match="holds no rows"):
        load_source(str(empty))
    with pytest.raises(DatasetError, match="empty"):
        split_dataset(datasets.Dataset.from_dict({"text": []}))
    with pytest.raises(DatasetError, match="unsupported file type"):
        (tmp_path / "x.xml").write_text("<a/>")
        load_source(str(tmp_path / "x.xml"))


def test_not_a_dataset():
    with pytest.raises(DatasetError, match="is not a dataset"):
        load_source(42)


def test_hub_dataset_from_the_local_cache(tmp_path, monkeypatch):
    """A hub dataset repo already in the HF cache loads offline (refs/main -> snapshot)."""
    repo = tmp_path / "hub" / "datasets--tiny-org--tiny-data"
    snapshot = repo / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "train.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    train, _ = split_dataset(load_source("tiny-org/tiny-data"))
    assert len(train) == 10 and train[0] == {"prompt": "Q0", "completion": "A0"}

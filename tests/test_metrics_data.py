"""Dataset adapters over the standard local layouts, the JSONL manifest, and their errors."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from metrics.data import DatasetError, collate, data_root, load_records
from metrics.media import load_audio, save_sample


def _coco(root):
    (root / "coco" / "annotations").mkdir(parents=True)
    images = [{"id": 7, "file_name": "a.png"}, {"id": 3, "file_name": "b.png"}, {"id": 9, "file_name": "c.png"}]
    annotations = [{"image_id": 7, "caption": "a cat "}, {"image_id": 7, "caption": "a small cat"},
                   {"image_id": 3, "caption": "a dog"}, {"image_id": 9, "caption": "a bird"}]
    (root / "coco" / "annotations" / "captions_val2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations}))
    g = torch.Generator().manual_seed(0)
    for name, size in (("a.png", (30, 40)), ("b.png", (50, 20)), ("c.png", (16, 16))):
        save_sample("image", torch.rand(3, *size, generator=g), root / "coco" / "val2014" / name)


def test_coco_layout(tmp_path):
    _coco(tmp_path)
    records, available = load_records("coco", tmp_path, "val2014", {"image_size": 24}, 2, ["image", "text"])
    assert available == 3 and [r.id for r in records] == ["3", "7"]  # sorted by id, first N
    assert records[1].captions == ["a cat", "a small cat"]
    batch = collate(records, ["text", "image"], {"image_size": 24}, all_captions=False)
    assert batch["text"] == ["a dog", "a cat"] and batch["image"].shape == (2, 3, 24, 24)
    refs = collate(records, ["text"], {}, all_captions=True)
    assert refs["text"] == [["a dog"], ["a cat", "a small cat"]]
    (tmp_path / "coco" / "val2014" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of the 3 selected coco samples lack their files; first: .*a\.png"):
        load_records("coco", tmp_path, "val2014", {}, 5, ["image"])
    with pytest.raises(DatasetError, match=r"COCO captions file not found: .*captions_val2017\.json"):
        load_records("coco", tmp_path, "val2017", {}, 5, ["image"])


def test_audiocaps_layout(tmp_path):
    folder = tmp_path / "audiocaps"
    (folder / "audio" / "test").mkdir(parents=True)
    with open(folder / "test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        writer.writerows([[1, "yB", 0, "rain falls"], [2, "yA", 30, "a dog barks"], [3, "yB", 0, "heavy rain"]])
    for name, seconds in (("yA", 0.5), ("yB", 2.0)):
        save_sample("audio", torch.sin(torch.arange(int(16000 * seconds)) / 10.0) * 0.5, folder / "audio" / "test" /
                    f"{name}.wav")
    records, _ = load_records("audiocaps", tmp_path, "test", {}, 10, ["audio"])
    assert [(r.id, r.captions) for r in records] == [("yA", ["a dog barks"]), ("yB", ["rain falls", "heavy rain"])]
    batch = collate(records, ["audio"], {"audio_seconds": 1.0}, all_captions=False)
    assert batch["audio"].shape == (2, 16000)
    assert torch.all(batch["audio"][0, 8000:] == 0)  # padded with zeros
    assert torch.allclose(batch["audio"][1], load_audio(folder / "audio" / "test" / "yB.wav")[:16000])


def test_msrvtt_layout_keeps_the_split(tmp_path):
    folder = tmp_path / "msrvtt"
    data = {"videos": [{"video_id": "video1", "split": "train"}, {"video_id": "video9", "split": "test"}],
            "sentences": [{"video_id": "video9", "caption": "a man sings"}, {"video_id": "video1", "caption": "x"}]}
    folder.mkdir()
    (folder / "test_videodatainfo.json").write_text(json.dumps(data))
    save_sample("video", torch.rand(6, 3, 20, 24), folder / "videos" / "video9.mp4")
    records, _ = load_records("msrvtt", tmp_path, "test", {}, 10, ["video", "text"])
    assert [r.id for r in records] == ["video9"]
    batch = collate(records, ["video"], {"num_frames": 3, "video_size": 16}, all_captions=False)
    assert batch["video"].shape == (1, 3, 3, 16, 16)


def test_jsonl_manifest_and_its_errors(tmp_path):
    save_sample("image", torch.rand(3, 8, 8), tmp_path / "img" / "a.png")
    (tmp_path / "m.jsonl").write_text('{"id": "b", "text": "hello"}\n\n{"id": "a", "text": ["x", "y"], '
                                      '"image": "img/a.png"}\n')
    records, available = load_records("jsonl", tmp_path, None, {"path": "m.jsonl"}, 10, ["text"])
    assert available == 2 and [(r.id, r.captions) for r in records] == [("a", ["x", "y"]), ("b", ["hello"])]
    with_images, _ = load_records("jsonl", tmp_path, None, {"path": "m.jsonl"}, 10, ["image"])
    assert [r.id for r in with_images] == ["a"]
    with pytest.raises(DatasetError, match="has no record with audio"):
        load_records("jsonl", tmp_path, None, {"path": "m.jsonl"}, 10, ["audio"])
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "txt": "x"}\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:1: .*unknown key\(s\) txt"):
        load_records("jsonl", tmp_path, None, {"path": "bad.jsonl"}, 10, ["text"])
    (tmp_path / "dup.jsonl").write_text('{"id": "a"}\n{"id": "a"}\n')
    with pytest.raises(DatasetError, match="id 'a' appears twice"):
        load_records("jsonl", tmp_path, None, {"path": "dup.jsonl"}, 10, [])


def test_data_root_comes_from_option_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("CODI_DATA_ROOT", raising=False)
    with pytest.raises(DatasetError, match=r"pass --data-root DIR or set \$CODI_DATA_ROOT"):
        data_root(None)
    monkeypatch.setenv("CODI_DATA_ROOT", str(tmp_path))
    assert data_root(None) == tmp_path
    with pytest.raises(DatasetError, match="is not a directory"):
        data_root(tmp_path / "nope")

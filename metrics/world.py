"""The procedural world of :mod:`codi.data.world` as a dataset (kind ``world``), for CoDi-nano.

``python -m metrics.run`` uses it when the embedded ``codi-nano`` generator
runs without a data root or manifest: the held-out split (``test``) is
written once as ordinary files under ``<root>/world/<split>/``
(``world-<split>-<index>.{png,mp4,wav,txt}``, the image being the video's
first frame) and read back through the same loaders as every other dataset.
Everything scored on it is a nano-space number.
"""
from __future__ import annotations

from metrics.data import Record, _Adapter
from metrics.media import save_sample
from metrics.registry import DATASETS

WORLD_OPTIONS = {"image_size": 32, "video_size": 32, "num_frames": 8, "audio_seconds": 1.28}


@DATASETS.register("world")
class ProceduralWorld(_Adapter):
    kind = "world"
    defaults = {**WORLD_OPTIONS, "size": 256}

    def records(self) -> list[Record]:
        from codi.data.world import SPLITS, world_sample

        split = self.split or "test"
        if split not in SPLITS:
            from metrics.data import DatasetError

            raise DatasetError(f"the world dataset has splits {', '.join(SPLITS)}, not {split!r}")
        folder = self.root / "world" / split
        records = []
        for index in range(int(self.options["size"])):
            key = f"world-{split}-{index:05d}"
            files = {"image": folder / f"{key}.png", "video": folder / f"{key}.mp4", "audio": folder / f"{key}.wav"}
            caption = folder / f"{key}.txt"
            if not caption.is_file() or not all(p.is_file() for p in files.values()):
                sample = world_sample(index, split)
                for modality, path in files.items():
                    save_sample(modality, getattr(sample, modality), path)
                save_sample("text", sample.text, caption)  # written last: marks the record complete
            records.append(Record(key, [caption.read_text(encoding="utf-8").strip()], files))
        return records

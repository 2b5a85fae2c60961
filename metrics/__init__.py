"""The evaluation harness: metrics (FID/KID, CLIPScore/CLIPSIM, FAD, captioning, SIM), paper tasks and
``python -m metrics.run``. See ``metrics/README.md``. Nothing here imports the model at import time."""

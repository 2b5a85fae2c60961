"""Feature extractors for the metrics. All stay in eval mode, run batched on a chosen device and load
weights only from local paths or caches (:mod:`metrics.features.local`); a missing file raises
:class:`~metrics.features.local.MissingWeightsError` naming the file and where to put it."""

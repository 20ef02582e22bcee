"""Notebook-first, reproducible ML workspace for payment-card fraud detection

Modules:

- `aif.monitor.drift`: Per-feature, per-chunk drift against a reference window, decided on effect sizes: the population stability index (PSI) on reference deciles and the Wasserstein distance in units of the reference's standard deviation (Jensen-Shannon for categories). Vectorised over rows and chunks; reference bins are computed once and reused.
- `aif.monitor.performance`: Where labels are known, the fraud metrics per chunk against a band learned from the reference's own spread; where they are not yet known, an estimate from the calibrated probabilities (confidence-based performance estimation); and a streaming detector of concept drift over the labelled errors."""

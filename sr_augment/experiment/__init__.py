"""`sr-augment experiment`: does training on SR images, or with SRAugment, change a classifier's accuracy?

A study with repeated stratified K-fold cross-validation: every image is tested once per repeat, every
arm trains and tests on the same folds with the same seeds, and arms are compared on the pooled
predictions, paired by image (bootstrap intervals, McNemar's test, Holm's correction).

Arms (every image is square `image_size` px, so one architecture serves all; each arm is trained and
tested in its own representation):
- `LR`: HR downscaled by `lr_factor` (antialiased bicubic) and upscaled back by bicubic: this is also
  the bicubic-SR control, so `SR(bicubic)` is not trained again;
- `SR(engine)`: the engine on the same LR images (through the cache);
- `HR`: the originals (the baseline arm: what users train on today);
- `HR+SRAugment(engine)`: HR training images with the `SRAugment` adapter (resynthesize, `variants`, `p`)
  over a cache warmed first (`on_miss="error"`), tested on HR; `HR+SRAugment(bicubic)` is the
  "any resampling helps" control.
Every arm has the same light augmentation (random crop after reflect padding, horizontal flip) after
the arm's own images, so SRAugment is measured on top of what users already do.

Modules: `study` (the run), `data` (folders, folds, decoding), `arms` (the arms' images), `stats`
(bootstrap, McNemar, Holm), `report` (results.json, report.md, figures), `torch_cnn` / `keras_cnn` (the
CNN and its training per framework, imported only when that framework is chosen).
"""

from sr_augment.experiment.data import ImageSet, collect, load_items, make_folds, square
from sr_augment.experiment.report import report_markdown, write_outputs
from sr_augment.experiment.stats import (
    bootstrap_ci,
    holm,
    mcnemar_combined,
    mcnemar_exact,
)
from sr_augment.experiment.study import BASELINE, EngineChoice, parse_engines, run_experiment

__all__ = ["BASELINE", "EngineChoice", "ImageSet", "bootstrap_ci", "collect", "holm", "load_items", "make_folds",
           "mcnemar_combined", "mcnemar_exact", "parse_engines", "report_markdown", "run_experiment", "square",
           "write_outputs"]

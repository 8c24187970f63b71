"""`sr-augment experiment`: train the same CNN on LR, SR and HR data (and HR + SRAugment) and compare.

The seed thesis's question, answered honestly: several seeds, class weights against imbalance, and
McNemar's exact test on the paired test predictions of every pair of arms.

Arms (every image is square `image_size` px, so one architecture serves all; each arm is trained and
tested in its own representation, paired by test image):
- `LR`: HR downscaled by `lr_factor` (antialiased bicubic) and upscaled back by bicubic;
- `SR`: the engine on the same LR images (through the cache);
- `HR`: the originals;
- `HR+SRAugment`: HR training images with the `SRAugment` adapter (resynthesize, `variants`, p=0.5)
  of the chosen framework, over a pre-warmed cache (`on_miss="error"`), tested on HR.

Modules: `study` (the run), `data` (folders, split, decoding), `stats` (metrics, McNemar), `report`
(results.json, report.md, plots), `torch_cnn` / `keras_cnn` (the CNN per framework, imported only
when that framework is chosen, so neither is imported here).
"""

from sr_augment.experiment.data import ImageSet, discover, load_items, square
from sr_augment.experiment.report import report_markdown, write_outputs
from sr_augment.experiment.stats import class_weights, classification_metrics, mcnemar_exact
from sr_augment.experiment.study import ARMS, METRICS, build_arms, run_experiment

__all__ = ["ARMS", "METRICS", "ImageSet", "build_arms", "class_weights", "classification_metrics", "discover",
           "load_items", "mcnemar_exact", "report_markdown", "run_experiment", "square", "write_outputs"]

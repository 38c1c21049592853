"""The paper's metrics: FID (Fréchet distance of feature statistics, pluggable feature extractor with
Inception-v3 from a configured weights file), perceptual distance of a stylization and semantic distance G <-> G'.

`python -m fstrain.metrics random-inception OUT` writes RANDOM Inception weights for tests and demos.
The per-run table is `python -m fstrain.evaluate`.
"""
from fstrain.metrics.distances import (SemanticDistance, fixed_latents, render_fixed,  # noqa: F401
                                       semantic_distance, stylization_distance)
from fstrain.metrics.features import (FeatureExtractor, InceptionFeatures, extract_features,  # noqa: F401
                                      load_inception, quantize_8bit, save_random_inception_weights)
from fstrain.metrics.frechet import (FeatureStatistics, frechet_distance, frechet_distance_between,  # noqa: F401
                                     load_statistics, trace_sqrt_product)

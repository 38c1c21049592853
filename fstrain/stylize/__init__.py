"""Stylization of aligned faces: general, multimodal and reference-guided modes (`Stylizer`), V-space reference
inversion with stored, reusable codes (`invert_reference`, `ReferenceStore`), hybrid inversion of the content code
(`CodeRefiner`), pivotal tuning of the generator per face (`PivotalTuner`)."""
from fstrain.stylize.modes import Stylizer  # noqa: F401
from fstrain.stylize.pivotal import (DeltaRenderer, PivotalSettings, PivotalTuner,  # noqa: F401
                                     tuner_from_config)
from fstrain.stylize.refine import (CodeRefiner, RefineSettings, base_models_from_config,  # noqa: F401
                                    load_base_models, refiner_from_config, settings_from_config)
from fstrain.stylize.reference import (ReferenceCode, ReferenceStore, generator_fingerprint,  # noqa: F401
                                       invert_reference, reference_id)

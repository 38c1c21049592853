"""The file names of a world instrument folder, in one place: the stages of fstrain.world.pretrain write them, its
report and manifest list them, and a rerun finds the previous run's models by them."""

# models.json key -> file (the config keys `make demo` points at these)
FILES = {"identity": "identity.pth", "lpips_backbone": "lpips_alex_backbone.pth", "generator": "generator.pt",
         "encoder_wplus": "encoder_wplus.pt", "encoder_zplus": "encoder_zplus.pt",
         "eval_features": "eval_features.pth", "eval_identity": "eval_identity.pth",
         "eval_lpips_backbone": "eval_lpips_alex_backbone.pth"}
GENERATOR_SAMPLES = "generator_samples.png"
ENCODERS_PREVIEW = "encoders_preview.png"
WARM_START_ENCODER = "warm_start_encoder_wplus.pt"   # E_w+ trained alongside G: the encoders stage starts from it

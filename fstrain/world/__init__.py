"""The synthetic portrait world's own pretrained instruments (base StyleGAN2 G/D, pSp encoders, identity,
perceptual and evaluation nets), trained on world images only and written in the real file formats."""

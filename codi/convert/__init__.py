"""Conversion between the official CoDi release's checkpoint names and this project's.

`unets` maps the three diffusion UNets (``model.diffusion_model.unet_*``);
`encoders` maps ``CoDi_encoders.pth`` (CLIP, CLAP, Optimus and the two
autoencoders) onto the ``transformers`` / ``diffusers`` classes. Both are
pure key-mapping functions plus loaders that report every unmatched tensor.
"""

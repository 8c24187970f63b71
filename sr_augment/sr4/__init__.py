"""The built-in sr4 model: residual diffusion SR over bicubic (`pipeline`), its training (`train`), the
shared degradation (`ops`) and the shipped weights (`weights/`, a diffusers folder).

Nothing is imported here, so `sr_augment.sr4` costs nothing until a submodule is used.
"""

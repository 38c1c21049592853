"""A parametric synthetic portrait world: identities x views x six domains, with exact landmarks.

No face photo, style dataset or pretrained model can be downloaded on the project's machines, so every stage
is tested on these renderings. `photo` is the "real" domain; cartoon, anime, fantasy, illustration and
impasto are styles that change geometry as well as texture. See `render` for the entry points and
`python -m fstrain.data.synthetic --help` for the command.
"""
from .geometry import LANDMARK_NAMES, STYLE_GEOMETRY, face_layout
from .params import DOMAINS, HAIR_STYLES, LATENT_DRAWS, STYLE_DOMAINS, Identity, View, identity_rng, \
    params_from_normal, sample_identity, sample_view, view_rng
from .render import COORDINATES, contact_sheet, generate, render, render_from_meta, render_photo_scene, with_pose

__all__ = [
    "COORDINATES", "DOMAINS", "HAIR_STYLES", "LANDMARK_NAMES", "LATENT_DRAWS", "STYLE_DOMAINS", "STYLE_GEOMETRY",
    "Identity", "View", "contact_sheet", "face_layout", "generate", "identity_rng", "params_from_normal", "render",
    "render_from_meta",
    "render_photo_scene", "sample_identity", "sample_view", "view_rng", "with_pose",
]

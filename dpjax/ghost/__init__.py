"""Ghost clipping: per-example clipping in ONE backward pass, for models built from ghost layers.

Another implementation of the clipping stage (:func:`dpjax.clip_per_example`):
:func:`ghost_clipped_grads` returns the same :class:`dpjax.ClippedSum` (same
sensitivity, same clip weights from :func:`dpjax.clip_weights`) without
materializing per-example gradients, for models whose every parameter lives in
a ghost layer.
"""

from dpjax._ghost import ghost_clipped_grads as ghost_clipped_grads
from dpjax._ghost import is_ghost_compatible as is_ghost_compatible
from dpjax._ghost_layers import GhostConv as GhostConv
from dpjax._ghost_layers import GhostDense as GhostDense
from dpjax._ghost_layers import GhostEmbed as GhostEmbed
from dpjax._ghost_layers import GhostGroupNorm as GhostGroupNorm
from dpjax._ghost_layers import GhostLayerNorm as GhostLayerNorm
from dpjax._ghost_layers import GhostLinear as GhostLinear
from dpjax._ghost_layers import ghost_conv as ghost_conv
from dpjax._ghost_layers import ghost_dense as ghost_dense
from dpjax._ghost_layers import ghost_embed as ghost_embed
from dpjax._ghost_layers import ghost_scale_shift as ghost_scale_shift

"""handnerf.model: the radiance-field components (encoding, field, deformer, renderer)."""

from handnerf.model.encoding import HashGridEncoding, make_hash_grid

__all__ = ["HashGridEncoding", "make_hash_grid"]

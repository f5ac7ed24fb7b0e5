"""Mesh geometry shared by the layers above: ray casting against triangle meshes.

Sits at the level of :mod:`handnerf.hand` (imports only the core modules), so that the
model, the training code and the synthetic renderer can all cast rays without depending
on each other.

- :mod:`handnerf.geometry.raycast`: Embree ray casting (through trimesh) with exact
  float64 first hits.
"""

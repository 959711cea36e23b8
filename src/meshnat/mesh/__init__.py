"""A mesh that organizes itself: join from bootstrap addresses, reach any member by its id."""

from meshnat.mesh.config import MeshConfig
from meshnat.mesh.events import MeshChanged
from meshnat.mesh.reachability import Reachability
from meshnat.mesh.service import Mesh

__all__ = ["Mesh", "MeshChanged", "MeshConfig", "Reachability"]

"""In-mesh STUN: a node tells a peer the source endpoint it observed (streams and UDP)."""

from meshnat.reflection.service import REFLECT_PROTOCOL, ReflectionConfig, ReflectionService

__all__ = ["REFLECT_PROTOCOL", "ReflectionConfig", "ReflectionService"]

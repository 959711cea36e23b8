"""meshnat's own libp2p QUIC transport on qh3 (see `transport`)."""

from meshnat._libp2p.quic.connection import QuicConn
from meshnat._libp2p.quic.endpoint import QuicEndpoint
from meshnat._libp2p.quic.stream import QuicStream
from meshnat._libp2p.quic.transport import QuicListener, QuicTransport

__all__ = ["QuicConn", "QuicEndpoint", "QuicListener", "QuicStream", "QuicTransport"]

"""Chat between the members of a network: `/meshnat/chat/1.0.0` (`ChatService`, one stream per
line) and `ChatNetwork` (members found by name at a rendezvous point, events in `events.py`)."""

from meshnat.chat.network import ChatNetwork, ChatNetworkConfig, check_network_name
from meshnat.chat.service import CHAT_PROTOCOL, ChatConfig, ChatService, Heard

__all__ = ["CHAT_PROTOCOL", "ChatConfig", "ChatNetwork", "ChatNetworkConfig", "ChatService",
           "Heard", "check_network_name"]

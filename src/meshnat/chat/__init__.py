"""Chat between the members of a network: `/meshnat/chat/1.0.0` and `ChatService`."""

from meshnat.chat.service import CHAT_PROTOCOL, ChatConfig, ChatService, Heard

__all__ = ["CHAT_PROTOCOL", "ChatConfig", "ChatService", "Heard"]

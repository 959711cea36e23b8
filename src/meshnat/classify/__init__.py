"""NAT classification (RFC 4787 mapping, filtering, port allocation, hairpin) via mesh peers."""

from meshnat.classify.helper import CLASSIFY_PROTOCOL, ProbeHelperConfig, ProbeHelperService
from meshnat.classify.report import Filtering, Mapping, NatReport, NatType, PortAllocation
from meshnat.classify.service import ClassifierConfig, NatClassifier

__all__ = [
    "CLASSIFY_PROTOCOL",
    "ClassifierConfig",
    "Filtering",
    "Mapping",
    "NatClassifier",
    "NatReport",
    "NatType",
    "PortAllocation",
    "ProbeHelperConfig",
    "ProbeHelperService",
]

"""Who may associate: the called AE title must be the listener's, the calling AE title (and where it calls
from) must be on ``dicom_allowed_callers``. Checked when the A-ASSOCIATE-RQ arrives (EVT_REQUESTED),
before any presentation context is negotiated; a refusal is a permanent rejection by the service user
(PS3.8 9.3.4) with its reason, and the association's audit event says why. An association over
``dicom_max_associations`` (counted over all listener processes) is rejected as transient, local limit
exceeded.

``dicom_allowed_callers``: ``AE`` (from anywhere), ``AE@host`` (from that host's addresses, resolved at
start-up), ``*`` (anyone); empty: any AE title, from loopback addresses only."""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dicomd.config import Settings

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from dicomd.audit.dimse import DimseAudit
    from dicomd.dimse.association_count import AssociationCount

log = logging.getLogger("dicomd.dimse")

# A-ASSOCIATE-RJ: result 1 (permanent), source 1 (service user), reasons (PS3.8 9.3.4)
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SERVICE_USER = 0x01
SERVICE_PROVIDER_PRESENTATION = 0x03
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07
LOCAL_LIMIT_EXCEEDED = 0x02
TOO_MANY = "too many associations (dicom_max_associations): rejected, transient"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> IpAddress | None:
    try:
        found = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def _host_addresses(host: str) -> frozenset[IpAddress]:
    literal = _address(host.strip("[]"))
    if literal is not None:
        return frozenset({literal})
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        log.warning(
            "dicom_allowed_callers: host %s does not resolve (%s); its entries match nobody", host, exc
        )
        return frozenset()
    return frozenset(a for info in infos if (a := _address(str(info[4][0]))) is not None)


@dataclass(frozen=True)
class CallerPolicy:
    own_ae: str
    anyone: bool = False
    titles: frozenset[str] = frozenset()  # calling AE titles allowed from anywhere
    titles_at: dict[str, frozenset[IpAddress]] = field(default_factory=dict)  # ... from these addresses

    @classmethod
    def from_settings(cls, settings: Settings) -> CallerPolicy:
        anyone = False
        titles: set[str] = set()
        titles_at: dict[str, set[IpAddress]] = {}
        entries = [e.strip() for e in settings.dicom_allowed_callers.split(",") if e.strip()]
        for entry in entries:
            if entry == "*":
                anyone = True
                continue
            title, at, host = entry.partition("@")
            if at:
                titles_at.setdefault(title.strip(), set()).update(_host_addresses(host.strip()))
            else:
                titles.add(title.strip())
        return cls(
            own_ae=settings.dicom_ae_title.strip(),
            anyone=anyone,
            titles=frozenset(titles),
            titles_at={title: frozenset(found) for title, found in titles_at.items()},
        )

    @property
    def loopback_only(self) -> bool:
        return not (self.anyone or self.titles or self.titles_at)

    def refusal(self, called_ae: str, calling_ae: str, peer: str) -> tuple[int, str] | None:
        """Why an association is refused (reason code and text), or None when it may proceed."""
        if called_ae.strip() != self.own_ae:
            return CALLED_AE_NOT_RECOGNISED, "called AE title not recognised"
        if self.anyone:
            return None
        address = _address(peer)
        calling = calling_ae.strip()
        if self.loopback_only:
            if address is not None and address.is_loopback:
                return None
            return CALLING_AE_NOT_RECOGNISED, "only loopback callers are allowed (dicom_allowed_callers)"
        if calling in self.titles:
            return None
        if address is not None and address in self.titles_at.get(calling, frozenset()):
            return None
        return CALLING_AE_NOT_RECOGNISED, "calling AE title not recognised from this address"


def check_association(
    event: Event, policy: CallerPolicy, audit: DimseAudit, associations: AssociationCount, limit: int
) -> None:
    """EVT_REQUESTED: record who calls whom; reject the association when the policy refuses it, or
    (transient) when the listener processes have more than ``limit`` associations with this one."""
    assoc = event.assoc
    record = audit.record_of(assoc)
    request = assoc.requestor.primitive
    calling = str(getattr(request, "calling_ae_title", "") or "").strip()
    called = str(getattr(request, "called_ae_title", "") or "").strip()
    record.calling_ae, record.called_ae = calling, called
    refused = policy.refusal(called, calling, record.address)
    if refused is not None:
        reason, text = refused
        record.rejection = text
        log.warning("DICOM association from %s (calling AE %r) rejected: %s", record.address, calling, text)
        assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, reason)
    elif associations.total() > limit:
        record.rejection = TOO_MANY
        log.warning("DICOM association from %s rejected: too many associations", record.address)
        assoc.acse.send_reject(REJECTED_TRANSIENT, SERVICE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED)
    else:
        return
    assoc.kill()  # as pynetdicom does after its own rejections: its DUL ends once the peer disconnects


def note_accepted(event: Event, audit: DimseAudit) -> None:
    """EVT_ACCEPTED."""
    audit.record_of(event.assoc).accepted = True


def note_rejected(event: Event, audit: DimseAudit) -> None:
    """EVT_REJECTED: pynetdicom's own rejection, given dicomd's settings: too many associations."""
    record = audit.record_of(event.assoc)
    if record.rejection is None:
        record.rejection = TOO_MANY
        log.warning("DICOM association from %s rejected: too many associations", record.address)

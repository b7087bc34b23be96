"""The pynetdicom peers of these tests (clients, and the SCPs some tests run in this process) use dicomd's
event-driven reactor (dicomd/dimse/reactor.py), as the listener does, and its direct sending of stored
instances in C-MOVE sub-operations (dicomd/dimse/direct_send.py), so the in-process C-MOVE SCPs of
test_dimse_retrieve.py send as the listener sends.

Stock pynetdicom's requestor races with itself: a ``send_*`` call pauses the association's reactor by a
flag that is stale for a moment on every pass, and a response that comes back within it is taken by the
reactor as a request of its own and lost (pynetdicom issue #875, "sporadic 'Received unexpected C-FIND
service message'"). dicomd's direct C-FIND path answers fast enough to land there now and then; the
reactor's ``EventDrivenAssociation`` derives the flag instead (tests/dimse/test_dimse_reactor.py)."""

from dicomd.dimse import direct_send, reactor

reactor.install()
direct_send.install()

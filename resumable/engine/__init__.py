"""The deterministic core of a workflow: no I/O, no clock reads, no storage.

``instance.decide`` applies one event to a stored instance and returns a ``Decision``: the
new header, the journal entries to append and the events to emit. ``transitions`` holds the
pure wait state machine, ``definition`` the contracts, ``emit`` every event a workflow
sends, ``generator`` and ``replay`` the stepping of the user's generator. ``Resumable``
(``resumable.driver``) is the I/O shell around it.
"""

"""Who may act: the token the server was started with, sessions, and the CSRF check.

Without a token the inspector is read-only: no action form is drawn and every action is
refused. With one, a browser logs in once (``/login?token=...``, the URL printed at start)
and gets a session cookie (HttpOnly, SameSite=Strict); every action must then carry the
session's CSRF value, a keyed hash of the session that only pages of this server hold.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["COOKIE", "Guard"]

COOKIE = "resumable_ui_session"
_MAX_SESSIONS = 1000


class Guard:
    """Checks tokens, sessions and CSRF values; ``token`` None makes everything read-only."""

    def __init__(self, token: str | None) -> None:
        if token is not None and len(token) < 16:
            raise ValueError("an inspector token must be at least 16 characters long")
        self.token = token
        self._key = secrets.token_bytes(32)
        self._sessions: dict[str, None] = {}

    @property
    def actions(self) -> bool:
        """Whether this server acts at all (it was started with a token)."""
        return self.token is not None

    def login(self, token: str) -> str | None:
        """A new session id if ``token`` is the server's token, else None."""
        if self.token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            return None
        session = secrets.token_urlsafe(32)
        self._sessions[session] = None
        while len(self._sessions) > _MAX_SESSIONS:  # the oldest logins go first
            del self._sessions[next(iter(self._sessions))]
        return session

    def logout(self, session: str | None) -> None:
        if session is not None:
            self._sessions.pop(session, None)

    def allowed(self, session: str | None) -> bool:
        """True if ``session`` (the cookie's value) is a live session of this server."""
        return self.actions and session is not None and session in self._sessions

    def csrf(self, session: str) -> str:
        """The CSRF value every action form of ``session`` carries."""
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()

    def check(self, session: str | None, csrf: str | None) -> str | None:
        """None if an action from ``session`` carrying ``csrf`` may run, else why not."""
        if not self.actions:
            return "this inspector is read-only: start it with --actions to act on instances"
        if not self.allowed(session):
            return "not logged in: open the login URL printed when the inspector started"
        assert session is not None
        if not csrf or not hmac.compare_digest(csrf, self.csrf(session)):
            return "the form's CSRF value is missing or wrong: reload the page and try again"
        return None

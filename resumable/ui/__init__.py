"""The local web inspector (``resumable ui``, on the ``ui`` extra): see, search and act on
workflow instances from their memory.

``create_app(memory, actions, guard=...)`` is the Starlette application (for embedding or
tests); ``serve(Options(...))`` runs it with uvicorn, as the command does. Importing this
package needs the extra (Starlette, uvicorn, Jinja2).
"""

from __future__ import annotations

from resumable.ui.actions import ActionError, Actions
from resumable.ui.app import create_app
from resumable.ui.security import Guard
from resumable.ui.server import Options, serve

__all__ = ["ActionError", "Actions", "Guard", "Options", "create_app", "serve"]

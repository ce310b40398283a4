"""The inspector's web application: Starlette routes over memory, rendered on the server.

Pages are plain HTML from Jinja2 templates with autoescaping on, so every value from a
record or an event is escaped; one small script refreshes the live part of a page. Every
response forbids inline scripts (Content-Security-Policy), framing and MIME sniffing.
Actions are POSTs that need the session cookie and its CSRF value (``resumable.ui.security``)
and go through a confirmation page first.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from resumable.memory import Memory
from resumable.memory.listing import STATUSES
from resumable.ui.actions import ActionError, Actions
from resumable.ui.forms import FormError, read_payload, with_values
from resumable.ui.security import COOKIE, Guard
from resumable.ui.views import PAGE_SIZE, list_instances, load_instance, looks_like_subject, pretty

__all__ = ["LOOPBACK_HOSTS", "create_app"]

HERE = Path(__file__).parent
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
MAX_FORM_BYTES = 64 * 1024
_FLASHES = 200

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes form posts say Origin: null
    "Cache-Control": "no-store",
}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


class _Site:
    """What every route needs: memory, actions, the guard and the pending flash messages."""

    def __init__(
        self, memory: Memory, actions: Actions, guard: Guard, topics: list[str], refresh: float
    ) -> None:
        self.memory = memory
        self.actions = actions
        self.guard = guard
        self.topics = topics
        self.refresh = refresh
        self.flashes: dict[str, tuple[str, str]] = {}

    def flash(self, kind: str, message: str) -> str:
        key = secrets.token_urlsafe(12)
        self.flashes[key] = (kind, message)
        while len(self.flashes) > _FLASHES:
            del self.flashes[next(iter(self.flashes))]
        return key

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        session = request.cookies.get(COOKIE)
        can_act = self.guard.allowed(session)
        flash = self.flashes.pop(request.query_params.get("flash", ""), None)
        html = _env.get_template(template).render(
            actions_on=self.guard.actions,
            can_act=can_act,
            csrf=self.guard.csrf(session) if can_act and session else "",
            flash=flash,
            refresh=self.refresh,
            statuses=STATUSES,
            topics=self.topics,
            **context,
        )
        return HTMLResponse(html, status_code=status_code, headers=_HEADERS)

    def problem(self, request: Request, status_code: int, message: str) -> HTMLResponse:
        return self.render(
            request, "message.html", status_code, title="Cannot do that", text=message
        )


def _live(request: Request) -> bool:
    """True for the periodic refresh, which wants only the live part of the page."""
    return request.headers.get("x-live") == "1"


async def _form(request: Request) -> dict[str, str]:
    """The posted urlencoded form (the last value of each name), at most 64 KiB."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise FormError(f"the form is larger than {MAX_FORM_BYTES} bytes")
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def create_app(
    memory: Memory,
    actions: Actions | None = None,
    *,
    guard: Guard | None = None,
    topics: list[str] | None = None,
    refresh: float = 5.0,
    allowed_hosts: list[str] | None = None,
    page_size: int = PAGE_SIZE,
) -> Starlette:
    """The inspector for ``memory``. ``actions`` does what forms ask (none: no delivery);
    ``guard`` holds the token (none: read-only); ``topics`` are the topics whose dead
    letters are shown; ``refresh`` is how often (seconds) pages update their live part;
    ``allowed_hosts`` are the Host headers served (default: loopback names only);
    ``page_size`` is how many instances one page of the list shows."""
    site = _Site(
        memory,
        actions if actions is not None else Actions(memory, None),
        guard if guard is not None else Guard(None),
        list(topics or []),
        refresh,
    )

    async def instances(request: Request) -> Response:
        query = request.query_params
        wanted = {k: query.get(k, "").strip() for k in ("workflow", "status", "id")}
        if looks_like_subject(wanted["id"]):
            return RedirectResponse(f"/instance?{urlencode({'subject': wanted['id']})}", 303)
        try:
            view = await list_instances(
                memory,
                workflow=wanted["workflow"],
                status=wanted["status"],
                id=wanted["id"],
                cursor=query.get("cursor") or None,
                limit=page_size,
            )
        except ValueError as error:
            return site.problem(request, 400, str(error))
        template = "instances_live.html" if _live(request) else "instances.html"
        return site.render(request, template, view=view, query=_query)

    async def instance(request: Request) -> Response:
        subject = request.query_params.get("subject", "")
        view = await load_instance(memory, subject) if subject else None
        if view is None:
            return site.problem(request, 404, f"there is no instance {subject!r} in this memory")
        if _live(request):
            return site.render(request, "instance_live.html", view=view)
        forms = site.actions.signal_forms(subject) if view.status in ("active", "parked") else []
        return site.render(
            request, "instance.html", view=view, forms=forms, nonce=secrets.token_urlsafe(12)
        )

    async def dead_letters(request: Request) -> Response:
        broker = site.actions.broker
        letters: list[Any] = []
        problem = ""
        if broker is None:
            problem = "no broker: start the inspector with --broker URL to see dead letters"
        else:
            try:
                for topic in site.topics:
                    letters.extend(await broker.dead_letters(topic))
            except Exception as error:
                problem = f"reading dead letters from {broker!r} failed: {error}"
        template = "dead_letters_live.html" if _live(request) else "dead_letters.html"
        return site.render(
            request,
            template,
            letters=[
                (letter, pretty(letter.event.data) if letter.event else _raw(letter.raw))
                for letter in letters
            ],
            problem=problem,
            nonce=secrets.token_urlsafe(12),
        )

    async def login(request: Request) -> Response:
        if request.method == "POST":
            try:
                token = (await _form(request)).get("token", "")
            except FormError as error:
                return site.problem(request, 400, str(error))
        else:
            token = request.query_params.get("token", "")
        if not site.guard.actions:
            return site.problem(request, 403, "this inspector is read-only: it has no token")
        if not token:
            return site.render(request, "login.html", failed=False)
        session = site.guard.login(token)
        if session is None:
            return site.render(request, "login.html", status_code=403, failed=True)
        response = RedirectResponse("/", 303, headers=_HEADERS)
        response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
        return response

    async def logout(request: Request) -> Response:
        site.guard.logout(request.cookies.get(COOKIE))
        response = RedirectResponse("/", 303, headers=_HEADERS)
        response.delete_cookie(COOKIE, path="/")
        return response

    def action(
        describe: Callable[[Mapping[str, str]], str],
        perform: Callable[[Mapping[str, str]], Awaitable[str]],
        back: Callable[[Mapping[str, str]], str],
        check: Callable[[Mapping[str, str]], Mapping[str, str]] | None = None,
    ) -> Callable[[Request], Awaitable[Response]]:
        """A POST route: checks who asks, then shows a confirmation, then acts."""

        async def route(request: Request) -> Response:
            if not _same_origin(request):
                return site.problem(request, 403, "cross-origin form posts are refused")
            try:
                form = await _form(request)
            except FormError as error:
                return site.problem(request, 400, str(error))
            refused = site.guard.check(request.cookies.get(COOKIE), form.get("csrf"))
            if refused is not None:
                return site.problem(request, 403, refused)
            target = back(form)
            try:
                shown = check(form) if check is not None else {}
                if form.get("confirmed") != "yes":
                    return site.render(
                        request,
                        "confirm.html",
                        what=describe(form),
                        shown=shown,
                        form={k: v for k, v in form.items() if k not in ("csrf", "confirmed")},
                        action=request.url.path,
                        back=target,
                    )
                message = await perform(form)
                key = site.flash("ok", message)
            except (ActionError, FormError) as error:
                key = site.flash("error", str(error))
            except Exception as error:
                key = site.flash("error", f"the action failed: {type(error).__name__}: {error}")
            joiner = "&" if "?" in target else "?"
            return RedirectResponse(f"{target}{joiner}flash={key}", 303, headers=_HEADERS)

        return route

    def back_to_instance(form: Mapping[str, str]) -> str:
        return f"/instance?{urlencode({'subject': form.get('subject', '')})}"

    def signal_payload(form: Mapping[str, str]) -> Mapping[str, str]:
        signal_form, contract = site.actions.signal_contract(
            form.get("subject", ""), form.get("signal", "")
        )
        try:
            payload = read_payload(signal_form, form, contract)
        except FormError as error:
            raise FormError(f"signal {signal_form.type} was not sent: {error}") from None
        return {"payload": pretty(payload)}

    async def send_signal(form: Mapping[str, str]) -> str:
        subject, type_ = form.get("subject", ""), form.get("signal", "")
        signal_form, contract = site.actions.signal_contract(subject, type_)
        payload = read_payload(with_values(signal_form, form), form, contract)
        return await site.actions.signal(subject, type_, payload, form.get("nonce", ""))

    routes = [
        Route("/", instances),
        Route("/instance", instance),
        Route("/dead-letters", dead_letters),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route(
            "/act/signal",
            action(
                lambda f: f"Send signal {f.get('signal')} to instance {f.get('id')!r}",
                send_signal,
                back_to_instance,
                signal_payload,
            ),
            methods=["POST"],
        ),
        Route(
            "/act/cancel",
            action(
                lambda f: f"Cancel instance {f.get('id')!r} (its compensations run)",
                lambda f: site.actions.cancel(
                    f.get("subject", ""), f.get("reason", ""), f.get("nonce", "")
                ),
                back_to_instance,
                lambda f: {"reason": f.get("reason", "")},
            ),
            methods=["POST"],
        ),
        Route(
            "/act/unpark",
            action(
                lambda f: f"Unpark instance {f.get('id')!r}: replay it against the code",
                lambda f: site.actions.unpark(f.get("subject", "")),
                back_to_instance,
            ),
            methods=["POST"],
        ),
        Route(
            "/act/republish",
            action(
                lambda f: f"Re-publish dead letter {f.get('event_id')} of {f.get('topic')}",
                lambda f: site.actions.republish(f.get("topic", ""), f.get("event_id", "")),
                lambda f: "/dead-letters",
            ),
            methods=["POST"],
        ),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    hosts = allowed_hosts if allowed_hosts is not None else LOOPBACK_HOSTS
    return Starlette(
        routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)]
    )


def _query(params: Mapping[str, str | None]) -> str:
    """A query string of the parameters that have a value."""
    return urlencode({name: value for name, value in params.items() if value})


def _same_origin(request: Request) -> bool:
    """False for a POST whose Origin header names another site than the one it reached."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _raw(raw: bytes) -> str:
    """The start of an undecodable dead letter's bytes, for people."""
    shown = raw[:2000].decode("utf-8", "backslashreplace")
    return shown + (f"... ({len(raw):,} bytes in all)" if len(raw) > 2000 else "")

"""A Starlette service that embeds workflows: loan applications under the caller's ids.

Run it (``pip install -e '.[examples]'``)::

    RESUMABLE_DB=loans.db uvicorn examples.loans:app

    curl -X POST localhost:8000/loans/loan-42 -d '{"applicant": "ada", "amount": 5000}'
    curl localhost:8000/loans/loan-42
    curl -X POST localhost:8000/loans/loan-42/approve -d '{"officer": "grace"}'
    curl 'localhost:8000/loans/loan-42/result?wait=5'

The app's lifespan runs the runtime (its worker, timers and recovery) in the server's
event loop; routes start, query, signal and cancel workflows by the loan's id. Kill the
server at any point and start it again: every loan carries on where it was.
"""

# --- the app (docs/embedding.md shows this part) ---
import os
from contextlib import asynccontextmanager

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resumable import (
    Contract,
    Emit,
    EventHandler,
    OrchestratorContract,
    Resumable,
    Runtime,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowFinished,
    WorkflowIdConflict,
    WorkflowNotFound,
    call,
    complete,
    wait_for,
)


class Application(msgspec.Struct):
    applicant: str
    amount: int


class Decision(msgspec.Struct):
    outcome: str
    officer: str | None = None
    score: int | None = None


class ScoreRequest(msgspec.Struct):
    applicant: str


class Score(msgspec.Struct):
    score: int


class Approval(msgspec.Struct):
    officer: str


credit = Contract(
    uri="#/contracts/credit/score",
    type="com.credit.score",
    versions={"1.0.0": {"accepts": ScoreRequest, "emits": {"evt.credit.score.done": Score}}},
)
approval = Contract(
    uri="#/signals/loan/approval",
    type="com.loan.approval",
    versions={"1.0.0": {"accepts": Approval, "emits": {}}},
)
loans = OrchestratorContract(
    uri="#/orchestrators/loan",
    name="loan.review",
    versions={"1.0.0": {"init": Application, "complete": Decision}},
)


async def score(event):
    return Emit("evt.credit.score.done", Score(300 + len(event.data.applicant) * 50))


async def review(ctx, application: Application):
    scored = yield call(credit, ScoreRequest(application.applicant))
    if scored.data.score < 400 or application.amount > 100_000:
        yield complete(Decision("declined", score=scored.data.score))
        return
    approved = yield wait_for(approval, timeout=7 * 24 * 3600)  # a week for an officer
    if approved is None:
        yield complete(Decision("expired", score=scored.data.score))
        return
    yield complete(Decision("approved", approved.data.officer, scored.data.score))


handlers = [
    EventHandler(credit, versions={"1.0.0": score}),
    Resumable(loans, versions={"1.0.0": review}, services=[credit], signals=[approval]),
]


def create_app(memory: str) -> Starlette:
    runtime = Runtime(handlers, memory=memory)

    @asynccontextmanager
    async def lifespan(app):
        async with runtime:  # workers, timers and recovery run while the app serves
            yield

    async def start(request: Request) -> JSONResponse:
        application = msgspec.json.decode(await request.body(), type=Application)
        try:
            loan = await runtime.start(loans, application, id=request.path_params["id"])
        except WorkflowIdConflict as error:
            return JSONResponse({"error": str(error)}, status_code=409)
        status = await loan.status()
        return JSONResponse({"id": loan.id, "status": status.status}, status_code=201)

    async def show(request: Request) -> JSONResponse:
        loan = runtime.handle(loans, request.path_params["id"])
        try:
            status = await loan.status()
        except WorkflowNotFound as error:
            return JSONResponse({"error": str(error)}, status_code=404)
        return JSONResponse({"id": loan.id, "status": status.status, "waits_for": status.waits_for})

    async def approve(request: Request) -> JSONResponse:
        body = msgspec.json.decode(await request.body(), type=Approval)
        loan = runtime.handle(loans, request.path_params["id"])
        try:
            await loan.signal(approval, body, id=f"approval-by-{body.officer}")
        except WorkflowNotFound as error:
            return JSONResponse({"error": str(error)}, status_code=404)
        except WorkflowFinished as error:
            return JSONResponse({"error": str(error)}, status_code=409)
        return JSONResponse({"id": loan.id, "signalled": True}, status_code=202)

    async def cancel(request: Request) -> JSONResponse:
        loan = runtime.handle(loans, request.path_params["id"])
        try:
            await loan.cancel("withdrawn by the applicant")
        except WorkflowNotFound as error:
            return JSONResponse({"error": str(error)}, status_code=404)
        except WorkflowFinished as error:
            return JSONResponse({"error": str(error)}, status_code=409)
        return JSONResponse({"id": loan.id, "cancelling": True}, status_code=202)

    async def result(request: Request) -> JSONResponse:
        loan = runtime.handle(loans, request.path_params["id"])
        try:
            decision = await loan.result(timeout=float(request.query_params.get("wait", 0.5)))
        except WorkflowNotFound as error:
            return JSONResponse({"error": str(error)}, status_code=404)
        except TimeoutError:
            return JSONResponse({"id": loan.id, "status": "active"}, status_code=202)
        except (WorkflowFailed, WorkflowCancelled) as error:
            return JSONResponse({"id": loan.id, "error": str(error)})
        return JSONResponse({"id": loan.id, "decision": msgspec.to_builtins(decision)})

    return Starlette(
        routes=[
            Route("/loans/{id}", start, methods=["POST"]),
            Route("/loans/{id}", show, methods=["GET"]),
            Route("/loans/{id}/approve", approve, methods=["POST"]),
            Route("/loans/{id}/cancel", cancel, methods=["POST"]),
            Route("/loans/{id}/result", result, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


# --- end of the app ---

app = create_app(f"sqlite:///{os.environ.get('RESUMABLE_DB', 'loans.db')}")

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, port=int(os.environ.get("PORT", "8000")))

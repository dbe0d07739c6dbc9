"""What the API's routes run on, built once at start-up, and typed dependencies for it.

:class:`Resources` is built whole by the lifespan (:func:`api.app.create_app`) after
every resource has started, so a route never sees a half-built one; each route asks for
the part it uses (``inbox: Inbox``, ``producer: Producer``) instead of reaching into a
string-keyed dict. The dependencies are ``async`` so FastAPI runs them inline, not in
its thread pool.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import Depends, Request

from api.auth import Access
from api.event_producer import EventProducer
from api.tracker import Tracker
from models.phones import PhoneIndex
from models.popups import PopupStore
from models.preferences import Preferences
from models.storage import InboxStore
from models.taskruns import AudienceLists
from models.taskstore import TaskStore


@dataclasses.dataclass(frozen=True, slots=True)
class Resources:
    pool: Any  # the aiomysql pool every store shares
    inbox: InboxStore
    popups: PopupStore
    producer: EventProducer
    tasks: TaskStore
    lists: AudienceLists
    preferences: Preferences
    access: Access
    phones: PhoneIndex  # sender numbers -> users (api/inbound.py)
    tracker: Tracker


async def resources(request: Request) -> Resources:
    """The running app's resources; only valid while its lifespan runs."""
    built: Resources = request.app.state.resources
    return built


async def inbox_store(request: Request) -> InboxStore:
    return (await resources(request)).inbox


async def popup_store(request: Request) -> PopupStore:
    return (await resources(request)).popups


async def event_producer(request: Request) -> EventProducer:
    return (await resources(request)).producer


async def task_store(request: Request) -> TaskStore:
    return (await resources(request)).tasks


async def audience_lists(request: Request) -> AudienceLists:
    return (await resources(request)).lists


async def preferences_service(request: Request) -> Preferences:
    return (await resources(request)).preferences


async def tracking_events(request: Request) -> Tracker:
    return (await resources(request)).tracker


AppResources = Annotated[Resources, Depends(resources)]
Inbox = Annotated[InboxStore, Depends(inbox_store)]
Popups = Annotated[PopupStore, Depends(popup_store)]
Producer = Annotated[EventProducer, Depends(event_producer)]
Tasks = Annotated[TaskStore, Depends(task_store)]
Lists = Annotated[AudienceLists, Depends(audience_lists)]
Prefs = Annotated[Preferences, Depends(preferences_service)]
Tracking = Annotated[Tracker, Depends(tracking_events)]

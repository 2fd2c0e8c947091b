"""Request and response models of the HTTP API: the handlers parse with them and /openapi.json
is generated from them."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field


def _iso_only(v: Any) -> Any:
    """Times are ISO 8601 strings with an offset; numbers are not quietly read as Unix time."""
    if isinstance(v, datetime):
        return v
    if not isinstance(v, str) or not re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}", v):
        raise ValueError("must be an ISO 8601 time with a UTC offset, such as 2026-03-03T07:30:00+08:00")
    return v


Time = Annotated[AwareDatetime, BeforeValidator(_iso_only)]

SkuStr = Field(pattern=r"^[a-z0-9-]{1,32}$")
IdStr = Field(pattern=r"^[a-z0-9-]{1,32}$")


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Named(BaseModel):
    id: str
    name: str


class StationOut(BaseModel):
    id: str
    name: str
    cabinets: list[Named]
    kitchens: list[Named]


class OfferQuery(In):
    eta: Time | None = Field(default=None, description="pickup time; default the earliest")


class OfferItem(BaseModel):
    kitchen_id: str
    sku: str
    name: str
    price_cents: int
    zone: str
    size: str


class OfferOut(BaseModel):
    station_id: str
    eta: datetime
    earliest_eta: datetime
    items: list[OfferItem]


class ItemQty(In):
    sku: str = SkuStr
    qty: int = Field(ge=1, le=20)


class PlaceOrder(In):
    station_id: str = IdStr
    kitchen_id: str = IdStr
    eta: Time
    items: list[ItemQty] = Field(min_length=1, max_length=20)


class OrderItemOut(BaseModel):
    sku: str
    name: str
    qty: int
    price_cents: int


class OrderPlaced(BaseModel):
    id: str
    status: str
    cabinet_id: str
    pickup_code: str
    eta: datetime
    total_cents: int
    items: list[OrderItemOut]


class TimelineEvent(BaseModel):
    at: datetime
    kind: str
    data: dict[str, object] = Field(default_factory=dict)


class OrderOut(BaseModel):
    id: str
    status: str
    station_id: str
    cabinet_id: str
    kitchen_id: str
    eta: datetime
    items: list[OrderItemOut]
    total_cents: int
    refund_cents: int
    pickup_code: str | None = Field(description="shown while the order is live")
    ready_at: datetime | None
    deposit_at: datetime | None = Field(description="planned deposit into the cabinet")
    deposited_at: datetime | None
    picked_up_at: datetime | None
    slots: list[str]
    timeline: list[TimelineEvent]


class ChangeEta(In):
    eta: Time


class Alternative(BaseModel):
    station_id: str
    kitchen_id: str
    eta: datetime


class PlanQuery(In):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: Time | None = Field(default=None, alias="from")
    to: Time | None = None


class TaskOrder(BaseModel):
    order_id: str
    units: int


class TaskOut(BaseModel):
    id: str
    resource: str
    kind: Literal["prep", "pack"]
    sku: str | None
    step: int | None
    start: datetime
    end: datetime
    units: int
    batch: int
    orders: list[TaskOrder]
    status: str


class ResourcePlan(BaseModel):
    id: str
    capacity: int
    tasks: list[TaskOut]


class RunOut(BaseModel):
    id: str
    station_id: str
    depart: datetime
    arrive: datetime
    back: datetime
    orders: list[str]
    status: str


class KitchenPlan(BaseModel):
    kitchen_id: str
    now: datetime
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    resources: list[ResourcePlan]
    runs: list[RunOut]
    next: list[TaskOut] = Field(description="tasks to start next, earliest first")


class DepositIn(In):
    order_id: str = Field(min_length=1, max_length=64)


class DepositOut(BaseModel):
    order_id: str
    cabinet_id: str
    slots: list[str]
    overflow: bool = Field(description="true when a parcel found no free slot: staff hold it")


class OpenIn(In):
    code: str = Field(pattern=r"^\d{6}$")


class OpenOut(BaseModel):
    order_id: str
    cabinet_id: str
    slots: list[str]


class OccupancyQuery(In):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: Time | None = Field(default=None, alias="from")
    to: Time | None = None
    step: int = Field(default=15, ge=1, le=240, description="minutes between points")


class OccupancyPoint(BaseModel):
    at: datetime
    occupied: int
    reserved: int


class ZoneOccupancy(BaseModel):
    zone: str
    capacity: int
    series: list[OccupancyPoint]


class CabinetOccupancy(BaseModel):
    cabinet_id: str
    zones: list[ZoneOccupancy]


class Occupancy(BaseModel):
    station_id: str
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    step_minutes: int
    cabinets: list[CabinetOccupancy]


class Affected(BaseModel):
    order_id: str
    outcome: Literal["moved", "unchanged", "overflow"]
    slot: str | None


class SlotOut(BaseModel):
    cabinet_id: str
    label: str
    zone: str
    size: str
    enabled: bool
    affected: list[Affected]


class Health(BaseModel):
    status: str


class SlotState(BaseModel):
    label: str
    zone: str
    size: str
    enabled: bool
    state: Literal["free", "reserved", "occupied", "expired"]
    order_id: str | None = Field(description="the parcel in the slot, or the next one reserved")
    since: datetime | None
    until: datetime | None


class CabinetSlots(BaseModel):
    cabinet_id: str
    name: str
    slots: list[SlotState]


class StationSlots(BaseModel):
    station_id: str
    name: str
    now: datetime
    cabinets: list[CabinetSlots]

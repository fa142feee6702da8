"""Scheduling: calendars, availability, appointments, conflicts, free slots and exports.

    from pipeline.secretary.schedule import book, find_free_slots, check_conflicts, export_ics

Submodules: ``timeutil`` (UTC/local, grid, intervals), ``calendars`` (locations, resources,
availability, time off, on-call, meetings, master schedule), ``conflicts``, ``appointments``
(booking, status flow, confirmation list), ``slots`` (next free slot), ``export`` (.ics, FHIR).
"""

from __future__ import annotations

from pipeline.secretary.schedule.appointments import (
    STATUSES,
    TRANSITIONS,
    appointment_types,
    book,
    confirmation_list,
    get_type,
    history,
    reschedule,
    set_status,
)
from pipeline.secretary.schedule.calendars import (
    ScheduleOptions,
    add_availability,
    add_block,
    add_exception,
    add_location,
    add_meeting,
    add_on_call,
    add_resource,
    add_time_off,
    availability,
    busy_items,
    master_schedule,
    physician_zone,
    remove_availability,
    remove_block,
)
from pipeline.secretary.schedule.conflicts import Conflict, check_conflicts
from pipeline.secretary.schedule.export import export_ics, fhir_appointment, fhir_bundle, fhir_slots
from pipeline.secretary.schedule.slots import Slot, find_free_slots, next_free_slot

__all__ = [
    "ScheduleOptions",
    "book",
    "set_status",
    "reschedule",
    "history",
    "confirmation_list",
    "appointment_types",
    "get_type",
    "STATUSES",
    "TRANSITIONS",
    "check_conflicts",
    "Conflict",
    "find_free_slots",
    "next_free_slot",
    "Slot",
    "add_location",
    "add_resource",
    "add_availability",
    "add_exception",
    "add_block",
    "add_time_off",
    "add_on_call",
    "add_meeting",
    "remove_availability",
    "remove_block",
    "availability",
    "busy_items",
    "master_schedule",
    "physician_zone",
    "export_ics",
    "fhir_bundle",
    "fhir_slots",
    "fhir_appointment",
]
